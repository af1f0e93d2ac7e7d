"""Reports built from the store: planted regressions found exactly, noise suppressed and explained."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shadowtap.differ import (
    DiffSession,
    DiffStore,
    NoiseThresholds,
    RunMeta,
    build_report,
    config_from_mapping,
    is_learned_noise,
)
from shadowtap.differ.report_model import DiffReport
from shadowtap.recorder import Exchange, Request, Response
from tests.differ.corpus.traffic import CANDIDATE, CONFIG, PLANTED, SECONDARY, SLUGS, T0_NS, traffic


def ingest(db: Path, count: int, *, planted: bool = True, secondary: str | None = SECONDARY) -> DiffStore:
    store = DiffStore(db)
    session = DiffSession(
        store,
        config_from_mapping(CONFIG),
        RunMeta("primary", CANDIDATE, secondary, ("generated",)),
    )
    for exchange in traffic(count, planted=planted):
        session.add(exchange)
    session.finish()
    return store


def unsuppressed(report: DiffReport) -> set[tuple[str, str, str, str]]:
    return {
        (s.endpoint, s.path, s.kind, s.transition) for e in report.endpoints for s in e.signatures if not s.suppressed
    }


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory: pytest.TempPathFactory) -> DiffStore:
    """One planted run shared by the read-only tests (building reports never writes the store)."""
    return ingest(tmp_path_factory.mktemp("planted") / "r.db", 3000)


def test_planted_regressions_are_reported_exactly(planted_store: DiffStore) -> None:
    store = planted_store
    report = build_report(store, config_from_mapping(CONFIG))
    assert unsuppressed(report) == PLANTED
    assert report.pairs == report.compared + report.errors
    assert report.equal + report.differing == report.compared
    assert report.errors > 0
    reasons = {s.reason for s in report.suppressions}
    assert {"volatile:uuid", "volatile:iso-date", "volatile:epoch", "volatile:hex-id", "learned-noise"} <= reasons
    assert report.noise_suppressed == sum(s.count for s in report.suppressions) > 0

    by_key = {(s.endpoint, s.path, s.kind, s.transition): s for e in report.endpoints for s in e.signatures}
    score = by_key[("GET /users/{id}", "body.score", "value", "float->float")]
    assert score.suppressed and score.suppression_reason == "learned-noise"
    assert score.noise_rate is not None and score.noise_rate > 0.3
    checkout = by_key[("POST /checkout", "status", "status", "200->500")]
    assert checkout.severity == "critical" and 0.05 < checkout.rate < 0.15
    assert by_key[("GET /users/{id}", "body.email", "removed", "str->missing")].severity == "high"
    assert by_key[("GET /products", "body.products[*].badge", "added", "missing->str")].severity == "low"
    assert by_key[("GET /prices/{id}", "body.price", "value", "float->float")].severity == "medium"

    # Exit 1: critical and high signatures fail the default gate, medium and low do not.
    assert report.verdict.exit_code == 1
    failing = {(s.endpoint, s.path) for s in by_key.values() if s.id in report.verdict.failing_signatures}
    assert failing == {
        ("POST /checkout", "status"),
        ("GET /users/{id}", "body.email"),
        ("GET /orders/{id}", "body.total"),
    }
    assert report.endpoints[0].endpoint == "POST /checkout"


def test_examples_show_request_both_sides_and_paths_without_secrets(planted_store: DiffStore) -> None:
    report = build_report(planted_store, config_from_mapping(CONFIG))
    email = next(s for e in report.endpoints for s in e.signatures if s.path == "body.email")
    assert 1 <= len(email.examples) <= 3
    for example in email.examples:
        assert example.request.path.startswith("/users/")
        assert example.request.header(b"authorization") == b"[redacted]"
        assert example.baseline is not None and example.candidate is not None
        assert "body.email" in example.paths
        assert example.started_at_ns >= T0_NS
    assert len({ex.exchange_id for ex in email.examples}) == len(email.examples)


def test_high_cardinality_segments_are_learned_as_ids(planted_store: DiffStore) -> None:
    report = build_report(planted_store, config_from_mapping(CONFIG))
    endpoints = {e.endpoint for e in report.endpoints}
    assert "GET /page/{id}" in endpoints
    assert not any(slug in endpoint for endpoint in endpoints for slug in SLUGS)
    assert endpoints == {
        "GET /users/{id}",
        "GET /orders/{id}",
        "GET /products",
        "POST /checkout",
        "GET /prices/{id}",
        "GET /page/{id}",
        "GET /health",
    }


def test_user_routes_take_precedence(tmp_path: Path) -> None:
    config = config_from_mapping({"diff": {**CONFIG["diff"], "routes": ["GET /page/{slug}", "/users/{user}"]}})
    store = DiffStore(tmp_path / "r.db")
    session = DiffSession(store, config, RunMeta("primary", CANDIDATE, SECONDARY, ()))
    for exchange in traffic(500):
        session.add(exchange)
    session.finish()
    endpoints = {e.endpoint for e in build_report(store, config).endpoints}
    assert {"GET /page/{slug}", "GET /users/{user}"} <= endpoints


def test_no_regressions_no_failure(tmp_path: Path) -> None:
    report = build_report(ingest(tmp_path / "r.db", 1500, planted=False), config_from_mapping(CONFIG))
    assert unsuppressed(report) == set()
    assert report.differing == 0 and report.equal == report.compared
    assert report.verdict.exit_code == 0


def test_without_a_secondary_the_noisy_field_is_reported(tmp_path: Path) -> None:
    report = build_report(ingest(tmp_path / "r.db", 1500, secondary=None), config_from_mapping(CONFIG))
    assert ("GET /users/{id}", "body.score", "value", "float->float") in unsuppressed(report)
    assert all(s.noise_rate is None for e in report.endpoints for s in e.signatures)


def test_ignore_rules_silence_value_changes_and_say_why_but_never_structure(planted_store: DiffStore) -> None:
    config = config_from_mapping(
        {"diff": {**CONFIG["diff"], "ignore": ["body.**.badge", {"endpoint": "GET /prices/*", "path": "body.price"}]}}
    )
    report = build_report(planted_store, config)
    live = unsuppressed(report)
    assert ("GET /prices/{id}", "body.price", "value", "float->float") not in live
    # A rule over a field hides its value changes, never the field appearing or vanishing.
    assert ("GET /products", "body.products[*].badge", "added", "missing->str") in live
    reasons = {s.reason for s in report.suppressions}
    assert "rule:GET /prices/* body.price" in reasons and "rule:body.**.badge" not in reasons


def test_window_and_endpoint_filters_recompute_from_the_store(planted_store: DiffStore) -> None:
    store = planted_store
    config = config_from_mapping(CONFIG)
    whole = build_report(store, config)
    first_half = build_report(store, config, until_ns=T0_NS + 1000 * 1_000_000)
    second_half = build_report(store, config, since_ns=T0_NS + 1000 * 1_000_000)
    assert first_half.pairs + second_half.pairs == whole.pairs
    assert first_half.compared + second_half.compared == whole.compared
    only = build_report(store, config, endpoint="POST /checkout")
    assert [e.endpoint for e in only.endpoints] == ["POST /checkout"]
    assert only.endpoints[0] == next(e for e in whole.endpoints if e.endpoint == "POST /checkout")


def test_reingesting_the_same_exchanges_does_not_double_count(tmp_path: Path) -> None:
    once = build_report(ingest(tmp_path / "once.db", 800), config_from_mapping(CONFIG), generated_at_ns=1)
    ingest(tmp_path / "twice.db", 800).close()
    twice = build_report(ingest(tmp_path / "twice.db", 800), config_from_mapping(CONFIG), generated_at_ns=1)
    assert twice.pairs == once.pairs == 800
    assert [(s.id, s.count) for e in twice.endpoints for s in e.signatures] == [
        (s.id, s.count) for e in once.endpoints for s in e.signatures
    ]


def test_too_few_samples_is_exit_2(tmp_path: Path) -> None:
    report = build_report(ingest(tmp_path / "r.db", 30), config_from_mapping(CONFIG), min_samples=1000)
    assert report.verdict.exit_code == 2
    assert "fewer than 1000" in report.verdict.reason


@pytest.mark.parametrize(
    ("candidate", "noise", "is_noise"),
    [
        (0.30, 0.30, True),
        (0.33, 0.30, True),  # 0.03 / 0.63 = 4.8% relative: within 20%
        (0.50, 0.30, False),  # 25% relative and 20 points absolute
        (0.10, 0.30, True),  # fewer differences than the noise
        (0.0004, 0.0002, True),  # 33% relative but only 0.02% absolute
        (0.0008, 0.0002, False),
        (0.5, 0.0, False),  # never noise without observed noise
        (0.5, None, False),
    ],
)
def test_diffy_rule(candidate: float, noise: float | None, is_noise: bool) -> None:
    assert is_learned_noise(candidate, noise, NoiseThresholds()) is is_noise


def test_noise_learned_from_a_replay_of_the_baseline(tmp_path: Path) -> None:
    store = DiffStore(tmp_path / "r.db")
    config = config_from_mapping(CONFIG)
    session = DiffSession(store, config, RunMeta("primary", CANDIDATE, None, ("generated",)))
    exchanges = list(traffic(3000))
    for exchange in exchanges:
        session.add(Exchange(exchange.id, exchange.started_at_ns, exchange.request, exchange.primary,
                             {CANDIDATE: exchange.shadows[CANDIDATE]}))  # fmt: skip
    # The same requests replayed against the baseline's version: a separate tape in real life.
    for exchange in exchanges:
        session.add_noise(
            Exchange(exchange.id, exchange.started_at_ns, exchange.request, exchange.primary,
                     {"replay": exchange.shadows[SECONDARY]}),
            "replay",
        )  # fmt: skip
    stats = session.finish()
    assert stats.noise_skipped > 0  # POST /checkout is not replayed for noise
    report = build_report(store, config)
    assert unsuppressed(report) == PLANTED
    assert report.pairs == 3000
    score = next(s for e in report.endpoints for s in e.signatures if s.path == "body.score")
    assert score.suppression_reason == "learned-noise" and score.noise_rate is not None


def _structural_run(db: Path, secondary_shape: Callable[[int], dict[str, Any]] | None) -> DiffReport:
    """100 pairs of GET /profile: the candidate drops `legacy` in every other pair and `email` in
    every fourth; the secondary answers as ``secondary_shape(i)`` says (None: no secondary)."""
    store = DiffStore(db)
    config = config_from_mapping({})
    secondary = None if secondary_shape is None else "secondary"
    session = DiffSession(store, config, RunMeta("primary", "v2", secondary, ()))

    def answer(doc: dict[str, Any]) -> Response:
        return Response(200, "OK", ((b"Content-Type", b"application/json"),), json.dumps(doc).encode())

    full = {"id": 1, "email": "a@example.com", "legacy": "x"}
    for i in range(100):
        candidate = dict(full)
        if i % 2 == 0:
            del candidate["legacy"]
        if i % 4 == 0:
            del candidate["email"]
        shadows = {"v2": answer(candidate)}
        if secondary_shape is not None:
            shadows["secondary"] = answer(secondary_shape(i))
        session.add(Exchange(f"e{i}", T0_NS + i, Request("GET", "/profile"), answer(full), shadows))
    session.finish()
    return build_report(store, config)


def _signature(report: DiffReport, path: str) -> Any:
    return next(s for e in report.endpoints for s in e.signatures if s.path == path)


def test_a_structural_change_the_secondary_shows_as_often_is_learned_noise(tmp_path: Path) -> None:
    """The secondary (the baseline's version again) also drops `legacy` in about half its answers:
    the environment's doing, not the candidate's. It never drops `email`: that stays a regression."""
    full = {"id": 1, "email": "a@example.com", "legacy": "x"}
    report = _structural_run(tmp_path / "r.db", lambda i: {"id": 1, "email": "a@example.com"} if i % 2 else full)
    legacy, email = _signature(report, "body.legacy"), _signature(report, "body.email")
    assert (legacy.kind, legacy.suppressed, legacy.suppression_reason) == ("removed", True, "learned-noise")
    assert legacy.noise_rate == 0.5 and legacy.rate == 0.5
    assert (email.kind, email.suppressed, email.noise_rate) == ("removed", False, 0.0)
    assert {s.reason: s.count for s in report.suppressions} == {"learned-noise": 50}
    assert report.verdict.exit_code == 1 and report.verdict.failing_signatures == (email.id,)


def test_a_structural_change_is_learned_only_from_the_same_change_at_a_comparable_rate(tmp_path: Path) -> None:
    # The secondary's `legacy` is noisy, but its value changes; it never goes missing.
    report = _structural_run(tmp_path / "value.db", lambda i: {"id": 1, "email": "a@example.com", "legacy": str(i)})
    legacy = _signature(report, "body.legacy")
    assert not legacy.suppressed and legacy.noise_rate == 0.0
    # The same change, but in 5% of the secondary's answers against the candidate's 50%.
    full = {"id": 1, "email": "a@example.com", "legacy": "x"}
    report = _structural_run(
        tmp_path / "rare.db", lambda i: {"id": 1, "email": "a@example.com"} if i % 20 == 0 else full
    )
    legacy = _signature(report, "body.legacy")
    assert not legacy.suppressed and legacy.noise_rate == 0.05
    # Without a secondary nothing structural is ever learned.
    report = _structural_run(tmp_path / "none.db", None)
    assert not _signature(report, "body.legacy").suppressed and _signature(report, "body.legacy").noise_rate is None
