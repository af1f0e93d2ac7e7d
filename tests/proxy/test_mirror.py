"""The copy's request head, checked by parsing it back with llhttp over generated header lists, against
the primary's where they must agree (the forwarding fields)."""

from __future__ import annotations

import httptools
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowtap.proxy.config import ShadowSettings
from shadowtap.proxy.forward import ForwardSettings, parse_primary
from shadowtap.proxy.mirror import _NOT_A_CHANGE, _NOT_FORWARDED, client_ip, mirror_request_head
from shadowtap.proxy.rewrite import RequestRewriter

NAMES = st.sampled_from(
    [b"Accept", b"X-User", b"x-user", b"Authorization", b"Cookie", b"Connection", b"Keep-Alive", b"Host",
     b"Content-Length", b"Transfer-Encoding", b"Expect", b"X-Api-Key", b"TE", b"X-Trace", b"Upgrade"]
)  # fmt: skip
VALUES = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12).map(str.encode)
SHADOW = ShadowSettings(name="v2", url="http://shadow.internal:8080/base", credentials=(("X-Api-Key", "K"),))
DROP = _NOT_FORWARDED | {h.encode() for h in SHADOW.strip_headers} | {b"x-api-key"}


class Parsed:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.body = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body


@settings(max_examples=200, deadline=None)
@given(
    headers=st.lists(st.tuples(NAMES, VALUES), max_size=10),
    body=st.binary(max_size=40),
    method=st.sampled_from(["GET", "POST", "OPTIONS"]),
)
def test_head_keeps_order_case_and_repeats_and_drops_what_it_must(
    headers: list[tuple[bytes, bytes]], body: bytes, method: str
) -> None:
    head = mirror_request_head(
        method, "/p/a?x=1", tuple(headers), len(body), shadow=SHADOW, upstream=parse_primary(SHADOW.url),
        drop=DROP, credentials=((b"X-Api-Key", b"K"),), exchange_id="ex-1", authority="front",
    )  # fmt: skip
    parsed = Parsed()
    parser = httptools.HttpRequestParser(parsed)
    parser.feed_data(head + body)
    assert parser.get_method().decode() == method
    assert parsed.url == b"/base/p/a?x=1"
    assert parsed.body == body
    listed = {
        token.strip().lower() for name, value in headers if name.lower() == b"connection" for token in value.split(b",")
    }
    kept = [(n, v) for n, v in headers if n.lower() not in DROP and n.lower() not in listed]
    added = [(b"X-Api-Key", b"K"), (b"X-Shadowtap-Shadow", b"1"), (b"X-Shadowtap-Correlation-Id", b"ex-1")]
    had_length = any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in headers)
    length = [(b"Content-Length", str(len(body)).encode())] if body or had_length else []
    assert parsed.headers == [(b"Host", b"shadow.internal:8080"), *kept, *added, *length]


FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via")
FORWARD_NAMES = st.sampled_from(
    [b"X-Forwarded-For", b"x-forwarded-for", b"X-Forwarded-Proto", b"X-Forwarded-Host", b"Via", b"Host",
     b"Connection", b"Accept", b"Authorization"]
)  # fmt: skip


def parse_head(head: bytes) -> list[tuple[bytes, bytes]]:
    parsed = Parsed()
    httptools.HttpRequestParser(parsed).feed_data(head)
    return parsed.headers


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(st.tuples(FORWARD_NAMES, VALUES), max_size=8),
    via=st.sampled_from([None, "edge"]),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    client_addr=st.sampled_from(["10.1.2.3:5555", "[2001:db8::7]:443"]),
    scheme=st.sampled_from(["http", "https"]),
)
def test_a_copy_carries_the_forwarding_fields_the_primary_got(
    headers: list[tuple[bytes, bytes]],
    via: str | None,
    flags: tuple[bool, bool, bool],
    client_addr: str,
    scheme: str,
) -> None:
    """The primary's head (the data path's one pass) and a copy's head (the forwarding the mirror
    computes once per request from the same rewriter) carry the same X-Forwarded-* and Via fields,
    value for value, in order."""
    settings = ForwardSettings(
        primary="http://primary.internal:9000", via=via, x_forwarded_for=flags[0], x_forwarded_proto=flags[1],
        x_forwarded_host=flags[2],
    )  # fmt: skip
    rewriter = RequestRewriter(settings)
    ip = client_ip(client_addr)
    assert ip == client_addr.rpartition(":")[0].strip("[]").encode()
    primary = parse_head(rewriter.head(b"GET", b"/p", list(headers), ip, scheme.encode(), chunked=False))
    forwarding = rewriter.forwarding(tuple(headers), ip, scheme.encode())
    copy = parse_head(
        mirror_request_head(
            "GET", "/p", tuple(headers), 0, shadow=SHADOW, upstream=parse_primary(SHADOW.url), drop=DROP,
            credentials=(), exchange_id="ex-1", authority="front", forwarding=forwarding,
        )
    )  # fmt: skip

    def forwarded(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [(name.lower(), value) for name, value in fields if name.lower() in FORWARDED]

    assert forwarded(copy) == forwarded(primary)


def test_a_copy_names_what_it_was_sent_without() -> None:
    removed: list[bytes] = []
    headers = (
        (b"Authorization", b"Bearer t"), (b"Connection", b"X-Hop"), (b"X-Hop", b"1"), (b"Cookie", b"a=1"),
        (b"Content-Length", b"0"), (b"Expect", b"100-continue"), (b"Host", b"front"), (b"Keep-Alive", b"5"),
    )  # fmt: skip
    mirror_request_head(
        "POST", "/p", headers, 0, shadow=SHADOW, upstream=parse_primary(SHADOW.url), drop=DROP,
        credentials=(), exchange_id="ex-1", authority="front", removable=DROP - _NOT_A_CHANGE, removed=removed,
    )  # fmt: skip
    # Hop-by-hop fields, framing and Host are no change of the request: the primary lacks them too.
    assert removed == [b"Authorization", b"Cookie", b"Expect"]
