"""Properties of the plan over random tapes: order, sessions, counts and shards always hold."""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from shadowtap.recorder import Exchange, Request
from shadowtap.replayer.plan import Filters, PlanOptions, Scaling, plan_requests

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


@settings(max_examples=80, deadline=None)
@given(
    tape=tapes(),
    speed=st.sampled_from([0.5, 1.0, 3.0]),
    max_gap_ms=st.integers(min_value=1, max_value=400),
)
def test_max_gap_only_ever_shortens_gaps_to_the_cap(tape: list[Exchange], speed: float, max_gap_ms: int) -> None:
    options = PlanOptions(scaling=Scaling(speed=speed), filters=Filters(allow_writes=True))
    capped_options = PlanOptions(scaling=Scaling(speed=speed, max_gap_s=max_gap_ms / 1000), filters=options.filters)
    plain = list(plan_requests(lambda: tape, options))
    capped = list(plan_requests(lambda: tape, capped_options))
    assert [(p.replay_id, p.session, p.seq) for p in capped] == [(p.replay_id, p.session, p.seq) for p in plain]
    cap_ns = max_gap_ms * 1_000_000
    for (a, b), (pa, pb) in zip(pairwise(capped), pairwise(plain), strict=True):
        assert b.slot_ns - a.slot_ns == min(pb.slot_ns - pa.slot_ns, cap_ns)
    assert all(c.gap_ns == min(p.gap_ns, cap_ns) for c, p in zip(capped, plain, strict=True))
