"""Synthetic tapes built in memory for the replayer tests."""

from __future__ import annotations

from shadowtap.recorder import Exchange, Request, Response

S = 1_000_000_000
MS = 1_000_000
T_BASE_NS = 1_700_000_000 * S


def make_exchange(
    i: int, at_ms: float, *, target: str | None = None, session: str = "", method: str = "GET", body: bytes = b""
) -> Exchange:
    """Exchange ``i`` recorded ``at_ms`` after the tape start, with a recorded 200 response."""
    return Exchange(
        id=f"ex{i}",
        started_at_ns=T_BASE_NS + int(at_ms * MS),
        request=Request(method, target or f"/r/{i}", ((b"X-Seq", str(i).encode()),), body),
        primary=Response(200, "OK", ((b"Content-Type", b"text/plain"),), f"recorded {i}".encode()),
        session=session,
        tags={"source": "test"},
    )
