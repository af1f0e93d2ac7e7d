"""Wide events: one JSON line per joined exchange, written by a thread; a full queue drops, counted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from shadowtap.proxy.events import EventLog, wide_event
from shadowtap.proxy.rules import RouteRule, RouteTable
from shadowtap.recorder.model import Exchange, Failure, FailureKind, Request, Response, Timing

ROUTES = RouteTable([RouteRule(name="orders", path="/orders/**")])


def joined(i: int) -> Exchange:
    return Exchange(
        id=f"e{i}",
        started_at_ns=1_700_000_000_000_000_000 + i,
        request=Request("GET", f"/orders/{i}?q=1", body=b"abc"),
        primary=Response(200, "OK", (), b"hello"),
        shadows={"v2": Response(500, "Oops", (), b"x", truncated_from=99), "v3": Failure(FailureKind.TIMEOUT, "t")},
        timings={"primary": Timing(0, 1_000_000, 2_500_000), "v2": Timing(0, 1, 4_000_000), "v3": Timing()},
        decisions={"v2": "mirrored", "v3": "mirrored", "v4": FailureKind.SAMPLED_OUT},
        client_addr="127.0.0.1:9",
        session="u1",
    )


def test_wide_event_carries_the_context() -> None:
    event = wide_event(joined(1), ROUTES, recorded=True)
    assert event == {
        "ts_ns": 1_700_000_000_000_000_001,
        "id": "e1",
        "route": "orders",
        "method": "GET",
        "path": "/orders/1",
        "client": "127.0.0.1:9",
        "request_bytes": 3,
        "primary": {"status": 200, "bytes": 5, "ms": 2.5},
        "recorded": True,
        "session": "u1",
        "shadows": {
            "v2": {"decision": "mirrored", "status": 500, "bytes": 1, "truncated_from": 99, "ms": 4.0},
            "v3": {"decision": "mirrored", "status": None, "failure": "timeout", "ms": None},
            "v4": {"decision": "sampled-out"},
        },
    }


async def test_lines_are_written_off_loop_in_batches_and_drops_counted(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path), ROUTES, queue_size=10)
    # The writer is not running yet: the first batch fills the bounded queue, the second is dropped.
    for i in range(3):
        log.on_joined(joined(i), False)
    await asyncio.sleep(0.05)  # the batch timer hands the three over
    for i in range(3, 5):
        log.on_joined(joined(i), False)
    await asyncio.sleep(0.05)
    assert log.dropped == 2
    await log.start()
    log.on_joined(joined(9), True)
    await log.aclose(5.0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["id"] for e in lines] == ["e0", "e1", "e2", "e9"]
    assert lines[-1]["recorded"] is True
    assert log.snapshot()["written"] == 4


async def test_the_log_is_private_and_an_existing_wider_one_is_narrowed_and_kept(tmp_path: Path) -> None:
    import stat

    fresh, old = tmp_path / "fresh.jsonl", tmp_path / "old.jsonl"
    old.write_text('{"id": "from-yesterday"}\n')
    old.chmod(0o644)  # as an older shadowtap, or another tool, left it
    for path in (fresh, old):
        log = EventLog(str(path), ROUTES, queue_size=10)
        await log.start()
        log.on_joined(joined(1), True)
        await log.aclose(5.0)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [json.loads(line)["id"] for line in old.read_text().splitlines()] == ["from-yesterday", "e1"]
    assert [json.loads(line)["id"] for line in fresh.read_text().splitlines()] == ["e1"]


async def test_diff_events_follow_their_exchange_in_batches_through_the_same_bounded_queue(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path), ROUTES, queue_size=512)  # two batches of 256
    verdicts = [{"event": "diff", "id": f"e{i}", "verdict": "equal", "signatures": []} for i in range(600)]
    # Serialised by the live analysis process. The writer is not running yet: two batches fit the
    # queue, the rest is dropped and counted.
    log.on_diff([json.dumps(v, separators=(",", ":")).encode() + b"\n" for v in verdicts])
    assert log.dropped == 600 - 512
    await log.start()
    await log.aclose(5.0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == verdicts[:512]
    assert log.snapshot()["written"] == 512
