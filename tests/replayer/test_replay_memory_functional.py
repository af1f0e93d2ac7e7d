"""Replay memory stays bounded whatever the number of distinct paths, and the report is right.

A generated tape of 120,000 exchanges, 100,000 of them with a distinct path (ids of every shape,
dates, long tokens, sparse word slugs), is replayed by the real CLI in a child process at
``--speed 0`` against a real HTTP server on loopback; the child's own peak RSS stays under 300 MiB
and its JSON report counts every template exactly (bench/replay_memory.py runs 1M exchanges).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Final

from shadowtap.recorder import Exchange, Request, SyncTapeWriter, TapeOptions
from tests import peak_rss

EXCHANGES: Final = 120_000
DISTINCT: Final = 100_000
PEAK_RSS_LIMIT_KIB: Final = 300 * 1024

RESOURCES: Final = tuple(
    f"{name}s"
    for name in (
        "account", "address", "alert", "audit", "badge", "basket", "brand", "campaign", "card", "carrier",
        "coupon", "device", "event", "invoice", "locale", "merchant", "note", "offer", "plan", "refund",
        "region", "ticket",
    )
)  # fmt: skip
STABLE: Final = (*(f"/api/v1/{r}" for r in RESOURCES), "/files/recent", "/healthz", "/api/v1/users/me")
_WORDS: Final = ("alpha", "brisk", "cedar", "delta", "ember", "fjord", "grove", "haven", "iris", "juniper")


def _slug(n: int) -> str:
    parts = []
    for _ in range(5):
        n, r = divmod(n, len(_WORDS))
        parts.append(_WORDS[r])
    return "-".join(parts)


def _distinct(k: int) -> tuple[str, str]:
    kind = k % 6
    if kind == 0:
        return f"/api/v1/users/{k}", "GET /api/v1/users/{id}"
    if kind == 1:
        return f"/api/v1/orders/{uuid.UUID(int=k)}/items", "GET /api/v1/orders/{id}/items"
    if kind == 2:
        return f"/blobs/{k:040x}", "GET /blobs/{id}"
    if kind == 3:
        return f"/files/{_slug(k)}", "GET /files/{id}"
    if kind == 4:
        return f"/reports/2026-{1 + k % 12:02d}-{1 + k % 28:02d}/summary", "GET /reports/{id}/summary"
    return f"/sessions/tok{k:012d}AbCdEfGh", "GET /sessions/{id}"


def write_tape(directory: Path) -> dict[str, int]:
    """The tape; what each template must count."""
    expected: dict[str, int] = {}
    base_ns = 1_700_000_000 * 10**9
    k = 0
    with SyncTapeWriter(directory, TapeOptions(redaction=None)) as writer:
        for i in range(EXCHANGES):
            if (i + 1) * DISTINCT // EXCHANGES > k:
                path, template = _distinct(k)
                k += 1
            else:
                path = STABLE[i % len(STABLE)]
                template = f"GET {path}"
            expected[template] = expected.get(template, 0) + 1
            writer.write(
                Exchange(
                    id=f"m{i}",
                    started_at_ns=base_ns + i * 1000,
                    connection_id=f"c{i % 64}",
                    request=Request("GET", f"{path}?q={i}", ((b"Accept", b"application/json"),)),
                )
            )
    return expected


class _Answer(asyncio.Protocol):
    """A real HTTP/1.1 server, as small as one can be: every request head gets a 200 (GETs only)."""

    RESPONSE: Final = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        heads = self.buffer.count(b"\r\n\r\n")
        if heads:
            self.buffer = self.buffer[self.buffer.rfind(b"\r\n\r\n") + 4 :]
            self.transport.write(self.RESPONSE * heads)


async def test_replay_of_100k_distinct_paths_stays_under_300_mib_with_every_template_counted(tmp_path: Path) -> None:
    expected = write_tape(tmp_path / "tape")
    assert len(expected) == 6 + len(STABLE)
    server = await asyncio.get_running_loop().create_server(_Answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        child = await asyncio.create_subprocess_exec(
            *peak_rss.command(tmp_path / "peak", "replay", tmp_path / "tape"),
            "--target", f"http://127.0.0.1:{port}", "--speed", "0", "--json", str(tmp_path / "out.json"),
            "--no-progress", "--connections", "16",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await child.communicate()
    finally:
        server.close()
        await server.wait_closed()
    assert child.returncode == 0, stderr.decode()
    peak_kib = peak_rss.peak_kib(tmp_path / "peak")
    assert peak_kib < PEAK_RSS_LIMIT_KIB, f"peak RSS {peak_kib / 1024:.0f} MiB"
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["summary"]["requests"] == EXCHANGES and document["summary"]["errors"] == {}
    # Every template apart and counted exactly: ids of every shape folded, 22 real resources,
    # /files/recent and /api/v1/users/me kept beside the parameters of their positions.
    assert {e["endpoint"]: e["requests"] for e in document["endpoints"]} == expected
    assert document["endpoints_more"] == 0 and document["endpoints_overflow"] == {}
