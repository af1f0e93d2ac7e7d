"""RecordJoiner: exchange records joined with their shadows' outcomes, in wire form."""

from __future__ import annotations

from typing import Any

import msgpack

from shadowtap.recorder.join import (
    Joined,
    JoinSettings,
    RecordJoiner,
    primary_from_part,
    primary_part,
    shadow_from_part,
    shadow_part,
)
from shadowtap.recorder.model import (
    Exchange,
    Failure,
    FailureKind,
    Request,
    RequestDelta,
    Response,
    Timing,
    delta_to_wire,
    exchange_from_wire,
    exchange_to_wire,
)
from tests.recorder.tape_samples import make_exchange


def base_record(i: int) -> list[Any]:
    """An exchange record as the proxy sends it when the primary ends: no shadows yet."""
    record = exchange_to_wire(make_exchange(i))
    record[5], record[6] = {}, {"primary": [1, 2, 3]}
    return record


def ok(body: bytes) -> list[Any]:
    return [0, 200, "OK", [], body, "1.1", None]


def read(record: list[Any]) -> Exchange:
    """As a reader would see it: packed and unpacked."""
    return exchange_from_wire(msgpack.unpackb(msgpack.packb(record, use_bin_type=True), use_list=False))


class Out:
    def __init__(self) -> None:
        self.joined: list[Joined] = []

    def __call__(self, entry: Joined) -> None:
        self.joined.append(entry)

    def ids(self) -> list[str]:
        return [entry.record[0] for entry in self.joined]  # type: ignore[index]


def joiner(timeout_s: float = 10.0, max_pending: int = 100) -> tuple[RecordJoiner, Out]:
    out = Out()
    return RecordJoiner(JoinSettings(timeout_s, max_pending), out), out


def test_shadows_join_before_or_after_their_primary() -> None:
    j, out = joiner()
    a, b = base_record(1), base_record(2)
    # a: v2 answers before the primary ends (early); b: after.
    j.shadow(a[0], "v2", ok(b"a-v2"), [5, 6, 7], early=True)
    assert out.joined == [] and j.pending == 1
    j.primary(a, ["v2"], (), "ctx-a", now_s=0.0)
    j.primary(b, ["v2", "v3"], (), "ctx-b", now_s=0.0)
    j.shadow(b[0], "v3", [1, "reset", "peer reset"], [1, None, 3], early=False)
    j.shadow(b[0], "v3", ok(b"again"), [1, 2, 3], early=False)  # a duplicate
    j.shadow(b[0], "v2", ok(b"b-v2"), [4, 5, 6], early=False)
    assert out.ids() == [a[0], b[0]] and [e.context for e in out.joined] == ["ctx-a", "ctx-b"]
    assert j.pending == 0
    first, second = (read(e.tape_record()) for e in out.joined)
    assert first.shadows == {"v2": Response(200, "OK", (), b"a-v2")}
    assert first.timings == {"primary": Timing(1, 2, 3), "v2": Timing(5, 6, 7)}
    # Shadows in the order they answered.
    assert list(second.shadows) == ["v3", "v2"] and second.shadows["v3"] == Failure("reset", "peer reset")
    assert (j.stats.joined, j.stats.unjoined_shadow_outcomes, j.stats.shadow_join_timeouts) == (2, 1, 0)


def test_an_exchange_with_no_shadows_is_handed_on_at_once() -> None:
    j, out = joiner()
    record = base_record(1)
    j.primary(record, [], (), None, now_s=0.0)
    assert out.ids() == [record[0]] and j.pending == 0
    assert read(out.joined[0].tape_record()) == read(base_record(1))


def test_a_late_answer_is_unjoined_and_deadlines_hold() -> None:
    j, out = joiner(timeout_s=1.0)
    records = [base_record(i) for i in range(5)]
    for i, record in enumerate(records):
        j.primary(record, ["v2"], (), None, now_s=float(i))
    assert j.sweep(0.99) is False and out.joined == []
    # Deadlines at 1, 2, 3, 4 and 5 s; at most two handed on per sweep.
    assert j.sweep(3.5, limit=2) is True
    assert j.sweep(3.5, limit=2) is False
    assert out.ids() == [r[0] for r in records[:3]]
    missing = read(out.joined[0].tape_record()).shadows["v2"]
    assert missing == Failure(FailureKind.TIMEOUT, "no shadow outcome within the join timeout")
    # The answer for an exchange already handed on: not early, so nothing waits for it.
    j.shadow(records[0][0], "v2", ok(b"late"), [1, 2, 3], early=False)
    assert (j.stats.unjoined_shadow_outcomes, j.stats.shadow_join_timeouts, j.pending) == (1, 3, 2)
    # An answer that came in time stops its exchange's deadline from counting.
    j.shadow(records[3][0], "v2", ok(b"in time"), [1, 2, 3], early=False)
    assert j.sweep(100.0) is False
    assert out.ids()[3:] == [records[3][0], records[4][0]] and j.stats.shadow_join_timeouts == 4


def test_capacity_pushes_out_the_oldest() -> None:
    j, out = joiner(max_pending=2)
    early_only, waiting, newest = base_record(1), base_record(2), base_record(3)
    j.shadow(early_only[0], "v2", ok(b"x"), [1, 2, 3], early=True)
    j.primary(waiting, ["v2"], (), None, now_s=0.0)
    j.primary(newest, ["v2"], (), None, now_s=0.0)
    # The oldest had no primary yet: nothing to hand on; its answer is counted as unjoined.
    assert out.joined == [] and j.stats.evicted_at_capacity == 1 and j.stats.unjoined_shadow_outcomes == 1
    third = base_record(4)
    j.primary(third, ["v2"], (), None, now_s=0.0)
    assert out.ids() == [waiting[0]] and j.stats.evicted_at_capacity == 2
    assert read(out.joined[0].tape_record()).shadows == {
        "v2": Failure(FailureKind.TIMEOUT, "too many exchanges waiting for shadows")
    }
    j.close("shut down")
    assert out.ids() == [waiting[0], newest[0], third[0]] and j.pending == 0
    assert read(out.joined[2].tape_record()).shadows == {"v2": Failure(FailureKind.TIMEOUT, "shut down")}


def test_close_counts_early_answers_whose_primary_never_came() -> None:
    j, out = joiner()
    j.shadow("never", "v2", ok(b"x"), [1, 2, 3], early=True)
    j.shadow("never", "v3", ok(b"y"), [1, 2, 3], early=True)
    j.close("shut down")
    assert out.joined == [] and j.stats.unjoined_shadow_outcomes == 2 and j.stats.joined == 0


def test_unrecorded_shadows_stay_off_the_tape_but_not_out_of_the_full_record() -> None:
    j, out = joiner()
    record = base_record(1)
    # v2 off at the primary's end (it then never answers), v3 off when it answered (its outcome
    # is not even sent), v4 answered early while recorded.
    j.shadow(record[0], "v4", ok(b"v4"), [7, 8, 9], early=True)
    j.shadow(record[0], "v3", None, [4, 5, 6], early=True, recorded=False)
    j.primary(record, ["v2", "v3", "v4", "v5"], {"v2"}, None, now_s=0.0)
    j.shadow(record[0], "v5", ok(b"v5"), [1, 1, 1], early=False)
    j.close("shut down")
    (entry,) = out.joined
    full = read(entry.full_record())
    assert list(full.shadows) == ["v4", "v5", "v2"]  # v3's outcome was never sent
    assert full.shadows["v2"] == Failure(FailureKind.TIMEOUT, "shut down")
    taped = read(entry.tape_record())
    assert list(taped.shadows) == ["v4", "v5"] and set(taped.timings) == {"primary", "v4", "v5"}
    assert taped.tags["not_recorded"] == "v3,v2"
    assert taped.decisions == read(base_record(1)).decisions


def test_a_primary_part_gives_the_record_of_its_exchange() -> None:
    """The flat part the proxy sends holds the whole exchange: the record built from it is the
    record of the same exchange with no shadows, for a response, a failure and neither."""
    request = Request("POST", "/a?b=1", ((b"Host", b"h"), (b"X", b"1"), (b"x", b"2")), b"body", "https", "h", "1.0", 9)
    for primary in (Response(201, "Created", ((b"A", b"b"),), b"cut", "1.1", 100), Failure("reset", "gone"), None):
        ex = Exchange(
            id="id-1",
            started_at_ns=10,
            started_mono_ns=20,
            request=request,
            primary=primary,
            timings={"primary": Timing(1, None, 3)},
            session="s",
            connection_id="c",
            client_addr="a:1",
            decisions={"v2": "mirrored", "v3": "sampled-out"},
            tags={"source": "proxy"},
        )
        response = primary if isinstance(primary, Response) else None
        part = primary_part(
            ex.id, 10, 20, "POST", "/a?b=1", request.headers, b"body", "https", "h", "1.0", 9,
            None if response is None else response.status, "" if response is None else response.reason,
            () if response is None else response.headers, b"" if response is None else response.body,
            "" if response is None else response.http_version, None if response is None else response.truncated_from,
            primary if isinstance(primary, Failure) else None, 1, None, 3, "s", "c", "a:1", dict(ex.decisions),
            dict(ex.tags), ["v2"], {"v9"},
        )  # fmt: skip
        record, mirrored, unrecorded = primary_from_part(read_part(part))
        assert read(record) == ex
        assert (mirrored, list(unrecorded)) == (["v2"], ["v9"])


def test_a_shadow_part_gives_the_joiner_its_outcome_and_timing() -> None:
    response = shadow_part("id-1", "v2", 200, "OK", ((b"A", b"b"),), b"x", "1.1", 50, None, 4, 5, 6, True, True)
    expected = read_part(exchange_to_wire(_with_primary(Response(200, "OK", ((b"A", b"b"),), b"x", "1.1", 50))))[4]
    assert shadow_from_part(read_part(response)) == ("id-1", "v2", expected, [4, 5, 6], True, True, None)
    failure = shadow_part("id-1", "v3", None, "", (), b"", "", None, Failure("timeout", "2s"), 4, None, 6, False, True)
    assert shadow_from_part(read_part(failure))[2:4] == ([1, "timeout", "2s"], [4, None, 6])
    unrecorded = shadow_part("id-1", "v4", 200, "OK", (), b"secret", "1.1", None, None, 4, 5, 6, False, False)
    assert b"secret" not in msgpack.packb(unrecorded, use_bin_type=True)
    assert shadow_from_part(read_part(unrecorded))[2:] == (None, [4, 5, 6], False, False, None)


def read_part(part: list[Any]) -> list[Any]:
    """As the child gets it: packed and unpacked."""
    unpacked: list[Any] = msgpack.unpackb(msgpack.packb(part, use_bin_type=True), use_list=True)
    return unpacked


def _with_primary(primary: Response) -> Exchange:
    return Exchange(id="i", started_at_ns=0, request=Request("GET", "/"), primary=primary)


def test_request_deltas_are_taped_with_their_recorded_shadows() -> None:
    """Each copy's request delta travels with its outcome, early or late, through a flat part, and
    is taped only for the shadows whose outcome is taped."""
    j, out = joiner()
    record = base_record(1)
    v2 = RequestDelta(removed=(b"Cookie",), added=((b"X-Shadowtap-Shadow", b"1"),), authority=("front", "v2:80"))
    v3 = RequestDelta(added=((b"X-Shadowtap-Shadow", b"1"),))
    early = shadow_part(record[0], "v2", 200, "OK", (), b"", "1.1", None, None, 1, 2, 3, True, True, delta_to_wire(v2))
    j.shadow(*shadow_from_part(read_part(early)))
    j.primary(record, ["v2", "v3", "v4"], (), None, now_s=0.0)
    j.shadow(record[0], "v3", None, [4, 5, 6], early=False, recorded=False, delta=delta_to_wire(v3))
    j.close("shut down")  # v4 never answers: no copy known, no delta
    (entry,) = out.joined
    assert read(entry.full_record()).request_deltas == {"v2": v2, "v3": v3}
    assert read(entry.tape_record()).request_deltas == {"v2": v2}
    alone, out_alone = joiner()
    alone.primary(base_record(2), ["v4"], (), None, now_s=0.0)
    alone.close("shut down")
    assert read(out_alone.joined[0].tape_record()).request_deltas == {}
