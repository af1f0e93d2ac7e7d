"""HTTP/1.1 framing (shadowtap.wire.http1): hop-by-hop filtering keeps everything else exactly as it came;
the method sets are RFC 9110's; heads and chunks parse back with llhttp."""

from __future__ import annotations

import httptools
from hypothesis import given
from hypothesis import strategies as st

from shadowtap.wire import http1


def test_end_to_end_drops_hop_by_hop_and_connection_listed_names_only() -> None:
    headers = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive, X-Secret-Hop"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Secret-Hop", b"1"),
        (b"x-dup", b"1"),
        (b"X-Dup", b"2"),
        (b"TE", b"trailers"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"Upgrade", b"h2c"),
        (b"Trailer", b"X-T"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Accept", b"*/*"),
    ]
    assert http1.end_to_end(headers) == [(b"Host", b"a"), (b"x-dup", b"1"), (b"X-Dup", b"2"), (b"Accept", b"*/*")]


def test_end_to_end_for_upgrade_keeps_the_switch_fields() -> None:
    headers = [(b"Connection", b"Upgrade, X-Other"), (b"Upgrade", b"websocket"), (b"X-Other", b"1"), (b"A", b"b")]
    assert http1.end_to_end(headers, upgrade=True) == [
        (b"Connection", b"Upgrade, X-Other"),
        (b"Upgrade", b"websocket"),
        (b"A", b"b"),
    ]


def _relayed(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes | None, bytes | None]:
    parts: list[bytes] = [b"prefix"]
    transfer_encoding, content_length = http1.response_fields(parts, headers)
    assert parts[0] == b"prefix"
    return b"".join(parts[1:]), transfer_encoding, content_length


def test_response_fields_copy_end_to_end_fields_and_report_framing() -> None:
    assert _relayed([(b"Transfer-Encoding", b"chunked"), (b"X-A", b"1")]) == (b"X-A: 1\r\n", b"chunked", None)
    assert _relayed([(b"content-length", b"12"), (b"Connection", b"close")]) == (b"content-length: 12\r\n", None, b"12")
    assert _relayed([(b"Content-Type", b"text/plain")]) == (b"Content-Type: text/plain\r\n", None, None)
    assert _relayed([(b"Transfer-Encoding", b"gzip"), (b"Transfer-Encoding", b"chunked")])[1] == b"gzip, chunked"


def test_response_fields_drop_names_connection_lists_even_before_it() -> None:
    headers = [(b"X-Hop", b"1"), (b"A", b"b"), (b"Connection", b"X-Hop, keep-alive"), (b"Keep-Alive", b"5")]
    assert _relayed(headers) == (b"A: b\r\n", None, None)


def test_body_until_close() -> None:
    assert http1.body_until_close([(b"Content-Type", b"text/plain")])
    assert not http1.body_until_close([(b"content-length", b"0")])
    assert not http1.body_until_close([(b"Transfer-Encoding", b"chunked")])


class _Collect:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def test_request_head_and_chunks_parse_back() -> None:
    head = http1.request_head(
        b"POST", b"/p?q=1", [(b"Host", b"h"), (b"x-a", b"1")], [(b"Transfer-Encoding", b"chunked")]
    )
    assert head == b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nx-a: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    collected = _Collect()
    parser = httptools.HttpRequestParser(collected)
    parser.feed_data(head + b"".join(http1.chunk(b"hello")) + b"".join(http1.chunk(b"x" * 300)) + http1.CHUNKED_END)
    assert collected.done
    assert collected.url == b"/p?q=1"
    assert collected.body == b"hello" + b"x" * 300


def test_response_head() -> None:
    assert http1.response_head(418, b"I'm a teapot", [(b"A", b"1")]) == b"HTTP/1.1 418 I'm a teapot\r\nA: 1\r\n\r\n"
    assert http1.response_head(299, b"", []) == b"HTTP/1.1 299 \r\n\r\n"


def test_request_head_in_another_version() -> None:
    assert http1.request_head(b"GET", b"/", [(b"Host", b"h")], version=b"HTTP/1.0") == (
        b"GET / HTTP/1.0\r\nHost: h\r\n\r\n"
    )


def test_method_sets_are_rfc_9110s() -> None:
    assert {"GET", "HEAD", "OPTIONS", "TRACE"} == http1.SAFE_METHODS
    assert {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"} == http1.IDEMPOTENT_METHODS
    assert {m.encode() for m in http1.IDEMPOTENT_METHODS} == http1.IDEMPOTENT_METHOD_BYTES
    assert "POST" not in http1.IDEMPOTENT_METHODS and "PATCH" not in http1.IDEMPOTENT_METHODS


def test_regenerated_fields_are_the_hop_by_hop_ones_plus_framing_routing_and_expect() -> None:
    assert http1.HOP_BY_HOP | {b"content-length", b"host", b"expect"} == http1.REGENERATED


def test_chunked_applies_only_as_the_last_coding() -> None:
    assert http1.chunked_last(b"chunked")
    assert http1.chunked_last(b"gzip, Chunked ")
    assert not http1.chunked_last(b"chunked, gzip")
    assert not http1.chunked_last(None)


def test_dechunk_whole_cut_and_lenient_bodies() -> None:
    framed = b"".join(http1.chunk(b"hello")) + b"".join(http1.chunk(b" world")) + http1.CHUNKED_END
    assert http1.dechunk(framed) == (b"hello world", True)
    assert http1.dechunk(b"5;ext=1\nhello\n0\n\n") == (b"hello", True)
    assert http1.dechunk(b"5\r\nhel") == (b"hel", False)
    assert http1.dechunk(b"zz\r\nhello") == (b"", False)
    assert http1.dechunk(b"") == (b"", False)


_names = st.sampled_from(
    [b"Host", b"Connection", b"connection", b"Keep-Alive", b"TE", b"X-A", b"x-a", b"X-B", b"Upgrade", b"Accept"]
)
_values = st.sampled_from([b"1", b"x-a", b"X-B, keep-alive", b"close", b"upgrade", b""])


@given(st.lists(st.tuples(_names, _values), max_size=12), st.booleans())
def test_end_to_end_keeps_exactly_the_end_to_end_fields_in_order(
    headers: list[tuple[bytes, bytes]], upgrade: bool
) -> None:
    listed = http1.connection_tokens(headers)
    hop = http1.HOP_BY_HOP - ({b"connection", b"upgrade"} if upgrade else set())
    drop = hop | (listed - {b"upgrade", b"connection"} if upgrade else listed)
    expected = [h for h in headers if h[0].lower() not in drop]
    assert http1.end_to_end(headers, upgrade=upgrade) == expected
    if not upgrade:
        assert _relayed(headers)[0] == b"".join(name + b": " + value + b"\r\n" for name, value in expected)
