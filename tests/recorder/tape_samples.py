"""Exchanges for the tape tests: small, varied, and deterministic."""

from __future__ import annotations

from shadowtap.recorder import Exchange, Failure, FailureKind, Request, Response, Timing

BASE_NS = 1_700_000_000_000_000_000


def make_exchange(i: int, *, body: bytes = b'{"ok":true}', method: str = "GET", path: str | None = None) -> Exchange:
    return Exchange(
        id=f"ex-{i:06d}",
        started_at_ns=BASE_NS + i * 1_000_000,
        started_mono_ns=i * 1_000_000,
        request=Request(
            method,
            path or f"/users/{i}?page=2",
            ((b"Host", b"api.local"), (b"Accept", b"application/json"), (b"X-Dup", b"1"), (b"x-dup", b"2")),
            b"" if method == "GET" else b'{"n":%d}' % i,
            authority="api.local",
        ),
        primary=Response(200, "OK", ((b"Content-Type", b"application/json"),), body),
        shadows={"v2": Response(200, "OK", (), body), "v3": Failure(FailureKind.TIMEOUT, "2s")},
        timings={"primary": Timing(10, 200, 300)},
        session=f"s{i % 7}",
        connection_id=f"c{i % 3}",
        client_addr="127.0.0.1:40000",
        decisions={"v2": "mirrored"},
        tags={"source": "test"},
    )
