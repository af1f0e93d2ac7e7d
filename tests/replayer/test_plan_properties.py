"""Properties of the plan over random tapes: order, sessions, counts and shards always hold."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from recorder import Exchange, Request
from replayer.plan import Filters, PlanOptions, Scaling, plan_requests

S = 1_000_000_000


@st.composite
def tapes(draw: st.DrawFn) -> list[Exchange]:
    gaps_ms = draw(st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=60))
    at_ms = 0
    out = []
    for i, gap in enumerate(gaps_ms):
        at_ms += gap
        out.append(
            Exchange(
                id=f"e{i}",
                started_at_ns=1_700_000_000 * S + at_ms * 1_000_000,
                request=Request(draw(st.sampled_from(["GET", "GET", "POST", "HEAD"])), f"/p/{i % 4}"),
                session=draw(st.sampled_from(["", "a", "b", "c"])),
            )
        )
    return out


scalings = st.builds(
    Scaling,
    speed=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    clones=st.integers(min_value=1, max_value=3),
    clone_offset_s=st.sampled_from([0.0, 0.01, 0.3]),
)


@settings(max_examples=80, deadline=None)
@given(tape=tapes(), scaling=scalings, allow_writes=st.booleans())
def test_plan_order_sessions_and_counts(tape: list[Exchange], scaling: Scaling, allow_writes: bool) -> None:
    options = PlanOptions(scaling=scaling, filters=Filters(allow_writes=allow_writes))
    out = list(plan_requests(lambda: tape, options))
    kept = [e for e in tape if allow_writes or e.request.method != "POST"]
    assert len(out) == len(kept) * scaling.clones
    slots = [p.slot_ns for p in out]
    assert slots == sorted(slots) and all(s >= 0 for s in slots)
    by_session: dict[str, list[int]] = defaultdict(list)
    for p in out:
        assert p.gap_ns >= 0
        by_session[p.session].append(p.seq)
        assert p.source.request.method == p.method
    for seqs in by_session.values():
        assert seqs == list(range(len(seqs)))  # order kept, nothing lost inside a session
    assert len({p.replay_id for p in out}) == len(out)


@settings(max_examples=60, deadline=None)
@given(tape=tapes(), scaling=scalings, workers=st.integers(min_value=1, max_value=4))
def test_shards_are_a_partition_with_the_same_slots(tape: list[Exchange], scaling: Scaling, workers: int) -> None:
    whole = sorted((p.replay_id, p.slot_ns) for p in plan_requests(lambda: tape, PlanOptions(scaling=scaling)))
    parts: list[tuple[str, int]] = []
    for index in range(workers):
        shard = PlanOptions(scaling=scaling, shard=(index, workers))
        parts.extend((p.replay_id, p.slot_ns) for p in plan_requests(lambda: tape, shard))
    assert sorted(parts) == whole
