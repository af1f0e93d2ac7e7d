"""Hand-built DiffReports for the report renderers' tests: every kind of signature, secrets and hostile bodies.

``SECRETS`` lists every credential planted in ``rich_report``; no rendered report may contain one.
``HOSTILE_MARKERS`` are strings that must only ever appear escaped.
"""

from __future__ import annotations

import gzip
import json
import random
from typing import Any, Final

import brotli

from shadowtap.differ.latency import LatencyTracker, evaluate_latency_terms, parse_latency_term
from shadowtap.differ.report_model import (
    REPORT_SCHEMA_VERSION,
    DiffReport,
    EndpointReport,
    Example,
    FieldStat,
    LatencyReport,
    LatencyUndecided,
    SignatureReport,
    Suppression,
    Verdict,
)
from shadowtap.recorder.model import Failure, FailureKind, Request, Response

T0: Final = 1_763_776_000_000_000_000  # 2025-11-22 01:46:40Z

BEARER_SECRET: Final = "s3cr3t-bearer-value"
QUERY_SECRET: Final = "qtok-ABC123"
COOKIE_SECRET: Final = "cookie-sess-987"
SET_COOKIE_SECRET: Final = "setcookie-val-555"
API_KEY_SECRET: Final = "apikey-777-xyz"
JSON_PASSWORD_SECRET: Final = "hunter2-password"
JWT_SECRET: Final = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFubiJ9.c2lnbmF0dXJlLXNpZ24"
)
SECRETS: Final = (
    BEARER_SECRET,
    QUERY_SECRET,
    COOKIE_SECRET,
    SET_COOKIE_SECRET,
    API_KEY_SECRET,
    JSON_PASSWORD_SECRET,
    JWT_SECRET,
)
#: Planted in bodies, headers, paths and endpoint names: must never reach a page unescaped.
SCRIPT_PAYLOAD: Final = "<script>window.__pwned = 1</script>"
IMG_PAYLOAD: Final = '</pre><img src="http://127.0.0.1:9/x.png" onerror="window.__pwned = 2">'
HOSTILE_MARKERS: Final = (SCRIPT_PAYLOAD, IMG_PAYLOAD)

JSON: Final = ((b"Content-Type", b"application/json"),)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _request(target: str = "/users/7?token=" + QUERY_SECRET + "&expand=orders", method: str = "GET") -> Request:
    return Request(
        method,
        target,
        (
            (b"Host", b"api.internal"),
            (b"Authorization", b"Bearer " + BEARER_SECRET.encode()),
            (b"Cookie", b"sid=" + COOKIE_SECRET.encode() + b"; theme=dark"),
            (b"X-Api-Key", API_KEY_SECRET.encode()),
            (b"Accept", b"application/json"),
        ),
        authority="api.internal",
    )


def _user(**overrides: Any) -> dict[str, Any]:
    user: dict[str, Any] = {
        "id": 7,
        "name": "Ann",
        "email": "ann@example.com",
        "bio": SCRIPT_PAYLOAD,
        "session_token": JWT_SECRET,
        "orders": [{"id": 1, "total": 10}, {"id": 2, "total": 25}],
        "updated_at": "2025-11-22T00:26:40Z",
    }
    user.update(overrides)
    return {key: value for key, value in user.items() if value is not None}


BASELINE_USER: Final = Response(
    200,
    "OK",
    (
        *JSON,
        (b"Set-Cookie", b"session=" + SET_COOKIE_SECRET.encode() + b"; Path=/; HttpOnly"),
        (b"X-Request-Id", b"r-1"),
    ),
    _json(_user()),
)


def _signature(
    sig_id: str,
    endpoint: str,
    path: str,
    kind: str,
    transition: str,
    severity: Any,
    count: int,
    compared: int,
    examples: tuple[Example, ...] = (),
    *,
    suppressed: str | None = None,
    noise_rate: float | None = None,
) -> SignatureReport:
    return SignatureReport(
        id=sig_id,
        endpoint=endpoint,
        path=path,
        kind=kind,
        transition=transition,
        severity=severity,
        count=count,
        rate=count / compared,
        first_seen_ns=T0,
        last_seen_ns=T0 + 3_600_000_000_000,
        suppressed=suppressed is not None,
        suppression_reason=suppressed,
        noise_rate=noise_rate,
        examples=examples,
    )


def _users_endpoint() -> EndpointReport:
    ep = "GET /users/{id}"
    status_example = Example(
        "ex-status-1",
        T0 + 1_000,
        _request(),
        BASELINE_USER,
        Response(500, "Internal Server Error", ((b"Content-Type", b"text/html"),), IMG_PAYLOAD.encode()),
        ("status", "body"),
    )
    removed_example = Example(
        "ex-removed-1",
        T0 + 2_000,
        _request("/users/8?api_key=" + QUERY_SECRET),
        BASELINE_USER,
        Response(
            200,
            "OK",
            (*JSON, (b"Content-Encoding", b"gzip")),
            gzip.compress(_json(_user(email=None, orders=[{"id": 1, "total": 10}, {"id": 2, "total": 26}]))),
        ),
        ("body.email", "body.orders[1].total"),
    )
    return EndpointReport(
        endpoint=ep,
        compared=500,
        equal=440,
        differing=60,
        errors=2,
        severity="critical",
        fields=(
            FieldStat("status", 12, 500, 0, 0.0),
            FieldStat("body", 12, 500, 0, None),
            FieldStat("body.email", 30, 500, 0, 0.0),
            FieldStat("body.orders[*].total", 8, 500, 0, 0.002),
            FieldStat("body.orders[*]", 8, 500, 0, None),
            FieldStat("body.updated_at", 0, 500, 480, 0.97),
            FieldStat("header.x-request-id", 0, 500, 500, 1.0),
        ),
        signatures=(
            _signature("sig-status", ep, "status", "status", "200->500", "critical", 12, 500, (status_example,)),
            _signature(
                "sig-removed", ep, "body.email", "removed", "present->missing", "high", 30, 500, (removed_example,)
            ),
            _signature(
                "sig-total", ep, "body.orders[*].total", "value", "int->int", "medium", 8, 500, (removed_example,)
            ),
            _signature(
                "sig-updated",
                ep,
                "body.updated_at",
                "value",
                "str->str",
                "medium",
                480,
                500,
                suppressed="volatile:timestamp",
            ),
            _signature(
                "sig-reqid",
                ep,
                "header.x-request-id",
                "header",
                "str->str",
                "low",
                500,
                500,
                suppressed="volatile:header",
            ),
        ),
    )


def _orders_endpoint() -> EndpointReport:
    ep = "POST /orders"
    request = Request(
        "POST",
        "/orders",
        ((b"Content-Type", b"application/json"), (b"Authorization", b"Basic " + BEARER_SECRET.encode())),
        _json({"sku": "A-1", "qty": 2, "password": JSON_PASSWORD_SECRET}),
    )
    baseline = Response(201, "Created", JSON, _json({"id": 99, "total": 20, "currency": "EUR"}))
    candidate = Response(
        201, "Created", (*JSON, (b"Content-Encoding", b"br")), brotli.compress(_json({"id": 99, "total": "20.00"}))
    )
    example = Example("ex-type-1", T0 + 3_000, request, baseline, candidate, ("body.total", "body.currency"))
    return EndpointReport(
        endpoint=ep,
        compared=200,
        equal=150,
        differing=50,
        errors=0,
        severity="high",
        fields=(
            FieldStat("body.total", 50, 200, 0, None),
            FieldStat("body.currency", 50, 200, 0, None),
        ),
        signatures=(
            _signature("sig-type", ep, "body.total", "type", "int->str", "high", 50, 200, (example,)),
            _signature("sig-currency", ep, "body.currency", "removed", "present->missing", "high", 50, 200, (example,)),
        ),
    )


def _search_endpoint() -> EndpointReport:
    ep = "GET /search"
    text = "\n".join(f"result line {i}" for i in range(12))
    baseline = Response(200, "OK", ((b"Content-Type", b"text/plain"),), text.encode())
    candidate = Response(
        200, "OK", ((b"Content-Type", b"text/plain"),), text.replace("line 5", "LINE five").encode() + b"\nextra"
    )
    example = Example("ex-text-1", T0 + 4_000, Request("GET", "/search?q=shoes|boots"), baseline, candidate, ("body",))
    return EndpointReport(
        endpoint=ep,
        compared=120,
        equal=110,
        differing=10,
        errors=0,
        severity="medium",
        fields=(FieldStat("body", 10, 120, 0, None),),
        signatures=(_signature("sig-text", ep, "body", "text", "text->text", "medium", 10, 120, (example,)),),
    )


def _image_endpoint() -> EndpointReport:
    ep = "GET /img/{id}"
    baseline = Response(
        200, "OK", ((b"Content-Type", b"image/png"), (b"Cache-Control", b"max-age=60")), b"\x89PNG\r\n\x1a\n\x00\x01"
    )
    candidate = Response(
        200, "OK", ((b"Content-Type", b"image/png"), (b"Cache-Control", b"no-store")), b"\x89PNG\r\n\x1a\n\x00\x02"
    )
    example = Example(
        "ex-bin-1", T0 + 5_000, Request("GET", "/img/3"), baseline, candidate, ("header.cache-control", "body")
    )
    return EndpointReport(
        endpoint=ep,
        compared=40,
        equal=30,
        differing=10,
        errors=0,
        severity="medium",
        fields=(FieldStat("header.cache-control", 10, 40, 0, None), FieldStat("body", 10, 40, 0, None)),
        signatures=(
            _signature("sig-binary", ep, "body", "binary", "sha256->sha256", "medium", 10, 40, (example,)),
            _signature("sig-cache", ep, "header.cache-control", "header", "str->str", "low", 10, 40, (example,)),
        ),
    )


def _flaky_endpoint() -> EndpointReport:
    ep = "GET /recommendations"
    example = Example(
        "ex-noise-1",
        T0 + 6_000,
        Request("GET", "/recommendations"),
        Response(200, "OK", JSON, _json({"score": 0.91})),
        Response(200, "OK", JSON, _json({"score": 0.87})),
        ("body.score",),
    )
    return EndpointReport(
        endpoint=ep,
        compared=300,
        equal=170,
        differing=130,
        errors=0,
        severity=None,
        fields=(FieldStat("body.score", 0, 300, 130, 0.45),),
        signatures=(
            _signature(
                "sig-score",
                ep,
                "body.score",
                "value",
                "float->float",
                "medium",
                130,
                300,
                (example,),
                suppressed="learned-noise",
                noise_rate=0.45,
            ),
        ),
    )


def _failing_endpoint() -> EndpointReport:
    ep = "GET /orders/{id}/<b>" + SCRIPT_PAYLOAD
    example = Example(
        "ex-fail-1",
        T0 + 7_000,
        Request("GET", "/orders/1"),
        Response(200, "OK", JSON, b'{"ok": true}'),
        Failure(FailureKind.TIMEOUT, "no response within 2.0s"),
        ("error",),
    )
    return EndpointReport(
        endpoint=ep,
        compared=20,
        equal=15,
        differing=0,
        errors=5,
        severity="critical",
        fields=(),
        signatures=(_signature("sig-error", ep, "error", "error", "response->timeout", "critical", 5, 20, (example,)),),
    )


def _healthy_endpoint() -> EndpointReport:
    return EndpointReport("GET /health", 100, 100, 0, 0, None, (), ())


#: The endpoint ``rich_report`` plants a 30 % slower candidate at (and its latency terms).
SLOWER_ENDPOINT: Final = "GET /users/{id}"
LATENCY_TERMS: Final = ("latency.p50>+20%", "latency.p99>+20%")


def rich_latency() -> LatencyReport:
    """The candidate 30 % slower at ``SLOWER_ENDPOINT`` (2,000 pairs), unchanged at ``GET /orders``
    (500 pairs: too few for a p99 interval) and too few pairs at a hostile-named endpoint."""
    rng = random.Random(7)
    tracker = LatencyTracker()
    for endpoint, pairs, factor in ((SLOWER_ENDPOINT, 2000, 1.3), ("GET /orders", 500, 1.0), (SCRIPT_PAYLOAD, 9, 2.0)):
        for _ in range(pairs):
            base = rng.lognormvariate(-4.0, 0.4)
            tracker.add(endpoint, "v2", base, base * factor * rng.uniform(0.97, 1.03))
    order = {"slower": 0, "no significant difference": 1, "faster": 2, "too few samples": 3}
    comparisons = sorted(tracker.compare(), key=lambda c: (order[c.verdict], c.endpoint))
    judgement = evaluate_latency_terms([parse_latency_term(t) for t in LATENCY_TERMS], comparisons)
    return LatencyReport(
        pairs=2509,
        untimed=12,
        min_pairs=50,
        comparisons=tuple(comparisons),
        terms=LATENCY_TERMS,
        failures=judgement.failures,
        undecided=tuple(LatencyUndecided(*u) for u in judgement.undecided),
    )


def rich_report() -> DiffReport:
    """A failing report exercising every renderer feature."""
    endpoints = (
        _users_endpoint(),
        _orders_endpoint(),
        _failing_endpoint(),
        _search_endpoint(),
        _image_endpoint(),
        _flaky_endpoint(),
        _healthy_endpoint(),
    )
    return DiffReport(
        schema_version=REPORT_SCHEMA_VERSION,
        generated_at_ns=T0 + 7_200_000_000_000,
        sources=("tapes/prod-2025-11-22", "tapes/replay.tape"),
        baseline_name="primary",
        candidate_name="v2",
        secondary_name="v1-copy",
        window_start_ns=T0,
        window_end_ns=T0 + 3_600_000_000_000,
        pairs=1300,
        compared=1280,
        equal=1015,
        differing=260,
        errors=7,
        noise_suppressed=1110,
        suppressions=(
            Suppression("volatile:header", 500),
            Suppression("volatile:timestamp", 480),
            Suppression("learned-noise", 130),
        ),
        endpoints=endpoints,
        verdict=Verdict(
            exit_code=1,
            reason="5 critical/high signatures above the noise rule",
            failing_signatures=("sig-status", "sig-removed", "sig-type", "sig-currency", "sig-error"),
            failing_latency=(f"latency.p50>+20% at {SLOWER_ENDPOINT}", f"latency.p99>+20% at {SLOWER_ENDPOINT}"),
        ),
        latency=rich_latency(),
    )


def passing_report() -> DiffReport:
    """Everything equal or suppressed: exit 0."""
    return DiffReport(
        schema_version=REPORT_SCHEMA_VERSION,
        generated_at_ns=T0,
        sources=("t1",),
        baseline_name="primary",
        candidate_name="replay",
        secondary_name=None,
        window_start_ns=None,
        window_end_ns=None,
        pairs=400,
        compared=400,
        equal=270,
        differing=130,
        errors=0,
        noise_suppressed=130,
        suppressions=(Suppression("learned-noise", 130),),
        endpoints=(_flaky_endpoint(), _healthy_endpoint()),
        verdict=Verdict(0, "no regression above the noise rule", ()),
    )


def inconclusive_report() -> DiffReport:
    """Too few samples and most shadow requests failed: exit 2, nothing compared."""
    return DiffReport(
        schema_version=REPORT_SCHEMA_VERSION,
        generated_at_ns=T0,
        sources=(),
        baseline_name="primary",
        candidate_name="v2",
        secondary_name=None,
        window_start_ns=None,
        window_end_ns=None,
        pairs=3,
        compared=0,
        equal=0,
        differing=0,
        errors=3,
        noise_suppressed=0,
        suppressions=(),
        endpoints=(),
        verdict=Verdict(2, "only 0 compared pairs, fewer than --min-samples 100", ()),
    )
