"""The copy's request head, checked by parsing it back with llhttp over generated header lists."""

from __future__ import annotations

import httptools
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import ShadowSettings
from proxy.forward import parse_primary
from proxy.mirror import _NOT_FORWARDED, mirror_request_head

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
