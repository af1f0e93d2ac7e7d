"""A million distinct paths: `shadowtap replay` and `shadowtap diff` of one generated tape each stay
under 300 MiB (issue 25's budget) and report every endpoint template exactly.

The tape: 1,050,000 exchanges, 1,000,000 of them with a path of their own (ids of every shape:
digits, UUIDs, 40-digit hashes, ISO dates, long tokens, sparse word slugs that only their number
marks as parameters), the rest on 25 stable routes that must stay apart from the parameters beside
them (22 real top-level resources, ``/files/recent``, ``/api/v1/users/me``, ``/healthz``). Each has
a small JSON answer from the primary and one from the shadow ``v2``: the same, except a changed
total on one template and a changed score inside maps keyed by user ids on another.

Both commands run as real child processes; the replay goes to a real HTTP/1.1 server on loopback
at ``--speed 0``. Each child's own peak RSS (``VmHWM``) is read, not the test's.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

from shadowtap.recorder import Exchange, Request, Response, SyncTapeWriter, TapeOptions
from tests import peak_rss
from tests.scale_paths import ORDERS, STABLE, USERS, distinct_path

EXCHANGES: Final = 1_050_000
#: One exchange in STABLE_EVERY goes to a stable route; every other one has a path of its own.
STABLE_EVERY: Final = 21
DISTINCT: Final = EXCHANGES - EXCHANGES // STABLE_EVERY
PEAK_RSS_LIMIT_KIB: Final = 300 * 1024

_JSON: Final = ((b"Content-Type", b"application/json"),)


@dataclass
class Expected:
    """What the reports must say of the tape."""

    requests: dict[str, int] = field(default_factory=dict)
    differing: dict[str, int] = field(default_factory=dict)
    paths: set[str] = field(default_factory=set)


def _exchanges(expected: Expected) -> Iterator[Exchange]:
    base_ns = 1_700_000_000 * 10**9
    for i in range(EXCHANGES):
        if i % STABLE_EVERY == STABLE_EVERY - 1:
            path = STABLE[(i // STABLE_EVERY) % len(STABLE)]
            template = f"GET {path}"
            before = after = b'{"ok":true}'
        else:
            k = i - i // STABLE_EVERY
            path, template = distinct_path(k)
            expected.paths.add(path)
            if template == ORDERS:
                before, after = b'{"id":%d,"total":12.5}' % k, b'{"id":%d,"total":12.75}' % k
            elif template == USERS:
                # A map keyed by user ids (a new key in every answer): one in four scores differ.
                before = b'{"users":{"u%d":{"score":1}}}' % (100_000 + k)
                after = before if k % 4 else b'{"users":{"u%d":{"score":2}}}' % (100_000 + k)
            else:
                before = after = b'{"id":%d}' % k
        expected.requests[template] = expected.requests.get(template, 0) + 1
        if before != after:
            expected.differing[template] = expected.differing.get(template, 0) + 1
        yield Exchange(
            id=f"m{i}",
            started_at_ns=base_ns + i * 1000,
            connection_id=f"c{i % 64}",
            request=Request("GET", f"{path}?q={i}", ((b"Accept", b"application/json"),)),
            primary=Response(200, "OK", _JSON, before),
            shadows={"v2": Response(200, "OK", _JSON, after)},
        )


@pytest.fixture(scope="module")
def tape(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Expected]:
    directory = tmp_path_factory.mktemp("million") / "tape"
    expected = Expected()
    with SyncTapeWriter(directory, TapeOptions(redaction=None, fsync="none")) as writer:
        writer.write_many(_exchanges(expected))
    assert len(expected.paths) == DISTINCT == 1_000_000
    assert len(expected.requests) == 6 + len(STABLE)
    expected.paths.clear()  # 80 MiB of the test's own that the children need not compete with
    return directory, expected


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


async def test_replay_of_a_million_distinct_paths_stays_under_300_mib_with_every_template_counted(
    tape: tuple[Path, Expected], tmp_path: Path
) -> None:
    directory, expected = tape
    server = await asyncio.get_running_loop().create_server(_Answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        child = await asyncio.create_subprocess_exec(
            *peak_rss.command(tmp_path / "peak", "replay", directory),
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
    # Every template apart: ids of every shape folded, 22 real resources, and /files/recent and
    # /api/v1/users/me (1 % of their positions' requests) kept beside the parameters there.
    counted = {e["endpoint"]: e["requests"] for e in document["endpoints"]}
    assert counted.keys() == expected.requests.keys()
    assert document["endpoints_more"] == 0 and document["endpoints_overflow"] == {}
    # Counted exactly, but for the busy literals' first requests: the replay templates as it goes,
    # and those came before the literal stood out from the ids (they count under {id}).
    for literal, parameter in (("GET /files/recent", "GET /files/{id}"), ("GET /api/v1/users/me", USERS)):
        early = expected.requests[literal] - counted[literal]
        assert 0 <= early <= 50 and counted[parameter] == expected.requests[parameter] + early
        counted[literal], counted[parameter] = expected.requests[literal], expected.requests[parameter]
    assert counted == expected.requests


def test_diff_of_a_million_distinct_paths_stays_under_300_mib_and_finds_exactly_the_changes(
    tape: tuple[Path, Expected], tmp_path: Path
) -> None:
    directory, expected = tape
    proc = subprocess.run(
        peak_rss.command(
            tmp_path / "peak", "diff", directory, "--candidate", "v2", "--workers", "1",
            "--json", tmp_path / "r.json", "--quiet", "--no-progress",
        ),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr  # value changes are medium: under the default gate
    peak_kib = peak_rss.peak_kib(tmp_path / "peak")
    assert peak_kib < PEAK_RSS_LIMIT_KIB, f"peak RSS {peak_kib / 1024:.0f} MiB"
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["pairs"], report["compared"], report["errors"]) == (EXCHANGES, EXCHANGES, 0)
    assert report["differing"] == sum(expected.differing.values())
    endpoints = {e["endpoint"]: e for e in report["endpoints"]}
    assert {name: e["compared"] for name, e in endpoints.items()} == expected.requests
    assert {name: e["differing"] for name, e in endpoints.items() if e["differing"]} == expected.differing
    # A million ids in paths and 170,000 in map keys: one signature each, on the right field.
    signatures = {name: [(s["path"], s["count"]) for s in e["signatures"]] for name, e in endpoints.items()}
    assert signatures[ORDERS] == [("body.total", expected.differing[ORDERS])]
    assert signatures[USERS] == [("body.users.{key}.score", expected.differing[USERS])]
    assert all(not found for name, found in signatures.items() if name not in (ORDERS, USERS))
