"""The replay plan: sessions, filters, rewrites, scaling and sharding, over in-memory Exchanges."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest

from shadowtap.differ.templates import EndpointTemplater
from shadowtap.recorder import ConfigError, Exchange, Request
from shadowtap.replayer.plan import (
    Filters,
    PlannedRequest,
    PlanOptions,
    PlanStats,
    Rewrites,
    Scaling,
    SessionKey,
    merge_by_time,
    plan_requests,
)

S = 1_000_000_000
MS = 1_000_000


def ex(
    i: int,
    at_ms: int,
    *,
    method: str = "GET",
    target: str = "/",
    session: str = "",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    body: bytes = b"",
) -> Exchange:
    return Exchange(
        id=f"ex{i}",
        started_at_ns=1_700_000_000 * S + at_ms * MS,
        request=Request(method, target, headers, body),
        session=session,
    )


def plan(exchanges: Iterable[Exchange], stats: PlanStats | None = None, **kw: object) -> list[PlannedRequest]:
    items = list(exchanges)
    return list(plan_requests(lambda: items, PlanOptions(**kw), stats, environ={"TOKEN": "fresh"}))  # type: ignore[arg-type]


def test_slots_follow_recorded_time_scaled_by_speed_and_sessions_keep_order_and_gaps() -> None:
    tape = [ex(0, 0, session="a"), ex(1, 100, session="b"), ex(2, 300, session="a"), ex(3, 400, session="b")]
    out = plan(tape, scaling=Scaling(speed=2.0))
    assert [p.slot_ns for p in out] == [0, 50 * MS, 150 * MS, 200 * MS]
    assert [(p.session, p.seq) for p in out] == [("auto=a", 0), ("auto=b", 0), ("auto=a", 1), ("auto=b", 1)]
    assert [p.gap_ns for p in out] == [0, 0, 150 * MS, 150 * MS]


def test_session_keys_from_header_cookie_query_and_fallback_to_exchange() -> None:
    e = ex(0, 0, target="/x?user=u7", headers=((b"X-Sid", b"s1"), (b"Cookie", b"a=1; sid=c9")), session="rec")
    assert SessionKey.parse("header:x-sid").of(e) == "header=s1"
    assert SessionKey.parse("cookie:sid").of(e) == "cookie=c9"
    assert SessionKey.parse("query:user").of(e) == "query=u7"
    assert SessionKey.parse("recorded").of(e) == "recorded=rec"
    assert SessionKey.parse("connection").of(e) == "exchange=ex0"
    assert SessionKey.parse("none").of(e) == "exchange=ex0"
    with pytest.raises(ConfigError, match="session-key"):
        SessionKey.parse("header")
    with pytest.raises(ConfigError, match="session-key"):
        SessionKey.parse("planet:x")


def test_merge_by_time_interleaves_tapes() -> None:
    a = [ex(0, 0), ex(2, 20)]
    b = [ex(1, 10), ex(3, 30)]
    assert [e.id for e in merge_by_time([a, b])] == ["ex0", "ex1", "ex2", "ex3"]


def test_writes_are_skipped_by_default_and_counted() -> None:
    tape = [ex(0, 0), ex(1, 1, method="POST"), ex(2, 2, method="DELETE"), ex(3, 3, method="HEAD")]
    stats = PlanStats()
    assert [p.method for p in plan(tape, stats)] == ["GET", "HEAD"]
    assert stats.skipped_unsafe_method == 2
    allowed = plan(tape, filters=Filters(allow_writes=True))
    assert [p.method for p in allowed] == ["GET", "POST", "DELETE", "HEAD"]


def test_filters_method_path_endpoint_and_window() -> None:
    tape = [
        ex(0, 0, target="/users/1"),
        ex(1, 1000, target="/users/2", method="HEAD"),
        ex(2, 2000, target="/orders/3"),
        ex(3, 3000, target="/users/4"),
    ]
    assert [p.source.id for p in plan(tape, filters=Filters(methods=frozenset({"get"})))] == ["ex0", "ex2", "ex3"]
    assert [p.source.id for p in plan(tape, filters=Filters(path_regex=r"^/orders"))] == ["ex2"]
    assert [p.source.id for p in plan(tape, filters=Filters(endpoints=("GET /users/{id}",)))] == ["ex0", "ex3"]
    windowed = plan(tape, filters=Filters(since_s=1.0, until_s=3.0))
    assert [p.source.id for p in windowed] == ["ex1", "ex2"]
    assert windowed[0].slot_ns == 0  # the window starts the schedule, nobody waits for the skipped second


def test_sample_percent_keeps_whole_sessions() -> None:
    tape = [ex(i, i, session=f"s{i % 200}") for i in range(2000)]
    out = plan(tape, filters=Filters(sample_percent=50.0))
    sessions = {p.session for p in out}
    assert 60 < len(sessions) < 140
    assert len(out) == 10 * len(sessions)  # every kept session kept all ten of its requests


def test_rewrites_path_headers_host_and_env_and_hop_by_hop() -> None:
    e = ex(
        0,
        0,
        target="/v1/users/1?q=1",
        headers=(
            (b"Host", b"prod.example"),
            (b"Authorization", b"hmac:redacted"),
            (b"Connection", b"keep-alive"),
            (b"Expect", b"100-continue"),
            (b"X-Debug", b"1"),
            (b"Accept", b"*/*"),
        ),
    )
    rewrites = Rewrites(
        host="staging.local",
        set_headers=(("Authorization", "Bearer ${TOKEN}"),),
        remove_headers=("x-debug",),
        path_subs=((r"^/v1/", "/v2/"),),
    )
    (out,) = plan([e], rewrites=rewrites)
    assert out.target == "/v2/users/1?q=1"
    assert out.headers == ((b"Host", b"staging.local"), (b"Accept", b"*/*"), (b"Authorization", b"Bearer fresh"))


def test_bad_rewrite_and_missing_env_are_config_errors_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="rewrite-path") as info:
        Rewrites(path_subs=(("([", "x"),))
    assert "does not compile" in str(info.value)
    with pytest.raises(ConfigError, match="NOPE"):
        plan([ex(0, 0)], rewrites=Rewrites(set_headers=(("Authorization", "Bearer ${NOPE}"),)))
    with pytest.raises(ConfigError, match="clone-id"):
        Rewrites(clone_id_fields=("body:x",))


@pytest.mark.parametrize(
    ("value", "at"),
    [
        ("t0k3n\r\nX-Injected: 1", 5),  # it went out as a second header
        ("t\u00f6k\u65e5", 3),  # it ended in a UnicodeEncodeError traceback
        ("t\x00k", 1),
    ],
)
@pytest.mark.parametrize("where", ["header", "host"])
def test_values_from_the_environment_are_checked_like_flag_text(value: str, at: int, where: str) -> None:
    rewrites = (
        Rewrites(set_headers=(("Authorization", "Bearer ${TOKEN}"),))
        if where == "header"
        else Rewrites(host="${TOKEN}.staging")
    )
    with pytest.raises(ConfigError) as info:
        list(plan_requests(lambda: [ex(0, 0)], PlanOptions(rewrites=rewrites), environ={"TOKEN": value}))
    message = str(info.value)
    assert ("field 'header Authorization'" if where == "header" else "field 'host'") in message
    assert f"environment variable TOKEN holds a control character or a character beyond Latin-1 (at {at} " in message
    assert value not in message  # the value is a secret: named, never shown


def test_clones_get_distinct_ids_sessions_and_offset_slots() -> None:
    body = json.dumps({"user": {"id": 42}, "n": 1}).encode()
    e = ex(
        0,
        0,
        method="POST",
        target="/cart?uid=u1&x=y",
        headers=((b"X-User", b"u1"), (b"Cookie", b"sid=abc; theme=dark")),
        body=body,
        session="s",
    )
    rewrites = Rewrites(clone_id_fields=("header:x-user", "query:uid", "json:user.id", "cookie:sid"))
    out = plan(
        [e, ex(1, 100, session="s")],
        rewrites=rewrites,
        filters=Filters(allow_writes=True),
        scaling=Scaling(clones=3, clone_offset_s=0.03),
    )
    assert [(p.clone, p.slot_ns // MS) for p in out] == [(0, 0), (1, 30), (2, 60), (0, 100), (1, 130), (2, 160)]
    posts = [p for p in out if p.method == "POST"]
    assert len({p.session for p in out}) == 3
    assert [p.target for p in posts] == ["/cart?uid=u1&x=y", "/cart?uid=u1-1&x=y", "/cart?uid=u1-2&x=y"]
    assert [dict(p.headers)[b"X-User"] for p in posts] == [b"u1", b"u1-1", b"u1-2"]
    assert [dict(p.headers)[b"Cookie"] for p in posts] == [
        b"sid=abc; theme=dark",
        b"sid=abc-1; theme=dark",
        b"sid=abc-2; theme=dark",
    ]
    assert [json.loads(p.body)["user"]["id"] for p in posts] == [42, "42-1", "42-2"]
    assert len({p.replay_id for p in out}) == 6


def test_fixed_rate_keeps_recorded_order_and_mix() -> None:
    tape = [ex(i, i * 1000, target=f"/p{i % 3}") for i in range(10)]
    out = plan(tape, scaling=Scaling(rate_per_s=100.0, clones=2))
    assert [p.slot_ns for p in out] == [i * 10 * MS for i in range(20)]
    assert [p.source.id for p in out[::2]] == [f"ex{i}" for i in range(10)]


def test_speed_zero_sends_everything_at_once_with_no_gaps() -> None:
    out = plan([ex(0, 0, session="a"), ex(1, 5000, session="a")], scaling=Scaling(speed=0.0))
    assert [(p.slot_ns, p.gap_ns, p.seq) for p in out] == [(0, 0, 0), (0, 0, 1)]


def test_max_gap_caps_idle_gaps_after_speed_and_keeps_session_order() -> None:
    # Two recordings ten seconds apart (a day, in real life): at speed 2 the replay idled 5 s.
    tape = [ex(0, 0, session="a"), ex(1, 100, session="b"), ex(2, 10_100, session="a"), ex(3, 10_200, session="b")]
    out = plan(tape, scaling=Scaling(speed=2.0, max_gap_s=1.0))
    assert [p.slot_ns for p in out] == [0, 50 * MS, 1050 * MS, 1100 * MS]
    # The think time inside a session is capped too (else the session would still wait 5 s).
    assert [p.gap_ns for p in out] == [0, 0, 1 * S, 1 * S]
    assert [(p.session, p.seq) for p in out] == [("auto=a", 0), ("auto=b", 0), ("auto=a", 1), ("auto=b", 1)]
    # Gaps at or under the cap keep their recorded length; without a cap nothing changes.
    recorded = [0, 50 * MS, 5050 * MS, 5100 * MS]
    assert [p.slot_ns for p in plan(tape, scaling=Scaling(speed=2.0, max_gap_s=5.0))] == recorded
    assert [p.slot_ns for p in plan(tape, scaling=Scaling(speed=2.0))] == recorded


@pytest.mark.parametrize(
    ("scaling", "reason"),
    [
        ({"max_gap_s": 0.0}, "must be > 0"),
        ({"max_gap_s": -1.0}, "must be > 0"),
        ({"max_gap_s": 1.0, "rate_per_s": 10.0}, "--rate has no recorded gaps"),
        ({"max_gap_s": 1.0, "speed": 0.0}, "--speed 0 has no recorded gaps"),
    ],
)
def test_max_gap_is_refused_where_it_means_nothing(scaling: dict[str, float], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        Scaling(**scaling)  # type: ignore[arg-type]
    assert info.value.field == "max-gap"


def test_the_preview_gives_the_span_and_the_longest_idle_gap() -> None:
    from shadowtap.replayer.plan import preview_schedule

    tape = [ex(0, 0), ex(1, 100), ex(2, 10_100), ex(3, 10_200), ex(4, 10_300)]
    preview = preview_schedule(lambda: tape, PlanOptions(scaling=Scaling(speed=2.0)))
    assert (preview.requests, preview.span_ns) == (5, 5150 * MS)
    assert (preview.longest_gap_ns, preview.longest_gap_at_ns) == (5000 * MS, 50 * MS)
    capped = preview_schedule(lambda: tape, PlanOptions(scaling=Scaling(speed=2.0, max_gap_s=1.0)))
    assert (capped.span_ns, capped.longest_gap_ns) == (1150 * MS, 1000 * MS)
    # The whole plan, whatever the shard, and one pass of a loop.
    looped = PlanOptions(scaling=Scaling(speed=2.0, duration_s=60.0, loop=True), shard=(1, 2))
    assert preview_schedule(lambda: tape, looped).requests == 5
    empty = preview_schedule(list, PlanOptions())
    assert (empty.requests, empty.span_ns, empty.longest_gap_ns) == (0, 0, 0)


def test_loop_until_duration_repeats_with_fresh_sessions_and_no_overlap() -> None:
    tape = [ex(0, 0, session="a"), ex(1, 100, session="a"), ex(2, 200, session="b")]
    stats = PlanStats()
    out = plan(tape, stats, scaling=Scaling(duration_s=1.0, loop=True))
    slots = [p.slot_ns for p in out]
    assert slots == sorted(slots) and slots[-1] < 1 * S
    assert len(out) == 3 + 3 + 3 + 1  # passes start every 300 ms; of the 4th only the 900 ms request fits
    assert stats.iterations == 4
    assert out[3].session == "auto=a#c0i1" and out[3].iteration == 1
    with pytest.raises(ConfigError, match="loop"):
        Scaling(loop=True)


def test_ramp_stretches_the_start_and_keeps_the_full_rate_after() -> None:
    tape = [ex(i, i * 100) for i in range(30)]
    out = plan(tape, scaling=Scaling(ramp_s=1.0))
    gaps = [b.slot_ns - a.slot_ns for a, b in zip(out, out[1:], strict=False)]
    assert gaps[0] > gaps[3] > 100 * MS
    assert all(abs(g - 100 * MS) < MS for g in gaps[10:])


def test_shards_partition_the_plan() -> None:
    tape = [ex(i, i, session=f"s{i % 17}") for i in range(300)]
    scaling = Scaling(clones=2, clone_offset_s=0.001)
    whole = {(p.replay_id, p.slot_ns) for p in plan(tape, scaling=scaling)}
    parts = [{(p.replay_id, p.slot_ns) for p in plan(tape, scaling=scaling, shard=(i, 3))} for i in range(3)]
    assert set().union(*parts) == whole
    assert sum(len(p) for p in parts) == len(whole) == 600
    assert all(parts)


LETTERS = "abcdefghij"


def test_endpoints_are_learned_templates_shared_with_the_caller() -> None:
    tape = [ex(2 * i, 2 * i, target=f"/users/{i}/orders/9f1c2e4d-1111-2222-3333-44445555{i:04d}") for i in range(3)]
    tape += [
        ex(2 * i + 1, 2 * i + 1, target=f"/pages/page-{LETTERS[i % 10]}{LETTERS[i // 10 % 10]}{LETTERS[i // 100]}")
        for i in range(300)
    ]
    tape.sort(key=lambda e: e.started_at_ns)
    templater = EndpointTemplater()
    endpoints = [p.endpoint for p in plan_requests(lambda: tape, PlanOptions(), templater=templater)]
    assert endpoints[0] == "GET /users/{id}/orders/{id}"
    # The first sparse pages are planned under their own path; once the position folds, as {id},
    # and the earlier ones retemplate to it.
    assert endpoints[1] == "GET /pages/page-aaa" and endpoints[-1] == "GET /pages/{id}"
    assert {templater.retemplate(e) for e in endpoints} == {"GET /users/{id}/orders/{id}", "GET /pages/{id}"}


def test_the_plan_remembers_a_bounded_number_of_sessions() -> None:
    tape = [ex(i, i, session=f"s{i % 6}") for i in range(24)]
    stats = PlanStats()
    planned = list(plan_requests(lambda: tape, PlanOptions(), stats, max_sessions=4))
    # Six sessions in turn through room for four: each is forgotten before it comes back.
    assert [p.seq for p in planned] == [0] * 24
    assert stats.sessions_forgotten == 20
    stats = PlanStats()
    three = [ex(i, i, session=f"s{i % 3}") for i in range(9)]
    planned = list(plan_requests(lambda: three, PlanOptions(), stats, max_sessions=4))
    assert [p.seq for p in planned] == [0, 0, 0, 1, 1, 1, 2, 2, 2] and stats.sessions_forgotten == 0


def test_scaling_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="speed"):
        Scaling(speed=-1)
    with pytest.raises(ConfigError, match="clones"):
        Scaling(clones=0)
    with pytest.raises(ConfigError, match="sample-percent"):
        Filters(sample_percent=101)


def test_gap_is_think_time_after_the_recorded_response() -> None:
    from shadowtap.recorder import PRIMARY, Timing

    recorded = ex(0, 0, session="a")
    first = Exchange(
        recorded.id, recorded.started_at_ns, recorded.request, session="a", timings={PRIMARY: Timing(0, 0, 80 * MS)}
    )
    out = plan([first, ex(1, 100, session="a")])
    assert out[1].gap_ns == 20 * MS and out[1].slot_ns == 100 * MS
