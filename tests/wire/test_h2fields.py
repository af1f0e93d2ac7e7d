"""``shadowtap.wire.h2fields``: what RFC 9113 8.2 and 8.3 call malformed, and what they allow."""

from __future__ import annotations

import pytest

from shadowtap.wire.h2fields import request_problem, trailers_problem

_HEAD = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"shop.local"), (b":path", b"/a")]


@pytest.mark.parametrize(
    "fields",
    [
        _HEAD,
        [*_HEAD, (b"te", b"trailers"), (b"content-type", b"application/grpc"), (b"x-empty", b"")],
        [*_HEAD, (b"host", b"shop.local"), (b"cookie", b"a=1"), (b"cookie", b"b=2")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"*"), (b"host", b"shop.local")],
        [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":path", b"/chat"),
            (b":authority", b"shop.local"),
        ],
    ],
)
def test_well_formed_requests_pass(fields: list[tuple[bytes, bytes]]) -> None:
    assert request_problem(fields) == ""


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ([*_HEAD, (b"", b"x")], "empty field name"),
        ([*_HEAD, (b"Accept", b"*/*")], "uppercase"),
        ([*_HEAD, (b"x-a ", b"1")], "whitespace around the field name"),
        ([*_HEAD, (b"x:a", b"1")], "forbidden byte"),
        ([*_HEAD, (b"x-a", b"1\x00")], "control character"),
        ([*_HEAD, (b"x-a", b"1 ")], "whitespace around the value"),
        ([*_HEAD, (b"transfer-encoding", b"chunked")], "connection-specific"),
        ([*_HEAD, (b"te", b"trailers, deflate")], "te:"),
        ([*_HEAD, (b":method", b"GET")], "twice"),
        ([*_HEAD, (b":status", b"200")], "in a request"),
        ([(b":method", b"GET"), (b"x-a", b"1"), (b":scheme", b"http"), (b":path", b"/")], "after a regular field"),
        ([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a")], "without :method, :scheme or :path"),
        ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")], "without :authority or host"),
        ([*_HEAD, (b"host", b"other.local")], "differ"),
        ([*_HEAD[:3], (b":path", b"")], "empty :path"),
        ([*_HEAD, (b":protocol", b"websocket")], "not CONNECT"),
    ],
)
def test_malformed_requests_say_why(fields: list[tuple[bytes, bytes]], why: str) -> None:
    assert why in request_problem(fields)


def test_trailers() -> None:
    assert trailers_problem([(b"grpc-status", b"0"), (b"grpc-message", b"")]) == ""
    assert "pseudo-header" in trailers_problem([(b"grpc-status", b"0"), (b":status", b"200")])
    assert "connection-specific" in trailers_problem([(b"connection", b"close")])
