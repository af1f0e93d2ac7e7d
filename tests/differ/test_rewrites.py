"""Answers that echo what the proxy changed in a shadow's request: explained exactly, nothing more."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shadowtap.differ import (
    CompareOptions,
    DiffEngine,
    DiffSession,
    DiffStore,
    RunMeta,
    build_report,
    config_from_mapping,
)
from shadowtap.differ.compare import Difference
from shadowtap.recorder.model import Exchange, Request, RequestDelta, Response

PRIMARY_HOST = "front.example:8080"
SHADOW_HOST = "v2.internal:9001"
REQUEST = Request(
    "GET",
    "/anything?q=1&token=redacted:hmac:00aa11bb22cc33dd",
    (
        (b"Host", PRIMARY_HOST.encode()),
        (b"Authorization", b"Bearer redacted:hmac:0123456789abcdef"),
        (b"Cookie", b"sid=redacted:hmac:aaaaaaaaaaaaaaaa; theme=redacted:hmac:bbbbbbbbbbbbbbbb"),
        (b"X-Api-Key", b"redacted:hmac:cccccccccccccccc"),
        (b"Accept", b"*/*"),
    ),
    authority=PRIMARY_HOST,
)
DELTA = RequestDelta(
    removed=(b"Authorization", b"Cookie"),
    added=((b"X-Shadowtap-Shadow", b"1"), (b"X-Shadowtap-Correlation-Id", b"ex-1")),
    replaced=((b"X-Api-Key", b"redacted:credential"),),
    authority=(PRIMARY_HOST, SHADOW_HOST),
    query=(("token", "redacted:hmac:00aa11bb22cc33dd"), ("sig", None)),
)


def echo(
    host: str,
    headers: dict[str, str],
    cookies: dict[str, str],
    args: dict[str, str],
    extra: dict[str, Any] | None = None,
    location: str | None = None,
) -> Response:
    """An httpbin-like echo of what a service was sent."""
    body = {"headers": {"Host": host, **headers}, "cookies": cookies, "args": args, "url": f"http://{host}/anything"}
    response_headers = [(b"Content-Type", b"application/json")]
    if location is not None:
        response_headers.append((b"Location", location.encode()))
    return Response(200, "OK", tuple(response_headers), json.dumps({**body, **(extra or {})}).encode())


PRIMARY_ANSWER = echo(
    PRIMARY_HOST,
    {"Authorization": "Bearer client-token", "Cookie": "sid=s1; theme=dark", "X-Api-Key": "client-key"},
    {"sid": "s1", "theme": "dark"},
    {"q": "1", "token": "client-secret", "sig": "abc"},
    location=f"http://{PRIMARY_HOST}/next",
)
SHADOW_ANSWER = echo(
    SHADOW_HOST,
    {"X-Api-Key": "shadow-key", "X-Shadowtap-Shadow": "1", "X-Shadowtap-Correlation-Id": "ex-1"},
    {},
    {"q": "1", "token": "redacted:hmac:00aa11bb22cc33dd"},
    location=f"http://{SHADOW_HOST}/next",
)


def exchange(candidate: Response, delta: RequestDelta | None = DELTA, **more: Response) -> Exchange:
    return Exchange(
        id="ex-1",
        started_at_ns=1_700_000_000_000_000_000,
        request=REQUEST,
        primary=PRIMARY_ANSWER,
        shadows={"v2": candidate, **more},
        request_deltas={} if delta is None else {"v2": delta, **dict.fromkeys(more, delta)},
    )


def reasons(differences: tuple[Difference, ...]) -> dict[str, str | None]:
    return {d.full_path: d.volatile for d in differences}


ENGINE = DiffEngine(CompareOptions(), candidate="v2")


def test_an_echo_of_the_copy_differs_only_by_the_delta_and_says_how() -> None:
    result = ENGINE.compare_exchange(exchange(SHADOW_ANSWER))
    assert reasons(result.differences) == {
        "header.location": "rewrite:host",
        "body.headers.Host": "rewrite:host",
        "body.url": "rewrite:host",
        "body.headers.Authorization": "rewrite:authorization",
        "body.headers.Cookie": "rewrite:cookie",
        "body.cookies.sid": "rewrite:cookie",
        "body.cookies.theme": "rewrite:cookie",
        "body.headers.X-Api-Key": "rewrite:x-api-key",
        "body.headers.X-Shadowtap-Shadow": "rewrite:marker",
        "body.headers.X-Shadowtap-Correlation-Id": "rewrite:marker",
        "body.args.token": "rewrite:query",
        "body.args.sig": "rewrite:query",
    }


def test_without_a_delta_nothing_is_explained() -> None:
    """A tape from before deltas (or a replay): the same differences, none of them excused."""
    result = ENGINE.compare_exchange(exchange(SHADOW_ANSWER, delta=None))
    assert len(result.differences) == 12
    assert all(d.volatile is None for d in result.differences)


def test_only_an_exact_echo_is_explained() -> None:
    wrong = echo(
        "other.internal:9001",  # not the copy's Host
        {"Authorization": "Basic xyz", "X-Shadowtap-Correlation-Id": "ex-2"},  # not removed, wrong id
        {"theme": "dark"},
        {"q": "2", "token": "something-else"},  # q was never rewritten; token not the hash sent
        extra={"name": "gone"},  # a field the primary's answer lacks, not a header the copy got
        location=f"http://{PRIMARY_HOST}/elsewhere",
    )
    result = ENGINE.compare_exchange(exchange(wrong))
    got = reasons(result.differences)
    for path in (
        "header.location",
        "body.headers.Host",
        "body.url",
        "body.headers.X-Shadowtap-Correlation-Id",
        "body.args.q",
        "body.args.token",
        "body.name",
    ):
        assert got[path] is None, path
    # Still explained: what the copy lacked, whatever else changed.
    assert got["body.cookies.sid"] == "rewrite:cookie" and got["body.headers.Cookie"] == "rewrite:cookie"
    # The client sent a bearer token; "Basic xyz" is not the echo of it.
    assert got["body.headers.Authorization"] is None


def test_a_regression_beside_the_echoes_is_still_reported() -> None:
    regressed = echo(
        SHADOW_HOST,
        {"X-Api-Key": "shadow-key", "X-Shadowtap-Shadow": "1", "X-Shadowtap-Correlation-Id": "ex-1"},
        {},
        {"q": "1", "token": "redacted:hmac:00aa11bb22cc33dd"},
        location=f"http://{SHADOW_HOST}/next",
    )
    body = json.loads(regressed.body)
    del body["args"]["q"]
    regressed = Response(regressed.status, regressed.reason, regressed.headers, json.dumps(body).encode())
    unexplained = [d for d in ENGINE.compare_exchange(exchange(regressed)).differences if d.volatile is None]
    assert [(d.path, d.kind) for d in unexplained] == [("body.args.q", "removed")]


def test_the_secondary_is_compared_with_its_own_delta() -> None:
    engine = DiffEngine(CompareOptions(), candidate="v2", secondary="secondary")
    result = engine.compare_exchange(exchange(SHADOW_ANSWER, secondary=SHADOW_ANSWER))
    assert result.noise is not None and result.noise and all(d.volatile for d in result.noise)


def test_the_report_counts_rewrites_like_other_noise_and_the_gate_passes(tmp_path: Path) -> None:
    store = DiffStore(tmp_path / "r.db")
    config = config_from_mapping({})
    session = DiffSession(store, config, RunMeta("primary", "v2", None, ("t",)))
    for i in range(20):
        ex = exchange(SHADOW_ANSWER)
        session.add(Exchange(ex.id + str(i), ex.started_at_ns + i, ex.request, ex.primary, ex.shadows,
                             request_deltas=ex.request_deltas))  # fmt: skip
    session.finish()
    report = build_report(store, config)
    assert report.verdict.exit_code == 0 and report.differing == 0 and report.equal == 20
    counts = {s.reason: s.count for s in report.suppressions}
    # Counted like other noise: each signature's pairs (the Host shows in three places, and so on).
    assert counts == {
        "rewrite:host": 60,
        "rewrite:cookie": 60,
        "rewrite:authorization": 20,
        "rewrite:x-api-key": 20,
        "rewrite:marker": 40,
        "rewrite:query": 40,
    }
    structural = [s for e in report.endpoints for s in e.signatures if s.kind == "removed"]
    assert structural and all(s.suppressed and s.suppression_reason.startswith("rewrite:") for s in structural)
