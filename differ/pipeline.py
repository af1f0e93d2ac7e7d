"""Feeding exchanges through the engine into the store: the ``shadowtap diff`` ingestion loop.

``DiffSession.add`` compares one exchange (``DiffEngine``), keeps its pair and differences in the
store, and offers each difference to a bounded example sampler; ``finish`` writes the samples and
applies the endpoint templates learned from every path seen. It must never read tapes (the CLI
streams them in) and never decide noise or severity (``shadowtap.differ.aggregate`` does, at report time).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Final

from shadowtap.differ.config import DifferConfig
from shadowtap.differ.engine import DiffEngine, PairResult
from shadowtap.differ.store import EXAMPLE_CANDIDATE, EXAMPLE_SECONDARY, DiffStore, RunMeta
from shadowtap.differ.templates import EndpointTemplater
from shadowtap.recorder.model import Exchange, Outcome, Request, Response
from shadowtap.recorder.redact import DEFAULT_SECRET_HEADERS
from shadowtap.wire import http1

__all__ = ["EXAMPLE_BODY_LIMIT_BYTES", "DiffSession", "IngestStats"]

#: Bodies kept in an example beyond this are cut (and marked): examples illustrate, they do not archive.
EXAMPLE_BODY_LIMIT_BYTES: Final = 1 << 20
#: Pairs per SQLite transaction: large enough to amortise the commit, small enough to lose little on a kill.
_COMMIT_EVERY_PAIRS: Final = 5_000
#: Secrets never reach the results database, whatever the tape held: the tape's own list of
#: credential headers (exact names), so the two can never disagree.
_SECRET_HEADERS: Final = frozenset(name.encode() for name in DEFAULT_SECRET_HEADERS)
_REDACTED: Final = b"[redacted]"
#: Methods whose replay against the primary measures noise (RFC 9110 safe methods, TRACE included).
_SAFE_METHODS: Final = http1.SAFE_METHODS


@dataclass(slots=True)
class IngestStats:
    exchanges: int = 0
    skipped: int = 0
    duplicates: int = 0
    compared: int = 0
    errors: int = 0
    noise_pairs: int = 0
    noise_skipped: int = 0


def _redact_headers(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
    if not any(name.lower() in _SECRET_HEADERS for name, _ in headers):
        return headers
    return tuple((name, _REDACTED if name.lower() in _SECRET_HEADERS else value) for name, value in headers)


def _cap_body(body: bytes, truncated_from: int | None) -> tuple[bytes, int | None]:
    if len(body) <= EXAMPLE_BODY_LIMIT_BYTES:
        return body, truncated_from
    return body[:EXAMPLE_BODY_LIMIT_BYTES], truncated_from or len(body)


def _example_outcome(outcome: Outcome | None) -> Outcome | None:
    if not isinstance(outcome, Response):
        return outcome
    body, truncated_from = _cap_body(outcome.body, outcome.truncated_from)
    return replace(outcome, headers=_redact_headers(outcome.headers), body=body, truncated_from=truncated_from)


def _example_request(request: Request) -> Request:
    body, truncated_from = _cap_body(request.body, request.truncated_from)
    return replace(request, headers=_redact_headers(request.headers), body=body, truncated_from=truncated_from)


@dataclass(slots=True)
class DiffSession:
    """One ingestion run into ``store``. Not thread-safe; one per process."""

    store: DiffStore
    config: DifferConfig
    meta: RunMeta
    rng: random.Random = field(default_factory=random.Random)
    stats: IngestStats = field(default_factory=IngestStats)
    engine: DiffEngine = field(init=False)
    templater: EndpointTemplater = field(init=False)
    _sampler: dict[tuple[str, int], list[tuple[float, int]]] = field(init=False, default_factory=dict)
    _example_exchanges: dict[int, Exchange] = field(init=False, default_factory=dict)
    _since_commit: int = field(init=False, default=0)
    _noise_engines: dict[str, DiffEngine] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.engine = DiffEngine(
            self.config.compare,
            baseline=self.meta.baseline,
            candidate=self.meta.candidate,
            secondary=self.meta.secondary,
        )
        self.templater = EndpointTemplater(self.config.routes, max_literal_children=self.config.max_literal_children)
        self.store.set_meta(self.meta)

    def add(self, exchange: Exchange) -> PairResult:
        self.stats.exchanges += 1
        result = self.engine.compare_exchange(exchange)
        if result.status == "skipped":
            self.stats.skipped += 1
            return result
        request = exchange.request
        method, path = request.method, request.path
        self.templater.observe(method, path)
        endpoint = self.templater.template(method, path)
        store = self.store
        pair_id = store.add_pair(
            exchange.id,
            exchange.started_at_ns,
            store.route_id(method, path, endpoint),
            result.status,
            result.noise is not None,
        )
        if pair_id is None:
            self.stats.duplicates += 1
            return result
        if result.status == "error":
            self.stats.errors += 1
        else:
            self.stats.compared += 1
        rows: list[tuple[int, int, str, str, str | None]] = []
        sampled: list[tuple[int, float]] = []
        seen_keys: set[int] = set()
        for diff in result.differences:
            key_id = store.key_id(diff.path, diff.kind, diff.transition)
            rows.append((pair_id, key_id, "candidate", diff.full_path, diff.volatile))
            if key_id not in seen_keys:
                seen_keys.add(key_id)
                priority = self._offer(endpoint, key_id)
                if priority is not None:
                    sampled.append((key_id, priority))
        for diff in result.noise or ():
            if diff.volatile is None:
                rows.append(
                    (pair_id, store.key_id(diff.path, diff.kind, diff.transition), "secondary", diff.full_path, None)
                )
        if rows:
            store.add_differences(rows)
        if sampled:
            self._keep(pair_id, exchange, endpoint, sampled)
        self._count_write()
        return result

    def _count_write(self) -> None:
        self._since_commit += 1
        if self._since_commit >= _COMMIT_EVERY_PAIRS:
            self.store.commit()
            self._since_commit = 0

    def add_noise(self, exchange: Exchange, second_name: str) -> None:
        """Learn noise from an exchange answered twice by the baseline's version: ``primary`` and
        ``second_name`` (a replay of the request against the primary). Only safe methods count: a
        replayed write answers differently because it was a second write, not because of noise."""
        self.stats.noise_pairs += 1
        request = exchange.request
        engine = self._noise_engines.get(second_name)
        if engine is None:
            engine = self._noise_engines[second_name] = DiffEngine(self.config.compare, candidate=second_name)
        result = engine.compare_exchange(exchange) if request.method.upper() in _SAFE_METHODS else None
        if result is None or result.status != "compared":
            self.stats.noise_skipped += 1
            return
        method, path = request.method, request.path
        self.templater.observe(method, path)
        store = self.store
        route_id = store.route_id(method, path, self.templater.template(method, path))
        pair_id = store.add_pair(f"noise:{exchange.id}", exchange.started_at_ns, route_id, "noise", True)
        if pair_id is None:
            self.stats.duplicates += 1
            return
        rows = [
            (pair_id, store.key_id(d.path, d.kind, d.transition), "secondary", d.full_path, None)
            for d in result.differences
            if d.volatile is None
        ]
        if rows:
            store.add_differences(rows)
        self._count_write()

    # Bottom-k per (provisional endpoint, key): the k smallest priorities are a uniform sample, and
    # the store merges samples of endpoints that later learn to be one template the same way.
    def _offer(self, endpoint: str, key_id: int) -> float | None:
        k = self.config.examples_per_signature
        if k <= 0:
            return None
        priority = self.rng.random()
        kept = self._sampler.get((endpoint, key_id))
        if kept is None or len(kept) < k or priority < kept[-1][0]:
            return priority
        return None

    def _keep(self, pair_id: int, exchange: Exchange, endpoint: str, sampled: list[tuple[int, float]]) -> None:
        k = self.config.examples_per_signature
        for key_id, priority in sampled:
            kept = self._sampler.setdefault((endpoint, key_id), [])
            kept.append((priority, pair_id))
            kept.sort()
            del kept[k:]
        self._example_exchanges[pair_id] = Exchange(
            id=exchange.id,
            started_at_ns=exchange.started_at_ns,
            request=_example_request(exchange.request),
            primary=_example_outcome(exchange.outcome(self.meta.baseline)),
            shadows={
                label: outcome
                for label, name in ((EXAMPLE_CANDIDATE, self.meta.candidate), (EXAMPLE_SECONDARY, self.meta.secondary))
                if name is not None and (outcome := _example_outcome(exchange.outcome(name))) is not None
            },
        )
        if len(self._example_exchanges) > 4 * k * max(1, len(self._sampler)):
            self._drop_unsampled()

    def _drop_unsampled(self) -> None:
        # Exchanges pushed out of every sample are released, so memory follows the samples' size.
        live = {pair_id for kept in self._sampler.values() for _, pair_id in kept}
        self._example_exchanges = {p: ex for p, ex in self._example_exchanges.items() if p in live}

    def finish(self) -> IngestStats:
        """Write the samples, learn endpoint templates from every stored path, commit."""
        store = self.store
        by_pair: dict[int, list[tuple[int, float]]] = {}
        for (_, key_id), kept in self._sampler.items():
            for priority, pair_id in kept:
                by_pair.setdefault(pair_id, []).append((key_id, priority))
        for pair_id, keys in by_pair.items():
            store.add_example(pair_id, self._example_exchanges[pair_id], keys)
        self._sampler.clear()
        self._example_exchanges.clear()
        relearn_endpoints(store, self.config)
        store.commit()
        return self.stats


def relearn_endpoints(store: DiffStore, config: DifferConfig) -> None:
    """Re-template every stored path with everything now known (and the config's current routes).

    Streams the routes table three times (two learning passes, see ``EndpointTemplater.learn``,
    then templating) rather than holding every distinct path in memory.
    """
    templater = EndpointTemplater(config.routes, max_literal_children=config.max_literal_children)
    for _ in range(2):
        for _, method, path, _ in store.routes():
            templater.observe(method, path)
    updates = [
        (new, route_id)
        for route_id, method, path, old in store.routes()
        if (new := templater.template(method, path)) != old
    ]
    if updates:
        store.set_endpoints(updates)
