"""The proxy's own responses (shadowtap.proxy.server.error_response): plain text, framed, marked."""

from __future__ import annotations

from shadowtap.proxy.server import error_response


def test_error_response_is_framed_and_marked() -> None:
    raw = error_response(502, "Bad Gateway", "shadowtap: cannot connect", close=True)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"Content-Length: %d" % len(body) in head
    assert b"X-Shadowtap-Error: 1" in head
    assert b"Connection: close" in head
    assert body == b"shadowtap: cannot connect\n"
    assert b"Connection" not in error_response(504, "Gateway Timeout", "late", close=False)
