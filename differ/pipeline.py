"""Feeding exchanges through the engine into the store: the ``shadowtap diff`` ingestion loop.

``DiffSession.add`` compares one exchange (``DiffEngine``), keeps its pair and the sets of
differences it showed in the store, and offers each of its signatures to a bounded example sampler
(bottom-k by a hash of the exchange id: examples are written when sampled, dropped when pushed out);
``finish`` releases unsampled examples and applies the endpoint templates learned from every path
seen. It must never read tapes (the CLI streams them in) and never decide noise or severity
(``shadowtap.differ.aggregate`` does, at report time).

Latency: a compared pair whose two responses are both timed keeps both service times with its row
(``pair_latency``: from the request being sent to the response's last byte, each side by its own
``Timing``; for a shadow that is from its copy being sent, so queueing inside the proxy is not in
it), so latency reports are rebuilt from the store for any window, exactly, like the counts.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Final

from shadowtap.differ.compare import Difference
from shadowtap.differ.config import DifferConfig
from shadowtap.differ.engine import DiffEngine, PairResult
from shadowtap.differ.latency import histogram_bin
from shadowtap.differ.store import (
    EMPTY_SET,
    EXAMPLE_CANDIDATE,
    EXAMPLE_SECONDARY,
    DiffStore,
    PairLatency,
    RunMeta,
)
from shadowtap.differ.templates import ID, EndpointTemplater, segment_is_id
from shadowtap.recorder.model import Exchange, Outcome, Request, Response
from shadowtap.recorder.redact import DEFAULT_SECRET_HEADERS
from shadowtap.wire import http1

__all__ = [
    "EXAMPLE_BODY_LIMIT_BYTES",
    "DiffSession",
    "IngestStats",
    "add_stats",
    "apply_endpoints",
    "distinct_routes",
    "example_priority",
    "learn_endpoints",
    "pair_latency",
    "shard_of",
]

#: Bodies kept in an example beyond this are cut (and marked): examples illustrate, they do not archive.
EXAMPLE_BODY_LIMIT_BYTES: Final = 1 << 20
#: Routes re-templated per batch when endpoints are learned at the end.
_RELEARN_BATCH_ROUTES: Final = 10_000
#: Routes ``relearn_endpoints`` reads once and holds (about 30 MiB); more are read three times.
_LEARN_HELD_ROUTES: Final = 100_000
#: Pairs per SQLite transaction: large enough to amortise the commit, small enough to lose little on a kill.
_COMMIT_EVERY_PAIRS: Final = 5_000
#: Secrets never reach the results database, whatever the tape held: the tape's own list of
#: credential headers (exact names), so the two can never disagree.
_SECRET_HEADERS: Final = frozenset(name.encode() for name in DEFAULT_SECRET_HEADERS)
_REDACTED: Final = b"[redacted]"
#: A sampled pair's id once its store was switched for another (``DiffSession.switch_store``).
_IN_EARLIER_STORE: Final = -1
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
    #: Compared pairs with both latencies, and those without (a side untimed: an import without
    #: timings, a tape written before they were recorded).
    latency_pairs: int = 0
    latency_untimed: int = 0


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


def shard_of(method: str, path: str, shards: int) -> int:
    """Which of ``shards`` workers diffs a request: a hash of its method and its path with every
    id-shaped segment as ``{id}``, a pure function of the request, so every path of one endpoint
    goes to one worker (its samples and counts whole there) whoever reads the tape."""
    if shards <= 1:
        return 0
    segments = path.split("?", 1)[0].split("/")
    shape = "/".join(ID if segment_is_id(segment) else segment for segment in segments)
    return zlib.crc32(f"{method} {shape}".encode("utf-8", "surrogatepass")) % shards


def add_stats(total: IngestStats, part: IngestStats) -> None:
    """Add one worker's counts to ``total``."""
    for name in IngestStats.__slots__:
        setattr(total, name, getattr(total, name) + getattr(part, name))


def pair_latency(exchange: Exchange, baseline: str, candidate: str) -> tuple[int, int] | None:
    """The (baseline, candidate) service times of an exchange in ns, when both answered with a
    response and both are timed: each side's ``done_ns - sent_ns`` (its request sent to its last
    byte; for a shadow, its copy sent, so not its wait in the proxy's queue). When either side lacks
    its last byte's time but both have their first byte's (a GoReplay import), both are
    ``first_byte_ns - sent_ns``: the two sides are always measured alike. None otherwise."""
    if not isinstance(exchange.outcome(baseline), Response) or not isinstance(exchange.outcome(candidate), Response):
        return None
    timings = exchange.timings
    b, c = timings.get(baseline), timings.get(candidate)
    if b is None or c is None or b.sent_ns is None or c.sent_ns is None:
        return None
    if b.done_ns is not None and c.done_ns is not None:
        b_ns, c_ns = b.done_ns - b.sent_ns, c.done_ns - c.sent_ns
    elif b.first_byte_ns is not None and c.first_byte_ns is not None:
        b_ns, c_ns = b.first_byte_ns - b.sent_ns, c.first_byte_ns - c.sent_ns
    else:
        return None
    if b_ns < 0 or c_ns < 0:  # a clock that went backwards: no honest figure
        return None
    return b_ns, c_ns


def _latency_priority(exchange_id: str) -> int:
    digest = hashlib.blake2b(b"latency\x00" + exchange_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # 63 bits: an SQLite INTEGER


def example_priority(exchange_id: str) -> float:
    """An exchange's place in every sample, in [0, 1): a hash of its id, so a sample is uniform over
    the exchanges, and the same whichever worker (and in whichever order) saw them."""
    digest = hashlib.blake2b(exchange_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / 2.0**53  # 53 bits: exact in a float, never 1.0


@dataclass(slots=True)
class DiffSession:
    """One ingestion run into ``store``. Not thread-safe; one per process."""

    store: DiffStore
    config: DifferConfig
    meta: RunMeta
    stats: IngestStats = field(default_factory=IngestStats)
    engine: DiffEngine = field(init=False)
    templater: EndpointTemplater = field(init=False)
    #: Bottom-k per (provisional endpoint, key, volatile): (priority, exchange id, pair id), sorted.
    _sampler: dict[tuple[str, int, str], list[tuple[float, str, int]]] = field(init=False, default_factory=dict)
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
        endpoint = self.templater.observe_template(method, path)
        store = self.store
        key_id = store.key_id
        members = {(key_id(d.path, d.kind, d.transition), d.volatile or ""): None for d in result.differences}
        noise_set = EMPTY_SET
        if result.noise:
            noise_set = store.set_id(
                tuple(sorted({(key_id(d.path, d.kind, d.transition), "") for d in result.noise if d.volatile is None}))
            )
        latency = None
        if result.status == "compared":
            latencies = pair_latency(exchange, self.meta.baseline, self.meta.candidate)
            if latencies is not None:
                b_ns, c_ns = latencies
                latency = PairLatency(
                    b_ns, c_ns, histogram_bin(b_ns / 1e9), histogram_bin(c_ns / 1e9), _latency_priority(exchange.id)
                )
        pair_id = store.add_pair(
            exchange.id,
            exchange.started_at_ns,
            store.route_id(method, path, endpoint),
            result.status,
            result.noise is not None,
            store.set_id(tuple(sorted(members))) if members else EMPTY_SET,
            noise_set,
            latency,
        )
        if pair_id is None:
            self.stats.duplicates += 1
            return result
        if result.status == "error":
            self.stats.errors += 1
        else:
            self.stats.compared += 1
            if latency is None:
                self.stats.latency_untimed += 1
            else:
                self.stats.latency_pairs += 1
        if members and self.config.examples_per_signature > 0:
            self._sample(pair_id, exchange, endpoint, members, result.differences)
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
        store = self.store
        route_id = store.route_id(method, path, self.templater.observe_template(method, path))
        noise_set = store.set_id(
            tuple(
                sorted(
                    {(store.key_id(d.path, d.kind, d.transition), "") for d in result.differences if d.volatile is None}
                )
            )
        )
        pair_id = store.add_pair(
            f"noise:{exchange.id}", exchange.started_at_ns, route_id, "noise", True, EMPTY_SET, noise_set
        )
        if pair_id is None:
            self.stats.duplicates += 1
            return
        self._count_write()

    # Bottom-k per (provisional endpoint, key, volatile): the k smallest priorities are a uniform
    # sample, and the report merges samples of endpoints that later learn to be one template the
    # same way (the k smallest of the union are among the union of each one's k smallest).
    def _sample(
        self,
        pair_id: int,
        exchange: Exchange,
        endpoint: str,
        members: dict[tuple[int, str], None],
        differences: tuple[Difference, ...],
    ) -> None:
        k = self.config.examples_per_signature
        sampler = self._sampler
        priority = example_priority(exchange.id)
        entry = (priority, exchange.id, pair_id)
        taken: list[tuple[int, str, float]] = []
        for key_id, volatile in members:
            kept = sampler.get((endpoint, key_id, volatile))
            if kept is None:
                sampler[(endpoint, key_id, volatile)] = [entry]
            elif len(kept) < k:
                bisect.insort(kept, entry)
            elif entry < kept[-1]:
                bisect.insort(kept, entry)
                _, _, dropped = kept.pop()
                if dropped != _IN_EARLIER_STORE:
                    self.store.drop_example(dropped, key_id, volatile)
            else:
                continue
            taken.append((key_id, volatile, priority))
        if taken:
            key_of = self.store.key_id
            full = [(key_of(d.path, d.kind, d.transition), d.full_path, d.volatile or "") for d in differences]
            self.store.add_example(pair_id, self._example(exchange), full, taken)

    def _example(self, exchange: Exchange) -> Exchange:
        return Exchange(
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

    def switch_store(self, store: DiffStore) -> None:
        """Go on into ``store``, the current one finished (its unsampled examples released,
        committed) but left open: a worker hands its store to be merged while it diffs on. The
        samples go on too; what they hold in earlier stores stays there (their pair ids mean
        nothing in the new one), so a merge of the stores holds each sample's bottom k among more."""
        self.store.prune_examples()
        self.store.commit()
        for kept in self._sampler.values():
            kept[:] = [(priority, exchange_id, _IN_EARLIER_STORE) for priority, exchange_id, _ in kept]
        self.store = store
        store.set_meta(self.meta)
        self._since_commit = 0

    def finish(self, *, relearn: bool = True) -> IngestStats:
        """Release the exchanges no sample keeps, learn endpoint templates from every stored path
        (unless ``relearn`` is false: a worker whose store is merged into another), commit."""
        store = self.store
        store.prune_examples()
        self._sampler.clear()
        if relearn:
            relearn_endpoints(store, self.config)
        store.commit()
        return self.stats


def relearn_endpoints(store: DiffStore, config: DifferConfig) -> int:
    """Re-template every stored path with everything now known (and the config's current routes);
    how many routes' endpoints it changed.

    Reads the routes table once when it holds at most ``_LEARN_HELD_ROUTES`` (two learning passes,
    see ``EndpointTemplater.learn``, then the templating, over the rows read); past that, streams
    it three times rather than holding every distinct path in memory. Each distinct path counts
    once in the learning: replayed in path order with their pair counts, a few slugs of a long tail
    (``/page/blue-maple-north`` seen three times) were kept apart from ``/page/{id}``. The pair
    counts come after, twice more through the table with them (``EndpointTemplater.settle``): a value
    taking 0.5 % of a parameter's pairs stays apart (``/users/me`` among a million user ids).
    """
    held = list(itertools.islice(store.routes(), _LEARN_HELD_ROUTES + 1))
    if len(held) > _LEARN_HELD_ROUTES:
        templater = learn_endpoints(lambda: ((method, path) for _, method, path, _ in store.routes()), config)
        templater.settle(store.route_counts)
        return apply_endpoints(store, templater)
    # Few enough to read once: both learning passes and the templating go over the same rows.
    templater = learn_endpoints(lambda: ((method, path) for _, method, path, _ in held), config)
    templater.settle(store.route_counts)
    updates = [
        (new, route_id) for route_id, method, path, old in held if (new := templater.template(method, path)) != old
    ]
    if updates:
        store.set_endpoints(updates)
    return len(updates)


def learn_endpoints(routes: Callable[[], Iterable[tuple[str, str]]], config: DifferConfig) -> EndpointTemplater:
    """The templater that ``relearn_endpoints`` applies, learned from ``routes()``: every distinct
    (method, path) once, in (method, path) order, read twice. Apart from ``apply_endpoints`` so that
    the routes may come from several stores (``distinct_routes``)."""
    templater = EndpointTemplater(config.routes, max_literal_children=config.max_literal_children)
    for _ in range(2):
        for method, path in routes():
            templater.observe(method, path)
    return templater


def distinct_routes(*streams: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """The union of (method, path) ``streams``, each sorted, sorted and each once."""
    last: tuple[str, str] | None = None
    for route in heapq.merge(*streams):
        if route != last:
            yield route
            last = route


def apply_endpoints(store: DiffStore, templater: EndpointTemplater) -> int:
    """Every stored route's endpoint as ``templater`` (learned from every path) templates it; how
    many changed."""
    # Applied a batch at a time: a million distinct paths must not mean a million updates in memory.
    after = changed = 0
    while batch := store.routes_after(after, _RELEARN_BATCH_ROUTES):
        updates = [
            (new, route_id) for route_id, method, path, old in batch if (new := templater.template(method, path)) != old
        ]
        if updates:
            store.set_endpoints(updates)
            changed += len(updates)
        after = batch[-1][0]
    return changed
