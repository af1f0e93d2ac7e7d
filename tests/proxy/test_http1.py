"""HTTP/1.1 framing helpers: hop-by-hop filtering keeps everything else exactly as it came."""

from __future__ import annotations

import httptools
from hypothesis import given
from hypothesis import strategies as st

from shadowtap.proxy import http1


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


def test_response_head_and_error_response() -> None:
    assert http1.response_head(418, b"I'm a teapot", [(b"A", b"1")]) == b"HTTP/1.1 418 I'm a teapot\r\nA: 1\r\n\r\n"
    raw = http1.error_response(502, "Bad Gateway", "shadowtap: cannot connect", close=True)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"Content-Length: %d" % len(body) in head
    assert b"Connection: close" in head
    assert body == b"shadowtap: cannot connect\n"


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
