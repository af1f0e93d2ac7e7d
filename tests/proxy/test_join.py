"""The record join: typed primary and shadow records joined, on its own and hosted by the tape writers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import signal
import time
import tracemalloc
from collections.abc import Collection
from pathlib import Path

import msgpack
import pytest

from shadowtap.proxy.join import (
    SHUTDOWN_REASON,
    Joined,
    JoinIntake,
    JoinSettings,
    RecordJoiner,
    WiredPrimary,
    WiredShadow,
    load_wired,
)
from shadowtap.proxy.record import PrimaryRecord, ShadowRecord
from shadowtap.recorder import RedactionRules, TapeOptions, TapeReader, TapeWriter
from shadowtap.recorder.model import (
    Exchange,
    Failure,
    FailureKind,
    Request,
    RequestDelta,
    Response,
    StreamMessage,
    Timing,
    delta_to_wire,
    exchange_from_wire,
)
from shadowtap.recorder.tape_process import ProcessTapeWriter
from tests.recorder.tape_samples import make_exchange


def primary_of(
    ex: Exchange,
    mirrored: list[str] = (),
    unrecorded: Collection[str] = (),
    taped: bool = True,  # type: ignore[assignment]
) -> PrimaryRecord:
    """``ex`` as the record stage hands it on when its primary ends: no shadows, timings 1/2/3."""
    r = ex.request
    return PrimaryRecord(
        ex.id, ex.started_at_ns, ex.started_mono_ns, r.method, r.target, r.headers, r.body, r.scheme, r.authority,
        r.http_version, r.truncated_from, ex.primary, Timing(1, 2, 3), ex.session, ex.connection_id, ex.client_addr,
        dict(ex.decisions), dict(ex.tags), list(mirrored), unrecorded, taped,
    )  # fmt: skip


TIMING = Timing(4, 5, 6)


def shadow(
    exchange_id: str,
    name: str,
    outcome: Response | Failure | None,
    timing: Timing = TIMING,
    early: bool = False,
    recorded: bool = True,
    delta: list[object] | None = None,
) -> ShadowRecord:
    return ShadowRecord(exchange_id, name, outcome, timing, early, recorded, delta)


def ok(body: bytes) -> Response:
    return Response(200, "OK", (), body)


def read(record: list[object]) -> Exchange:
    """As a reader would see it: packed and unpacked."""
    return exchange_from_wire(msgpack.unpackb(msgpack.packb(record, use_bin_type=True), use_list=False))


class Out:
    def __init__(self) -> None:
        self.joined: list[Joined] = []

    def __call__(self, entry: Joined) -> None:
        self.joined.append(entry)

    def ids(self) -> list[str]:
        return [entry.exchange_id for entry in self.joined]


def joiner(timeout_s: float = 10.0, max_pending: int = 100) -> tuple[RecordJoiner, Out]:
    out = Out()
    return RecordJoiner(JoinSettings(timeout_s, max_pending), out), out


def feed(
    j: RecordJoiner, record: PrimaryRecord | ShadowRecord | WiredPrimary | WiredShadow, now_s: float = 0.0
) -> None:
    size = record.size_bytes() if isinstance(record, PrimaryRecord | ShadowRecord) else 0
    if isinstance(record, PrimaryRecord | WiredPrimary):
        j.primary(record, now_s, size)
    else:
        j.shadow(record, size)


def test_shadows_join_before_or_after_their_primary() -> None:
    j, out = joiner()
    a, b = make_exchange(1), make_exchange(2)
    # a: v2 answers before the primary ends (early); b: after.
    feed(j, shadow(a.id, "v2", ok(b"a-v2"), Timing(5, 6, 7), early=True))
    assert out.joined == [] and j.pending == 1
    feed(j, primary_of(a, ["v2"]))
    feed(j, primary_of(b, ["v2", "v3"]))
    feed(j, shadow(b.id, "v3", Failure("reset", "peer reset"), Timing(1, None, 3)))
    feed(j, shadow(b.id, "v3", ok(b"again")))  # a duplicate
    feed(j, shadow(b.id, "v2", ok(b"b-v2")))
    assert out.ids() == [a.id, b.id] and j.pending == 0
    first, second = (read(e.tape_record()) for e in out.joined)
    assert first.shadows == {"v2": ok(b"a-v2")}
    assert first.timings == {"primary": Timing(1, 2, 3), "v2": Timing(5, 6, 7)}
    # Shadows in the order they answered.
    assert list(second.shadows) == ["v3", "v2"] and second.shadows["v3"] == Failure("reset", "peer reset")
    assert (j.stats.joined, j.stats.unjoined_shadow_outcomes, j.stats.shadow_join_timeouts) == (2, 1, 0)


def test_an_exchange_with_no_shadows_is_handed_on_at_once_and_taped_whole() -> None:
    j, out = joiner()
    ex = make_exchange(1)
    feed(j, primary_of(ex))
    assert out.ids() == [ex.id] and j.pending == 0
    expected = dataclasses.replace(ex, shadows={}, timings={"primary": Timing(1, 2, 3)})
    assert read(out.joined[0].tape_record()) == expected
    assert out.joined[0].exchange() == expected


def test_a_late_answer_is_unjoined_and_deadlines_hold() -> None:
    j, out = joiner(timeout_s=1.0)
    exchanges = [make_exchange(i) for i in range(5)]
    for i, ex in enumerate(exchanges):
        feed(j, primary_of(ex, ["v2"]), now_s=float(i))
    assert j.sweep(0.99) is False and out.joined == []
    # Deadlines at 1, 2, 3, 4 and 5 s; at most two handed on per sweep.
    assert j.sweep(3.5, limit=2) is True
    assert j.sweep(3.5, limit=2) is False
    assert out.ids() == [e.id for e in exchanges[:3]]
    missing = read(out.joined[0].tape_record())
    assert missing.shadows["v2"] == Failure(FailureKind.TIMEOUT, "no shadow outcome within the join timeout")
    assert set(missing.timings) == {"primary"}  # nothing is known of the copy's timing
    # The answer for an exchange already handed on: not early, so nothing waits for it.
    feed(j, shadow(exchanges[0].id, "v2", ok(b"late")))
    assert (j.stats.unjoined_shadow_outcomes, j.stats.shadow_join_timeouts, j.pending) == (1, 3, 2)
    # An answer that came in time stops its exchange's deadline from counting.
    feed(j, shadow(exchanges[3].id, "v2", ok(b"in time")))
    assert j.sweep(100.0) is False
    assert out.ids()[3:] == [exchanges[3].id, exchanges[4].id] and j.stats.shadow_join_timeouts == 4


def test_capacity_pushes_out_the_oldest() -> None:
    j, out = joiner(max_pending=2)
    early_only, waiting, newest, third = (make_exchange(i) for i in range(1, 5))
    feed(j, shadow(early_only.id, "v2", ok(b"x"), early=True))
    feed(j, primary_of(waiting, ["v2"]))
    feed(j, primary_of(newest, ["v2"]))
    # The oldest had no primary yet: nothing to hand on; its answer is counted as unjoined.
    assert out.joined == [] and j.stats.evicted_at_capacity == 1 and j.stats.unjoined_shadow_outcomes == 1
    feed(j, primary_of(third, ["v2"]))
    assert out.ids() == [waiting.id] and j.stats.evicted_at_capacity == 2
    assert read(out.joined[0].tape_record()).shadows == {
        "v2": Failure(FailureKind.TIMEOUT, "too many exchanges waiting for shadows")
    }
    j.close("shut down")
    assert out.ids() == [waiting.id, newest.id, third.id] and j.pending == 0
    assert read(out.joined[2].tape_record()).shadows == {"v2": Failure(FailureKind.TIMEOUT, "shut down")}


def test_waiting_exchanges_are_bounded_in_bytes() -> None:
    out = Out()
    j = RecordJoiner(JoinSettings(60.0, 100, max_pending_bytes=10_000), out)
    for i in range(5):
        j.primary(primary_of(make_exchange(i), ["v2"]), 0.0, 4_000)
    # Two fit; each newer one pushes out the oldest. The newest is never evicted for its own size.
    assert (j.pending, j.pending_bytes, j.stats.evicted_at_byte_capacity) == (2, 8_000, 3)
    j.primary(primary_of(make_exchange(9), ["v2"]), 0.0, 50_000)
    assert (j.pending, j.pending_bytes, j.stats.evicted_at_byte_capacity) == (1, 50_000, 5)


def test_close_counts_early_answers_whose_primary_never_came() -> None:
    j, out = joiner()
    feed(j, shadow("never", "v2", ok(b"x"), early=True))
    feed(j, shadow("never", "v3", ok(b"y"), early=True))
    j.close("shut down")
    assert out.joined == [] and j.stats.unjoined_shadow_outcomes == 2 and j.stats.joined == 0


def test_unrecorded_shadows_stay_off_the_tape_but_not_out_of_the_exchange() -> None:
    j, out = joiner()
    ex = make_exchange(1)
    # v2 off at the primary's end (it then never answers), v3 off when it answered (its outcome
    # is not even sent), v4 answered early while recorded.
    feed(j, shadow(ex.id, "v4", ok(b"v4"), Timing(7, 8, 9), early=True))
    feed(j, shadow(ex.id, "v3", None, early=True, recorded=False))
    feed(j, primary_of(ex, ["v2", "v3", "v4", "v5"], {"v2"}))
    feed(j, shadow(ex.id, "v5", ok(b"v5"), Timing(1, 1, 1)))
    j.close("shut down")
    (entry,) = out.joined
    full = entry.exchange()
    assert list(full.shadows) == ["v4", "v5", "v2"]  # v3's outcome was never sent
    assert full.shadows["v2"] == Failure(FailureKind.TIMEOUT, "shut down")
    taped = read(entry.tape_record())
    assert list(taped.shadows) == ["v4", "v5"] and set(taped.timings) == {"primary", "v4", "v5"}
    assert taped.tags["not_recorded"] == "v3,v2"
    assert taped.decisions == ex.decisions
    assert "not_recorded" not in entry.exchange().tags  # the tape view's tag is the tape's own


def test_request_deltas_are_taped_with_their_recorded_shadows() -> None:
    j, out = joiner()
    ex = make_exchange(1)
    v2 = RequestDelta(removed=(b"Cookie",), added=((b"X-Shadowtap-Shadow", b"1"),), authority=("front", "v2:80"))
    v3 = RequestDelta(added=((b"X-Shadowtap-Shadow", b"1"),))
    early = shadow(ex.id, "v2", ok(b""), early=True, delta=delta_to_wire(v2))
    feed(j, load_wired(unwired(early)))  # as the writer process reads it
    feed(j, primary_of(ex, ["v2", "v3", "v4"], {"v3"}))
    feed(j, shadow(ex.id, "v3", ok(b"v3"), delta=delta_to_wire(v3)))
    j.close("shut down")  # v4 never answers: no copy known, no delta
    (entry,) = out.joined
    assert read(entry.tape_record()).request_deltas == {"v2": v2}


def unwired(record: PrimaryRecord | ShadowRecord) -> object:
    """A record's ``wire()`` array as the writer process gets it: packed and unpacked."""
    return msgpack.unpackb(msgpack.packb(record.wire(), use_bin_type=True), raw=False, strict_map_key=False)


def test_the_writer_process_tapes_what_the_loop_tapes() -> None:
    """The loop joins typed records; the writer process joins what msgpack gives back of their
    ``wire()`` arrays (``load_wired``). Both tape the same exchange, for a response, a failure and
    neither, with a shadow that answered, one that failed, one not recorded and one never heard of."""
    request = Request("POST", "/a?b=1", ((b"Host", b"h"), (b"X", b"1"), (b"x", b"2")), b"body", "https", "h", "1.0", 9)
    for outcome in (Response(201, "Created", ((b"A", b"b"),), b"cut", "1.1", 100), Failure("reset", "gone"), None):
        ex = Exchange(
            id="id-1", started_at_ns=10, started_mono_ns=20, request=request, primary=outcome, session="s",
            connection_id="c", client_addr="a:1", decisions={"v2": "mirrored"}, tags={"source": "proxy"},
        )  # fmt: skip
        records = [
            shadow("id-1", "v2", ok(b"v2"), Timing(4, None, 6), early=True, delta=[[b"Cookie"], [], [], None, []]),
            primary_of(ex, ["v2", "v3", "v4", "v5"], ["v4"]),
            shadow("id-1", "v3", Failure("timeout", "slow")),
            shadow("id-1", "v4", ok(b"secret"), recorded=False),
        ]
        taped = []
        for wired in (False, True):
            j, out = joiner()
            for record in records:
                feed(j, load_wired(unwired(record)) if wired else record)
            j.close(SHUTDOWN_REASON)  # v5 never answers
            (entry,) = out.joined
            taped.append(read(entry.tape_record()))
        assert taped[0] == taped[1]
        assert set(taped[1].shadows) == {"v2", "v3", "v5"} and taped[1].tags["not_recorded"] == "v4"
    # Recording off: only the arrival travels.
    off = ShadowRecord("id-1", "v4", None, Timing(4, 5, 6), False, False, None)
    wired_off = load_wired(unwired(off))
    assert b"secret" not in msgpack.packb(off.wire()) and isinstance(wired_off, WiredShadow)
    assert wired_off.outcome is None
    with pytest.raises(ValueError):
        load_wired([9, "x"])


def test_http2_records_carry_trailers_and_grpc_messages_both_ways() -> None:
    """An HTTP/2 exchange's records carry the request's and the responses' trailers and gRPC
    message framing; the loop and the writer process tape the same, and HTTP/1 records stay as
    short as before."""
    messages = (StreamMessage(0, 3, 100), StreamMessage(1, 2, 200))
    request = Request(
        "POST", "/shop.Catalog/Chat", ((b"content-type", b"application/grpc"),), b"\0\0\0\0\3abc\1\0\0\0\2de",
        "http", "h:1", "2", None, ((b"x-end", b"1"),), messages,
    )  # fmt: skip
    grpc_ok = ((b"grpc-status", b"0"),)
    primary = Response(200, "", ((b"content-type", b"application/grpc"),), b"\0\0\0\0\1z", "2", None, grpc_ok,
                       (StreamMessage(0, 1, 300),))  # fmt: skip
    answer = Response(200, "", (), b"\0\0\0\0\1y", "2", None, ((b"grpc-status", b"5"),), (StreamMessage(0, 1, 400),))
    ex = Exchange(
        id="id-2", started_at_ns=10, started_mono_ns=20, request=request, primary=primary, session="",
        connection_id="c", client_addr="a:1", decisions={"v2": "mirrored"}, tags={"source": "proxy"},
    )  # fmt: skip
    record = primary_of(ex, ["v2"])
    record.request_trailers, record.request_messages = request.trailers, request.messages
    taped = []
    for wired in (False, True):
        j, out = joiner()
        for item in (record, shadow("id-2", "v2", answer)):
            feed(j, load_wired(unwired(item)) if wired else item)
        (entry,) = out.joined
        taped.append(read(entry.tape_record()))
    assert taped[0] == taped[1]
    got = taped[1]
    assert got.request.trailers == ((b"x-end", b"1"),) and got.request.messages == messages
    assert got.primary == primary and got.shadows["v2"] == answer
    # HTTP/1 records keep their length: the HTTP/2 fields are appended only when there.
    plain = primary_of(make_exchange(3))
    assert len(plain.wire()) == 30 and len(record.wire()) == 34
    assert len(shadow("x", "v2", ok(b"1")).wire()) == 17 and len(shadow("x", "v2", answer).wire()) == 19


def test_the_intake_pickles_with_its_settings_only() -> None:
    settings = JoinSettings(3.0, 7, 9_000)
    intake = JoinIntake(settings)
    intake.take(primary_of(make_exchange(1), ["v2"]), 100, 0.0)
    again = pickle.loads(pickle.dumps(intake))
    assert again.settings == settings and again.stats().held == 0 and intake.stats().held == 1


# --- hosted by the tape writers -------------------------------------------------------------------

JOIN = JoinSettings(timeout_s=60.0, max_pending=1_000)


async def wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def join_script(n: int) -> list[tuple[str, PrimaryRecord | ShadowRecord]]:
    """Records in the order a proxy would send them: early and late answers, a shadow whose
    recording is off, a failed shadow, and exchanges left waiting for a shadow that never answers
    (completed at close). Requests carry an Authorization header for the redaction to remove."""
    script: list[tuple[str, PrimaryRecord | ShadowRecord]] = []
    for i in range(n):
        ex = make_exchange(i, body=b"x" * (i % 50))
        ex = dataclasses.replace(
            ex,
            request=dataclasses.replace(
                ex.request, headers=(*ex.request.headers, (b"Authorization", b"Bearer secret"))
            ),
        )

        def v2(early: bool, ex: Exchange = ex, i: int = i) -> ShadowRecord:
            return shadow(ex.id, "v2", Response(200, "OK", ((b"Set-Cookie", b"s=1"),), b"v2 %d" % i), early=early)

        if i % 3 == 0:
            script.append(("extra", v2(True)))
        script.append(("entry", primary_of(ex, ["v2", "v3"], {"v3"} if i % 5 == 0 else ())))
        if i % 3 != 0:
            script.append(("extra", v2(False)))
        if i % 4 != 0:
            recorded = i % 5 != 0
            outcome = Failure("reset", "peer reset") if recorded else None
            script.append(("extra", shadow(ex.id, "v3", outcome, Timing(7, None, 9), recorded=recorded)))
    return script


def submit(
    writer: TapeWriter | ProcessTapeWriter, script: list[tuple[str, PrimaryRecord | ShadowRecord]]
) -> list[bool]:
    return [writer.submit_entry(item) if kind == "entry" else writer.submit_extra(item) for kind, item in script]


async def test_the_writers_join_exactly_as_the_loop_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same records joined on the loop (the event log's case), in the writer's thread and in its
    child process make the same tape, byte for byte."""
    rules = RedactionRules()
    monkeypatch.setenv(rules.key_env, "k" * 32)
    options = TapeOptions(fsync="none", compression="none")  # frames, not blocks: batching may differ
    async with TapeWriter(tmp_path / "loop", options) as loop_writer:
        local = JoinIntake(JOIN, lambda entry, taped: loop_writer.submit_record(entry.tape_record()))
        for _, item in join_script(120):
            local.take(item, item.size_bytes(), 0.0)
        local.close()
    async with TapeWriter(tmp_path / "thread", options, JoinIntake(JOIN)) as thread_writer:
        assert thread_writer.hosts_intake and all(submit(thread_writer, join_script(120)))
        await wait_for(lambda: thread_writer.stats.queue_depth == 0 and thread_writer.intake_stats.held == 30)
    async with ProcessTapeWriter(tmp_path / "child", options, JoinIntake(JOIN)) as writer:
        assert writer.hosts_intake and all(submit(writer, join_script(120)))
        await wait_for(lambda: writer.stats.queue_depth == 0 and writer.intake_stats.held == 30)
        assert writer.stats.written == 90  # a quarter wait for v3 until the pipe closes
    expected = dataclasses.asdict(local.joiner.stats)
    assert writer.intake_stats.counters == thread_writer.intake_stats.counters == expected
    assert (expected["joined"], expected["shadow_join_timeouts"]) == (120, 30)
    assert (writer.stats.written, writer.stats.queue_depth, writer.intake_stats.held) == (120, 0, 0)
    assert thread_writer.stats.written == 120
    (here,) = sorted((tmp_path / "loop").glob("*.stape"))
    (thread,) = sorted((tmp_path / "thread").glob("*.stape"))
    (child,) = sorted((tmp_path / "child").glob("*.stape"))
    assert child.read_bytes() == here.read_bytes() == thread.read_bytes()
    taped = {e.id: e for e in TapeReader(tmp_path / "child")}
    assert taped["ex-000004"].shadows["v3"] == Failure(FailureKind.TIMEOUT, SHUTDOWN_REASON)
    assert taped["ex-000000"].tags["not_recorded"] == "v3"  # off, and it never answered
    assert taped["ex-000005"].tags["not_recorded"] == "v3" and set(taped["ex-000005"].shadows) == {"v2"}
    assert all(b"secret" not in v for e in taped.values() for _, v in e.request.headers)


async def test_a_killed_child_counts_the_exchanges_its_join_held(tmp_path: Path) -> None:
    writer = ProcessTapeWriter(tmp_path, TapeOptions(redaction=None, fsync="none", queue_size=40), JoinIntake(JOIN))
    await writer.start()
    first = writer.pid
    assert first is not None
    assert all(submit(writer, join_script(8)))  # exchanges 0, 4: waiting for v3; the others written
    await wait_for(lambda: writer.stats.written == 6 and writer.intake_stats.held == 2)
    os.kill(first, signal.SIGSTOP)
    # The bound counts extras too; a refused extra is not a record, so no record counter moves.
    taken = [writer.submit_extra(shadow(f"x{i}", "v2", None, recorded=False)) for i in range(40)]
    assert taken == [True] * 40
    assert not writer.submit_extra(shadow("x40", "v2", None, recorded=False))
    assert not writer.submit_entry(primary_of(make_exchange(99)))
    assert (writer.stats.dropped_queue_full, writer.stats.queue_depth) == (1, 40)
    os.kill(first, signal.SIGKILL)
    os.kill(first, signal.SIGCONT)
    await wait_for(lambda: writer.pid not in (None, first))
    # The two exchanges it held were lost with it.
    assert (writer.stats.written, writer.stats.write_errors) == (6, 2)
    assert all(submit(writer, join_script(3)))
    await writer.close()
    stats = writer.stats
    assert (stats.written, stats.write_errors, stats.dropped_queue_full) == (9, 2, 1)
    # The first child's counters are kept: 6 joined; the new child 3 (one completed at close).
    counters = writer.intake_stats.counters
    assert (counters["joined"], counters["shadow_join_timeouts"]) == (9, 1)


async def test_the_childs_join_is_bounded_in_bytes(tmp_path: Path) -> None:
    bound = 128 * 1024
    intake = JoinIntake(JoinSettings(timeout_s=60.0, max_pending=1_000, max_pending_bytes=bound))
    async with ProcessTapeWriter(tmp_path, TapeOptions(redaction=None, fsync="none"), intake) as writer:
        # Each waits for a v2 that never answers, holding ~40 KiB: three fit, the rest push the
        # oldest out (written at once, v2 marked as a timeout).
        records = [primary_of(make_exchange(i, body=b"r" * 40_000), ["v2"]) for i in range(10)]
        assert all(writer.submit_entry(record) for record in records)
        await wait_for(lambda: writer.stats.written == 7)
        held = writer.intake_stats
        assert held.held == 3 and 3 * 40_000 < held.held_bytes <= bound
        assert (held.counters["evicted_at_byte_capacity"], held.counters["evicted_at_capacity"]) == (7, 0)
    assert writer.intake_stats.counters["shadow_join_timeouts"] == 10
    assert writer.intake_stats.held_bytes == 0
    taped = list(TapeReader(tmp_path))
    assert [e.id for e in taped] == [f"ex-{i:06d}" for i in range(10)]
    assert taped[0].shadows["v2"] == Failure(FailureKind.TIMEOUT, "too many exchanges waiting for shadows")


async def test_the_parent_keeps_no_megabyte_buffer_for_the_childs_reports(tmp_path: Path) -> None:
    """Found by bench/record_soak.py: msgpack's Unpacker takes a 1 MiB buffer by default and fills it
    front to back before wrapping, so the child's reports (~50 bytes every few milliseconds)
    touched a new page of it every ~80 reports: the proxy's RSS crept by ~0.5 byte per recorded
    request for its first couple of million. The buffer is small now, and the join drains to zero."""
    tracemalloc.start()
    try:
        async with ProcessTapeWriter(tmp_path, TapeOptions(redaction=None, fsync="none"), JoinIntake(JOIN)) as writer:
            assert all(submit(writer, join_script(60)))
            await wait_for(lambda: writer.stats.queue_depth == 0 and writer.intake_stats.held == 15)
            assert writer.intake_stats.held_bytes > 0
            snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*tape_process.py")])
    finally:
        tracemalloc.stop()
    held = sum(stat.size for stat in snapshot.statistics("filename"))
    assert held < 256 * 1024, held  # it was 1.1 MB: the unpacker alone is ~60 KB now
    assert (writer.intake_stats.held, writer.intake_stats.held_bytes, writer.stats.queue_bytes) == (0, 0, 0)
    assert writer.stats.written == 60
