"""The record stage joins primary and shadow outcomes and writes them to a real tape."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shadowtap.proxy.config import ProxyConfig
from shadowtap.proxy.flags import RuntimeFlags
from shadowtap.proxy.join import SHUTDOWN_REASON, Joined, JoinIntake, JoinSettings
from shadowtap.proxy.metrics import ProxyMetrics
from shadowtap.proxy.record import RecordStage
from shadowtap.proxy.sampling import SampleKey
from shadowtap.proxy.stages import ProxiedExchange
from shadowtap.recorder import TapeOptions, TapeReader, TapeWriter
from shadowtap.recorder.model import Exchange, Failure, FailureKind, Response, Timing
from shadowtap.recorder.tape_process import ProcessTapeWriter

_ids = itertools.count()


def proxied(method: str = "GET", body: bytes | None = b"", decisions: dict[str, str] | None = None) -> ProxiedExchange:
    ex = ProxiedExchange(
        id=f"rx-{next(_ids)}",
        connection_id="c7",
        client_addr="127.0.0.1:4000",
        started_at_ns=time.time_ns(),
        started_mono_ns=time.monotonic_ns(),
        method=method,
        target="/things/1?user=u1",
        http_version="1.1",
        request_headers=((b"Host", b"svc"), (b"Authorization", b"Bearer secret"), (b"X-User", b"u1")),
        authority="svc",
        request_body=body,
        request_body_size=0 if body is None else len(body),
    )
    ex.decisions.update(decisions or {})
    return ex


def finish(ex: ProxiedExchange, body: bytes = b'{"ok":true}') -> None:
    ex.response = Response(200, "OK", ((b"Content-Type", b"application/json"),), body)
    ex.timing = Timing(10, 2_000, 3_000)


async def make(
    tmp_path: Path,
    record: dict[str, Any] | None = None,
    joined: list[Any] | None = None,
    metrics: ProxyMetrics | None = None,
) -> tuple[RecordStage, TapeWriter, RuntimeFlags]:
    config = ProxyConfig.from_mapping(
        {
            "primary": "http://127.0.0.1:1",
            # Short shadow timeouts, so short join timeouts are valid.
            "shadows": {
                "v2": {"url": "http://127.0.0.1:2", "total_timeout_s": 0.1},
                "v3": {"url": "http://127.0.0.1:3", "total_timeout_s": 0.1},
            },
            "record": {"tape": str(tmp_path / "tape"), **(record or {})},
        }
    )
    flags = RuntimeFlags(config)
    tape = TapeWriter(tmp_path / "tape", TapeOptions(fsync="none"))
    await tape.start()
    listener = None if joined is None else (lambda j, recorded: joined.append((j.exchange(), recorded)))
    metrics = metrics or ProxyMetrics()
    stage = RecordStage(config.record, flags, metrics, tape, listener, SampleKey("header", "X-User"))
    await stage.start()
    return stage, tape, flags


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def read_tape(stage: RecordStage, tape: TapeWriter, tmp_path: Path) -> list[Exchange]:
    await stage.aclose(1.0)
    await tape.close()
    return list(TapeReader(tmp_path / "tape"))


async def test_joins_shadows_in_any_order_and_writes_once(tmp_path: Path) -> None:
    stage, tape, _ = await make(tmp_path)
    a = proxied(decisions={"v2": "mirrored", "v3": FailureKind.SAMPLED_OUT})
    b = proxied(decisions={"v2": "mirrored", "v3": "mirrored"})
    for ex in (a, b):
        stage.request_complete(ex)
    # a: the shadow answers before the primary finishes; b: after.
    stage.on_shadow_outcome(a, "v2", Response(200, "OK", (), b"v2"), Timing(5, 6, 7))
    finish(a)
    stage.exchange_complete(a)
    finish(b)
    stage.exchange_complete(b)
    stage.on_shadow_outcome(b, "v2", Response(500, "Oops", (), b"err"), Timing(1, 2, 3))
    assert stage.stats.joined == 1
    stage.on_shadow_outcome(b, "v3", Failure(FailureKind.RESET, "reset"), Timing(1, None, 3))
    stage.on_shadow_outcome(b, "v3", Failure(FailureKind.RESET, "again"), Timing())
    assert stage.stats.joined == 2 and stage.stats.unjoined_shadow_outcomes == 1
    # Handed to the tape writer at once; it writes them in a batch a few milliseconds later,
    # without waiting for shutdown.
    assert stage.stats.submitted == 2
    assert tape.stats.queue_depth == 2
    await asyncio.sleep(0.1)
    assert (tape.stats.written, tape.stats.queue_depth) == (2, 0)

    first, second = await read_tape(stage, tape, tmp_path)
    assert first.id == a.id and second.id == b.id
    assert first.primary == Response(200, "OK", ((b"Content-Type", b"application/json"),), b'{"ok":true}')
    assert first.shadows == {"v2": Response(200, "OK", (), b"v2")}
    assert first.timings == {"primary": Timing(10, 2_000, 3_000), "v2": Timing(5, 6, 7)}
    assert first.decisions == {"v2": "mirrored", "v3": FailureKind.SAMPLED_OUT}
    assert first.tags["correlation_id"] == a.id and first.session == "u1"
    assert first.request.target == "/things/1?user=u1" and first.connection_id == "c7"
    # Redaction is on by default: the credential is not on the tape.
    assert first.request.header(b"Authorization") != b"Bearer secret"
    assert second.shadows["v3"] == Failure(FailureKind.RESET, "reset")


async def test_missing_shadow_times_out_and_capacity_is_bounded(tmp_path: Path) -> None:
    stage, tape, _ = await make(tmp_path, {"join_timeout_s": 0.2, "max_pending": 2})
    slow = proxied(decisions={"v2": "mirrored"})
    stage.request_complete(slow)
    finish(slow)
    stage.exchange_complete(slow)
    await asyncio.sleep(0.6)  # the sweeper completes it without v2
    assert stage.stats.shadow_join_timeouts == 1
    in_flight = [proxied(decisions={"v2": "mirrored", "v3": "mirrored"}) for _ in range(3)]
    for ex in in_flight:
        # v2 answers before the primaries end: each answer waits for its primary.
        stage.on_shadow_outcome(ex, "v2", Response(200, "OK", (), b"v2"), Timing(1, 2, 3))
    # The oldest waiting exchange was pushed out at capacity; its primary had not finished, so there
    # was nothing to write, and its shadow's answer is counted as unjoined.
    assert (stage.stats.evicted_at_capacity, stage.stats.unjoined_shadow_outcomes) == (1, 1)
    assert stage.snapshot()["pending"] == 2
    # A finished primary pushed out at capacity is written at once, its missing shadow marked.
    finish(in_flight[1])
    stage.exchange_complete(in_flight[1])
    third = proxied(decisions={"v2": "mirrored"})
    finish(third)
    stage.exchange_complete(third)
    assert stage.stats.evicted_at_capacity == 2
    written = await read_tape(stage, tape, tmp_path)
    # in_flight[2]'s primary never ended: nothing to write at shutdown either.
    assert [ex.id for ex in written] == [slow.id, in_flight[1].id, third.id]
    assert written[0].shadows["v2"] == Failure(FailureKind.TIMEOUT, "no shadow outcome within the join timeout")
    assert written[1].shadows == {
        "v2": Response(200, "OK", (), b"v2"),
        "v3": Failure(FailureKind.TIMEOUT, "too many exchanges waiting for shadows"),
    }
    assert written[2].shadows["v2"] == Failure(FailureKind.TIMEOUT, "proxy shut down before the shadow answered")
    assert stage.stats.unjoined_shadow_outcomes == 2


async def test_waiting_exchanges_are_bounded_in_bytes_too(tmp_path: Path) -> None:
    joined: list[Any] = []  # the event log on: the stage joins here
    metrics = ProxyMetrics()
    stage, tape, _ = await make(tmp_path, {"join_timeout_s": 60, "max_pending_bytes": 64 * 1024}, joined, metrics)
    body = b"p" * 10_000
    waiting = [proxied("POST", body=body, decisions={"v2": "mirrored"}) for _ in range(12)]
    for ex in waiting:
        finish(ex, body)  # request and response: ~20 KiB each, three fit in 64 KiB
        stage.exchange_complete(ex)
        assert stage.pending_bytes <= 64 * 1024
    assert stage.pending == 3 and stage.pending_bytes > 3 * 20_000
    stats = stage.stats
    assert (stats.evicted_at_byte_capacity, stats.evicted_at_capacity, stats.submitted) == (9, 0, 9)
    # A shadow's answer counts too: v2 answers the newest with 30 KiB, which pushes out the oldest.
    stage.on_shadow_outcome(waiting[9], "v2", Response(200, "OK", (), b"s" * 30_000), Timing(1, 2, 3))
    assert (stage.pending, stage.stats.evicted_at_byte_capacity) == (2, 9)  # the answered one is done
    early = proxied(decisions={"v2": "mirrored"})
    stage.on_shadow_outcome(early, "v2", Response(200, "OK", (), b"s" * 50_000), Timing(1, 2, 3))
    assert (stage.pending, stage.stats.evicted_at_byte_capacity) == (1, 11)
    assert stage.snapshot()["pending_bytes"] == stage.pending_bytes > 50_000
    text = metrics.render().decode()
    assert "shadowtap_record_evicted_at_byte_capacity_total 11.0" in text
    assert f"shadowtap_record_pending_bytes {float(stage.pending_bytes)}" in text
    written = await read_tape(stage, tape, tmp_path)
    assert [ex.id for ex in written] == [ex.id for ex in waiting]
    assert written[0].shadows["v2"] == Failure(FailureKind.TIMEOUT, "too many exchanges waiting for shadows")
    assert stage.pending_bytes == 0


async def test_sampling_flags_and_body_caps(tmp_path: Path) -> None:
    joined: list[Any] = []
    stage, tape, flags = await make(tmp_path, {"max_body_bytes": 4}, joined)
    big = proxied("POST", body=b"0123456789")
    stage.request_complete(big)
    finish(big, body=b"abcdefgh")
    stage.exchange_complete(big)
    streamed = proxied("PUT", body=None)
    streamed.request_body_size = 5_000_000
    stage.request_complete(streamed)
    streamed.failure = Failure(FailureKind.TIMEOUT, "primary first byte")
    stage.exchange_complete(streamed)
    flags.recording = False
    off = proxied()
    stage.request_complete(off)
    finish(off)
    stage.exchange_complete(off)
    flags.recording = True
    flags.record_percent = 0.0
    sampled_out = proxied()
    stage.request_complete(sampled_out)
    finish(sampled_out)
    stage.exchange_complete(sampled_out)

    written = await read_tape(stage, tape, tmp_path)
    assert [ex.id for ex in written] == [big.id, streamed.id]
    assert written[0].request.body == b"0123" and written[0].request.truncated_from == 10
    primary = written[0].primary
    assert isinstance(primary, Response) and primary.body == b"abcd" and primary.truncated_from == 8
    assert written[1].request.body == b"" and written[1].request.truncated_from == 5_000_000
    assert written[1].primary == Failure(FailureKind.TIMEOUT, "primary first byte")
    # Every exchange reaches the wide-event listener, taped or not.
    assert [(ex.id, recorded) for ex, recorded in joined] == [
        (big.id, True), (streamed.id, True), (off.id, False), (sampled_out.id, False)
    ]  # fmt: skip
    assert stage.stats.sampled_out == 1


async def test_shutdown_writes_waiting_exchanges(tmp_path: Path) -> None:
    stage, tape, _ = await make(tmp_path, {"join_timeout_s": 60})
    ex = proxied(decisions={"v2": "mirrored"})
    stage.request_complete(ex)
    finish(ex)
    stage.exchange_complete(ex)
    (written,) = await read_tape(stage, tape, tmp_path)
    assert written.shadows["v2"] == Failure(FailureKind.TIMEOUT, "proxy shut down before the shadow answered")


async def test_record_percent_holds_and_untaped_exchanges_are_not_kept(tmp_path: Path) -> None:
    stage, tape, _ = await make(tmp_path, {"sample_percent": 30})
    for _ in range(2_000):
        ex = proxied()
        stage.request_complete(ex)
        finish(ex)
        stage.exchange_complete(ex)
    # Without an event log nothing waits for an exchange that will not be taped.
    assert stage.snapshot()["pending"] == 0
    taped = len(await read_tape(stage, tape, tmp_path))
    assert taped == stage.stats.submitted and 500 <= taped <= 700, taped
    assert stage.stats.sampled_out == 2_000 - taped


async def test_late_joins_are_completed_a_bounded_number_per_sweep(tmp_path: Path) -> None:
    # join_timeout_s 60: the background sweeper never gets to them, only the sweeps called here.
    joined: list[Any] = []
    stage, tape, _ = await make(tmp_path, {"join_timeout_s": 60}, joined)
    late = [proxied(decisions={"v2": "mirrored"}) for _ in range(80)]
    for ex in late:
        stage.request_complete(ex)
        finish(ex)
        stage.exchange_complete(ex)
    later_s = asyncio.get_running_loop().time() + 61
    assert stage.sweep(later_s) is True
    assert len(joined) == 32
    assert stage.sweep(later_s) is True
    assert stage.sweep(later_s) is False
    assert len(joined) == 80 and stage.snapshot()["pending"] == 0
    assert stage.stats.shadow_join_timeouts == 80
    written = await read_tape(stage, tape, tmp_path)
    assert [ex.id for ex in written] == [ex.id for ex in late]


async def test_a_shadow_switched_off_for_recording_is_left_off_the_tape(tmp_path: Path) -> None:
    joined: list[Any] = []
    stage, tape, flags = await make(tmp_path, joined=joined)
    flags.apply({"shadows": {"v2": {"recording": False}}})
    ex = proxied(decisions={"v2": "mirrored", "v3": "mirrored"})
    stage.request_complete(ex)
    stage.on_shadow_outcome(ex, "v2", Response(200, "OK", (), b"v2"), Timing(1, 2, 3))
    stage.on_shadow_outcome(ex, "v3", Response(200, "OK", (), b"v3"), Timing(4, 5, 6))
    finish(ex)
    stage.exchange_complete(ex)
    (taped,) = await read_tape(stage, tape, tmp_path)
    assert taped.shadows == {"v3": Response(200, "OK", (), b"v3")}
    assert set(taped.timings) == {"primary", "v3"}
    assert taped.decisions == {"v2": "mirrored", "v3": "mirrored"}
    assert taped.tags["not_recorded"] == "v2"
    # Wide events (the joined-exchange listener) still see every answer.
    ((seen, recorded),) = joined
    assert set(seen.shadows) == {"v2", "v3"} and recorded


def without_credentials(e: Exchange) -> Exchange:
    headers = tuple(h for h in e.request.headers if h[0] != b"Authorization")
    return dataclasses.replace(e, request=dataclasses.replace(e.request, headers=headers))


async def test_the_tape_and_the_event_log_see_one_record_in_every_shape(tmp_path: Path) -> None:
    """The stage builds records in wire form, never an Exchange; the joiner adds the shadows. Read
    back from the tape, each record must be the event log's Exchange minus the shadows whose
    recording is off, in every shape: caps, failures, timeouts, upgrades, a streamed request."""
    joined: list[Any] = []
    stage, tape, flags = await make(tmp_path, {"max_body_bytes": 20, "join_timeout_s": 60}, joined)
    big = b"x" * 50
    streamed = proxied(body=None)
    streamed.request_body_size = 9_000
    streamed.failure = Failure(FailureKind.RESET, "primary closed the connection")
    upgraded = proxied(body=big, decisions={"v2": "mirrored", "v3": "mirrored"})
    upgraded.upgraded = True
    finish(upgraded, body=big)
    flags.apply({"shadows": {"v2": {"recording": False}}})
    stage.exchange_complete(streamed)
    stage.exchange_complete(upgraded)
    stage.on_shadow_outcome(upgraded, "v3", Response(502, "Bad", ((b"A", b"1"), (b"a", b"2")), big), Timing(1, None, 9))
    # v2 never answers: a timeout at shutdown. (The tape redacts the credential; the log never has.)
    taped = [without_credentials(e) for e in await read_tape(stage, tape, tmp_path)]
    events = [without_credentials(event) for event, recorded in joined]
    assert [e.id for e in taped] == [e.id for e in events] == [streamed.id, upgraded.id]
    assert taped[0] == events[0]
    assert taped[0].request.body == b"" and taped[0].request.truncated_from == 9_000
    assert taped[0].primary == Failure(FailureKind.RESET, "primary closed the connection")
    # v2's recording was off when the primary ended: it stays off the tape, named in a tag.
    assert list(events[1].shadows) == ["v3", "v2"] and list(taped[1].shadows) == ["v3"]
    assert taped[1] == dataclasses.replace(
        events[1],
        shadows={"v3": events[1].shadows["v3"]},
        timings={n: t for n, t in events[1].timings.items() if n != "v2"},
        tags={**events[1].tags, "not_recorded": "v2"},
    )
    assert events[1].shadows["v2"] == Failure(FailureKind.TIMEOUT, "proxy shut down before the shadow answered")
    # The caps marked truncation where they cut: request, primary and shadow.
    shadow = taped[1].shadows["v3"]
    assert isinstance(shadow, Response) and shadow.body == big[:20] and shadow.truncated_from == 50
    assert taped[1].request.truncated_from == 50 and taped[1].primary.truncated_from == 50  # type: ignore[union-attr]
    assert taped[1].tags["upgraded"] == "1"


async def scenario(stage: RecordStage) -> list[ProxiedExchange]:
    """Early and late answers, a duplicate, a shadow switched off for recording, a sampled-out
    exchange and one whose shadow never answers (completed at shutdown)."""
    a = proxied(decisions={"v2": "mirrored", "v3": FailureKind.SAMPLED_OUT})
    b = proxied(decisions={"v2": "mirrored", "v3": "mirrored"})
    c = proxied(decisions={"v2": "mirrored"})
    stage.on_shadow_outcome(a, "v2", Response(200, "OK", (), b"v2"), Timing(5, 6, 7))
    for ex in (a, b, c):
        finish(ex)
        stage.exchange_complete(ex)
    stage.on_shadow_outcome(b, "v3", Failure(FailureKind.RESET, "reset"), Timing(1, None, 3))
    stage.on_shadow_outcome(b, "v3", Failure(FailureKind.RESET, "again"), Timing())
    stage.on_shadow_outcome(b, "v2", Response(500, "Oops", (), b"err"), Timing(1, 2, 3))
    return [a, b, c]


async def test_the_writer_process_joins_as_the_stage_would(tmp_path: Path) -> None:
    config = ProxyConfig.from_mapping(
        {
            "primary": "http://127.0.0.1:1",
            "shadows": {"v2": "http://127.0.0.1:2", "v3": "http://127.0.0.1:3"},
            "record": {"tape": str(tmp_path / "t")},
        }
    )
    options = TapeOptions(fsync="none", redaction=None)
    tapes: list[list[Exchange]] = []
    writers: list[tuple[TapeWriter | ProcessTapeWriter, Path]] = [
        (TapeWriter(tmp_path / "thread", options), tmp_path / "thread"),
        (TapeWriter(tmp_path / "joins", options, JoinIntake(JoinSettings(60.0, 100))), tmp_path / "joins"),
        (ProcessTapeWriter(tmp_path / "process", options, JoinIntake(JoinSettings(60.0, 100))), tmp_path / "process"),
    ]
    for writer, directory in writers:
        await writer.start()
        stage = RecordStage(config.record, RuntimeFlags(config), ProxyMetrics(), writer, None, None)
        await stage.start()
        assert stage.joins_in_writer is writer.hosts_intake
        a, b, c = await scenario(stage)
        # c waits for v2. The writer process reports its join a batch later.
        await wait_until(lambda stage=stage: stage.stats.joined == 2)  # type: ignore[misc]
        assert (stage.pending, stage.stats.unjoined_shadow_outcomes) == (1, 1)
        await stage.aclose(1.0)
        await writer.close()
        stats = stage.stats
        assert (stage.pending, stats.joined, stats.shadow_join_timeouts, stats.submitted) == (0, 3, 1, 3)
        tapes.append(list(TapeReader(directory)))

    def same(e: Exchange) -> Exchange:  # each run made its own exchanges: other ids and times
        tags = {k: v for k, v in e.tags.items() if k != "correlation_id"}
        return dataclasses.replace(e, id="", started_at_ns=0, started_mono_ns=0, tags=tags)

    thread_tape, thread_joins_tape, process_tape = tapes
    assert [same(e) for e in process_tape] == [same(e) for e in thread_tape] == [same(e) for e in thread_joins_tape]
    assert [e.id for e in process_tape] == [a.id, b.id, c.id]
    assert process_tape[1].shadows == {
        "v3": Failure(FailureKind.RESET, "reset"),
        "v2": Response(500, "Oops", (), b"err"),
    }
    assert process_tape[2].shadows["v2"] == Failure(FailureKind.TIMEOUT, SHUTDOWN_REASON)


async def test_with_the_event_log_on_the_stage_joins_itself(tmp_path: Path) -> None:
    config = ProxyConfig.from_mapping(
        {"primary": "http://127.0.0.1:1", "shadows": {"v2": "http://127.0.0.1:2"}, "record": {"tape": str(tmp_path)}}
    )
    joined: list[tuple[Exchange, bool]] = []
    writer = ProcessTapeWriter(tmp_path, TapeOptions(fsync="none"), JoinIntake(JoinSettings(60.0, 100)))
    await writer.start()
    stage = RecordStage(
        config.record, RuntimeFlags(config), ProxyMetrics(), writer, lambda j, t: joined.append((j.exchange(), t))
    )
    await stage.start()
    assert not stage.joins_in_writer
    ex = proxied(decisions={"v2": "mirrored"})
    finish(ex)
    stage.exchange_complete(ex)
    stage.on_shadow_outcome(ex, "v2", Response(200, "OK", (), b"v2"), Timing(1, 2, 3))
    await stage.aclose(1.0)
    await writer.close()
    ((event, taped),) = joined
    assert taped and event.shadows == {"v2": Response(200, "OK", (), b"v2")}
    (on_tape,) = TapeReader(tmp_path)
    assert on_tape.id == ex.id and on_tape.shadows == event.shadows
    assert writer.intake_stats.counters.get("joined", 0) == 0  # whole records reached the writer


async def test_a_long_run_leaves_nothing_behind_in_the_join(tmp_path: Path) -> None:
    """The bounded form of bench/record_soak.py for the join on the loop: 10,000 exchanges, each
    mirrored to v2 whose answer comes before or after its primary, then a few left to time out.
    Everything the join held drains to zero, its deadline queue stays within its compaction bound
    (not one entry per exchange of the last join timeout), and the traced heap does not grow."""
    config = ProxyConfig.from_mapping(
        {"primary": "http://127.0.0.1:1", "shadows": {"v2": "http://127.0.0.1:2"},
         "record": {"tape": str(tmp_path), "join_timeout_s": 60}}
    )  # fmt: skip
    tape = TapeWriter(tmp_path, TapeOptions(fsync="none", redaction=None))
    await tape.start()
    seen = [0]

    def listener(joined: Joined, taped: bool) -> None:
        seen[0] += 1

    stage = RecordStage(config.record, RuntimeFlags(config), ProxyMetrics(), tape, listener)
    await stage.start()
    join = stage._join
    assert isinstance(join, JoinIntake)
    joiner = join.joiner

    async def run(count: int) -> None:
        for i in range(count):
            ex = proxied(decisions={"v2": "mirrored"})
            answer = Response(200, "OK", (), b"v2")
            if i % 2:
                stage.on_shadow_outcome(ex, "v2", answer, Timing(1, 2, 3))
            finish(ex)
            stage.exchange_complete(ex)
            if not i % 2:
                stage.on_shadow_outcome(ex, "v2", answer, Timing(1, 2, 3))
            if i % 500 == 499:
                await wait_until(lambda: tape.stats.queue_depth == 0)
        # Written, not only taken off the queue: a batch the writer thread is still encoding holds
        # its block's buffers, which the heap measure below would count.
        await wait_until(lambda: tape.stats.queue_depth == 0 and tape.stats.written == seen[0])

    await run(1_000)  # warm-up: free lists, dict sizes, the writer's buffers
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await run(10_000)
        # Joined exchanges leave their deadline behind until the queue is compacted, which keeps it
        # within 2 x pending + 1024 entries, not one per exchange of the last join timeout.
        assert (stage.pending, stage.pending_bytes) == (0, 0) and len(joiner._deadlines) <= 1024
        joiner._compact()  # now the stale ones go, and what is left must be nothing
        assert len(joiner._deadlines) == 0
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 16 * 1024, f"{grown} bytes for 10,000 exchanges"
    # Some never answered: held, then timed out, then nothing is held.
    late = [proxied(decisions={"v2": "mirrored"}) for _ in range(50)]
    for ex in late:
        finish(ex)
        stage.exchange_complete(ex)
    assert stage.pending == 50 and stage.pending_bytes > 0
    assert stage.sweep(asyncio.get_running_loop().time() + 61) is True  # 32 per sweep
    assert stage.sweep(asyncio.get_running_loop().time() + 61) is False
    assert (stage.pending, stage.pending_bytes, len(joiner._deadlines)) == (0, 0, 0)
    assert seen[0] == 11_050 and stage.stats.joined == 11_050
    await stage.aclose(1.0)
    await tape.close()
    assert tape.stats.written == 11_050
