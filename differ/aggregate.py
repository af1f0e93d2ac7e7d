"""Builds the ``DiffReport`` from the store: counts, noise decisions, signatures, examples, verdict.

Everything a report says is recomputed here from stored pairs and difference sets, for any time window
or endpoint, so ``shadowtap report`` and ``shadowtap diff`` agree by construction. Suppression is
decided per signature, in order: a reason decided at compare time (a volatile detector, or an echo of
what the proxy changed in the candidate's request), a user ignore rule (never for a structural
change), then learned noise (Diffy's
rule, see ``is_learned_noise``): per field for value changes, and per signature for structural ones,
which only the secondary showing the same change (same path and transition) at a comparable rate
can silence. This module must never read tapes, and reads the store only through ``DiffStore``.

Latency: the timed pairs of the window give each endpoint's two histograms (SQLite counts the pairs
per stored bin) and a uniform sample of its pairs (those of smallest stored priority), which a
``LatencyTracker`` compares; the ``--fail-on`` latency terms are judged on the comparisons. Both are
exact for any window and however many workers or runs wrote the store.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from shadowtap.differ.config import DifferConfig, IgnoreRule, NoiseThresholds
from shadowtap.differ.latency import (
    MAX_ENDPOINTS,
    MIN_PAIRS,
    OVERFLOW,
    RESERVOIR_SIZE,
    LatencyComparison,
    LatencyHistogram,
    LatencyJudgement,
    LatencyTerm,
    LatencyTracker,
    evaluate_latency_terms,
)
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
)
from shadowtap.differ.signatures import is_structural, severity, severity_rank, signature_id
from shadowtap.differ.store import EMPTY_SET, EXAMPLE_CANDIDATE, DiffStore, PairGroup
from shadowtap.differ.verdict import decide, parse_fail_on
from shadowtap.recorder.errors import ConfigError

__all__ = ["EXAMPLES_PER_REPORT", "LEARNED_NOISE", "build_report", "is_learned_noise"]

LEARNED_NOISE: Final = "learned-noise"
#: Examples one report holds at most (each a request and two responses, bodies up to 1 MiB): an
#: API of thousands of templates makes a report of thousands of signatures, each still counted and
#: ranked, but only the most important ones illustrated.
EXAMPLES_PER_REPORT: Final = 1_000
#: Groups of pairs (``DiffStore.pair_groups``) the report's first pass keeps for its second: a few
#: MiB at most; a store with more distinct kinds of pair is grouped twice.
_KEPT_GROUPS_MAX: Final = 50_000


def is_learned_noise(candidate_rate: float, noise_rate: float | None, thresholds: NoiseThresholds) -> bool:
    """Diffy's rule, as fractions of pairs. A field is a real difference only when

        candidate_rate > noise_rate
        and (candidate_rate - noise_rate) / (candidate_rate + noise_rate) > relative
        and (candidate_rate - noise_rate) > absolute

    (Diffy's ``DifferencesFilterFactory``: relativeDifference is |raw - noise| / (raw + noise),
    absoluteDifference is |raw - noise| over all requests; defaults 20% and 0.03%). Otherwise it is
    noise, with one deliberate difference from Diffy: a field that never differed between baseline
    and secondary (``noise_rate`` 0 or unknown) is never learned noise, however rare its change.
    """
    if noise_rate is None or noise_rate <= 0:
        return False
    gap = candidate_rate - noise_rate
    if gap <= 0:
        return True
    return gap / (candidate_rate + noise_rate) <= thresholds.relative or gap <= thresholds.absolute


@dataclass(slots=True)
class _EndpointCounts:
    """Per endpoint: pairs, compared, errors, pairs with a secondary answer (compared pairs with
    one, plus noise-only pairs from a noise tape), first and last start of the real pairs."""

    pairs: int = 0
    compared: int = 0
    errors: int = 0
    secondary: int = 0
    first_ns: int = 1 << 63
    last_ns: int = -(1 << 63)

    def add(self, group: PairGroup) -> None:
        n = group.count
        if group.status != "error" and group.has_secondary:
            self.secondary += n
        if group.status == "noise":
            return
        self.pairs += n
        if group.status == "compared":
            self.compared += n
        else:
            self.errors += n
        self.first_ns = min(self.first_ns, group.first_ns)
        self.last_ns = max(self.last_ns, group.last_ns)


@dataclass(slots=True)
class _SignatureCounts:
    pairs: int
    first_seen_ns: int
    last_seen_ns: int


SigKey = tuple[str, int, str | None]


def _rule_reason(rules: tuple[IgnoreRule, ...], endpoint: str, path: str) -> str | None:
    for rule in rules:
        if rule.matches(endpoint, path):
            return rule.reason
    return None


def build_report(
    store: DiffStore,
    config: DifferConfig,
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
    endpoint: str | None = None,
    fail_on: str | None = None,
    min_samples: int | None = None,
    generated_at_ns: int | None = None,
) -> DiffReport:
    """The report for the pairs in ``[since_ns, until_ns)`` (and ``endpoint``, when given).

    Two streamed passes over the pairs grouped by the differences they showed (SQLite groups them,
    with its indexes for the window and the endpoint), then one ordered pass over the samples: the
    work follows the number of distinct kinds of pair, signatures and fields, never the number of
    pairs, and never endpoints times signatures.
    """
    meta = store.meta()
    if meta is None:
        raise ConfigError("the results database holds no diff run", path=store.path)
    rule = parse_fail_on(fail_on if fail_on is not None else config.fail_on)

    # Pass 1, over groups of pairs that showed the same differences (weighted by their count):
    # endpoint counts, signature counts, per-field noise counts, and per-field candidate counts over
    # what neither a detector nor a rule explains (the rate learned noise is judged on).
    counts: dict[str, _EndpointCounts] = {}
    key_info: dict[int, tuple[str, str, str]] = {}
    signatures: dict[SigKey, _SignatureCounts] = {}
    fixed_reasons: dict[SigKey, str | None] = {}
    noise_counts: dict[tuple[str, str], int] = defaultdict(int)
    #: Pairs whose secondary showed the very same change (endpoint, key: path, kind and transition).
    noise_key_counts: dict[tuple[str, int], int] = defaultdict(int)
    candidate_counts: dict[tuple[str, str], int] = defaultdict(int)

    def key(key_id: int) -> tuple[str, str, str]:
        info = key_info.get(key_id)
        if info is None:
            info = key_info[key_id] = store.diff_key(key_id)
        return info

    # Pass 2 reads the same groups again: kept from pass 1 while they are few (SQLite's grouping is
    # most of a report's cost), else grouped again.
    kept_groups: list[PairGroup] | None = []
    for group in store.pair_groups(since_ns, until_ns, endpoint):
        if kept_groups is not None:
            kept_groups.append(group)
            if len(kept_groups) > _KEPT_GROUPS_MAX:
                kept_groups = None
        ep, n = group.endpoint, group.count
        c = counts.get(ep)
        if c is None:
            c = counts[ep] = _EndpointCounts()
        c.add(group)
        pair_noise: set[tuple[str, str]] = set()
        for noise_key, _ in store.members(group.noise_set):
            pair_noise.add((ep, key(noise_key)[0]))
            noise_key_counts[(ep, noise_key)] += n
        for field_key in pair_noise:
            noise_counts[field_key] += n
        pair_fields: set[tuple[str, str]] = set()
        for key_id, volatile_text in store.members(group.diff_set):
            path, kind, transition = key(key_id)
            volatile = volatile_text or None
            sig_key = (ep, key_id, volatile)
            sig = signatures.get(sig_key)
            if sig is None:
                signatures[sig_key] = _SignatureCounts(n, group.first_ns, group.last_ns)
            else:
                sig.pairs += n
                sig.first_seen_ns = min(sig.first_seen_ns, group.first_ns)
                sig.last_seen_ns = max(sig.last_seen_ns, group.last_ns)
            structural = is_structural(kind, transition)
            if sig_key not in fixed_reasons:
                # Ignore rules never silence structure (DESIGN.md): a rule over a field hides its
                # value changes, not the field vanishing or changing type.
                fixed_reasons[sig_key] = volatile or (None if structural else _rule_reason(config.ignore, ep, path))
            if fixed_reasons[sig_key] is None and not structural:
                pair_fields.add((ep, path))
        for field_key in pair_fields:
            candidate_counts[field_key] += n
    # Endpoints seen only in a noise tape are left out.
    counts = {ep: c for ep, c in counts.items() if c.pairs > 0}

    def noise_rate(ep: str, path: str) -> float | None:
        secondary = counts[ep].secondary
        return noise_counts.get((ep, path), 0) / secondary if secondary else None

    def change_noise_rate(ep: str, key_id: int) -> float | None:
        secondary = counts[ep].secondary
        return noise_key_counts.get((ep, key_id), 0) / secondary if secondary else None

    def signature_noise_rate(sig_key: SigKey) -> float | None:
        """The secondary's rate behind the signature's noise decision: the field's for value
        changes, the same change's for structural ones."""
        ep, key_id, _ = sig_key
        path, kind, transition = key_info[key_id]
        return change_noise_rate(ep, key_id) if is_structural(kind, transition) else noise_rate(ep, path)

    reasons: dict[SigKey, str | None] = {}
    for sig_key, reason in fixed_reasons.items():
        ep, key_id, _ = sig_key
        path, kind, transition = key_info[key_id]
        compared = counts[ep].compared
        if reason is None and not is_structural(kind, transition):
            rate = candidate_counts[(ep, path)] / compared if compared else 0.0
            if is_learned_noise(rate, noise_rate(ep, path), config.noise):
                reason = LEARNED_NOISE
        elif reason is None and kind != "error":
            # A structural change the secondary shows too, as often: the environment's, not the
            # candidate's (a failed secondary is no answer to compare, so errors never are).
            rate = signatures[sig_key].pairs / compared if compared else 0.0
            if is_learned_noise(rate, change_noise_rate(ep, key_id), config.noise):
                reason = LEARNED_NOISE
        reasons[sig_key] = reason

    # Pass 2: which pairs still differ, and each field's differing / suppressed pair counts.
    differing_by_endpoint: dict[str, int] = defaultdict(int)
    field_live: dict[tuple[str, str], int] = defaultdict(int)
    field_suppressed: dict[tuple[str, str], int] = defaultdict(int)
    groups = kept_groups if kept_groups is not None else store.pair_groups(since_ns, until_ns, endpoint)
    for group in groups:
        if group.diff_set == EMPTY_SET or group.endpoint not in counts:
            continue
        ep, n = group.endpoint, group.count
        live: set[tuple[str, str]] = set()
        suppressed: set[tuple[str, str]] = set()
        for key_id, volatile_text in store.members(group.diff_set):
            field_key = (ep, key_info[key_id][0])
            (live if reasons[(ep, key_id, volatile_text or None)] is None else suppressed).add(field_key)
        if live and group.status == "compared":
            differing_by_endpoint[ep] += n
        for field_key in live:
            field_live[field_key] += n
        for field_key in suppressed:
            field_suppressed[field_key] += n

    def rank(sig_key: SigKey) -> tuple[Any, ...]:
        ep, key_id, volatile = sig_key
        path, kind, transition = key_info[key_id]
        pairs = signatures[sig_key].pairs
        return (severity_rank(severity(kind, transition)), -pairs, ep, path, kind, transition, volatile or "")

    examples = _examples(store, config.examples_per_signature, since_ns, until_ns, endpoint, reasons, rank)
    by_endpoint: dict[str, list[SignatureReport]] = defaultdict(list)
    suppression_counts: dict[str, int] = defaultdict(int)
    for sig_key, sig in signatures.items():
        ep, key_id, volatile = sig_key
        path, kind, transition = key_info[key_id]
        reason = reasons[sig_key]
        c = counts[ep]
        denominator = c.compared + c.errors if kind == "error" else c.compared
        if reason is not None:
            suppression_counts[reason] += sig.pairs
        by_endpoint[ep].append(
            SignatureReport(
                id=signature_id(ep, path, kind, transition if volatile is None else f"{transition} {volatile}"),
                endpoint=ep,
                path=path,
                kind=kind,
                transition=transition,
                severity=severity(kind, transition),
                count=sig.pairs,
                rate=sig.pairs / denominator if denominator else 0.0,
                first_seen_ns=sig.first_seen_ns,
                last_seen_ns=sig.last_seen_ns,
                suppressed=reason is not None,
                suppression_reason=reason,
                # Noise is learned only over what no detector or rule explains: for a signature they
                # explain, a measured rate would read as "this field never differs", so it is None.
                noise_rate=None if fixed_reasons[sig_key] is not None else signature_noise_rate(sig_key),
                # Suppressed signatures are summarised (count, rate, reason), never exemplified.
                examples=() if reason is not None else examples.get(sig_key, ()),
            )
        )

    fields_by_endpoint: dict[str, list[FieldStat]] = defaultdict(list)
    for ep, path in sorted(field_live.keys() | field_suppressed.keys()):
        fields_by_endpoint[ep].append(
            FieldStat(
                path,
                field_live.get((ep, path), 0),
                counts[ep].compared,
                field_suppressed.get((ep, path), 0),
                noise_rate(ep, path),
            )
        )

    endpoints: list[EndpointReport] = []
    for ep, c in counts.items():
        sigs = sorted(
            by_endpoint.get(ep, []),
            key=lambda s: (s.suppressed, severity_rank(s.severity), -s.count, s.path, s.kind, s.transition),
        )
        differing = differing_by_endpoint.get(ep, 0)
        endpoints.append(
            EndpointReport(
                endpoint=ep,
                compared=c.compared,
                equal=c.compared - differing,
                differing=differing,
                errors=c.errors,
                severity=min((s.severity for s in sigs if not s.suppressed), key=severity_rank, default=None),
                fields=tuple(fields_by_endpoint.get(ep, ())),
                signatures=tuple(sigs),
            )
        )
    endpoints.sort(
        key=lambda e: (severity_rank(e.severity), -(e.differing / e.compared if e.compared else 0.0), e.endpoint)
    )

    pairs = sum(c.pairs for c in counts.values())
    compared = sum(c.compared for c in counts.values())
    errors = sum(c.errors for c in counts.values())
    latency, judgement = _latency(store, since_ns, until_ns, endpoint, meta.candidate, rule.latency_terms, compared)
    verdict = decide(
        [s for e in endpoints for s in e.signatures],
        rule=rule,
        pairs=pairs,
        compared=compared,
        errors=errors,
        min_samples=config.min_samples if min_samples is None else min_samples,
        latency=judgement if rule.latency_terms else None,
    )
    suppressions = tuple(
        Suppression(reason, n) for reason, n in sorted(suppression_counts.items(), key=lambda item: (-item[1], item[0]))
    )
    differing_total = sum(e.differing for e in endpoints)
    return DiffReport(
        schema_version=REPORT_SCHEMA_VERSION,
        generated_at_ns=time.time_ns() if generated_at_ns is None else generated_at_ns,
        sources=meta.sources,
        baseline_name=meta.baseline,
        candidate_name=meta.candidate,
        secondary_name=meta.secondary,
        window_start_ns=since_ns if since_ns is not None else min((c.first_ns for c in counts.values()), default=None),
        window_end_ns=until_ns if until_ns is not None else max((c.last_ns for c in counts.values()), default=None),
        pairs=pairs,
        compared=compared,
        equal=compared - differing_total,
        differing=differing_total,
        errors=errors,
        noise_suppressed=sum(s.count for s in suppressions),
        suppressions=suppressions,
        endpoints=tuple(endpoints),
        verdict=verdict,
        latency=latency,
    )


_LATENCY_VERDICT_RANK: Final = {"slower": 0, "no significant difference": 1, "faster": 2, "too few samples": 3}


def _latency_rank(c: LatencyComparison) -> tuple[Any, ...]:
    """Slower first (the largest median ratio first), then no difference, faster, too few samples."""
    p50 = c.quantile(0.5)
    return (_LATENCY_VERDICT_RANK.get(c.verdict, 4), -(p50.ratio if p50 is not None else 0.0), -c.pairs, c.endpoint)


def _latency(
    store: DiffStore,
    since_ns: int | None,
    until_ns: int | None,
    endpoint: str | None,
    candidate: str,
    terms: tuple[LatencyTerm, ...],
    compared: int,
) -> tuple[LatencyReport, LatencyJudgement]:
    """The candidate's latency against the baseline's per endpoint over the window's timed pairs.

    The ``MAX_ENDPOINTS`` endpoints with the most timed pairs are compared each; the rest together
    under ``OVERFLOW`` (their histograms added, their sample the smallest priorities of theirs)."""
    bins: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    for occupied in store.latency_bins(since_ns, until_ns, endpoint):
        bins[(occupied.endpoint, occupied.side)][occupied.bin] = occupied.count
    timed = {ep: sum(counts.values()) for (ep, side), counts in bins.items() if side == "baseline"}
    ranked = sorted(timed, key=lambda ep: (-timed[ep], ep))
    tracked = frozenset(ranked[:MAX_ENDPOINTS])
    comparisons: list[LatencyComparison] = []
    overflow: list[tuple[int, float, float]] = []  # (-priority, baseline s, candidate s): a max-heap

    def compare(ep: str, eps: list[str], sample: list[tuple[float, float]]) -> None:
        # One endpoint's sample at a time: memory holds one sample, not every endpoint's.
        tracker = LatencyTracker()
        tracker.load(ep, candidate, histogram(eps, "baseline"), histogram(eps, "candidate"), sample)
        comparisons.extend(tracker.compare(MIN_PAIRS))

    def histogram(eps: list[str], side: str) -> LatencyHistogram:
        total: dict[int, int] = defaultdict(int)
        for ep in eps:
            for index, n in bins[(ep, side)].items():
                total[index] += n
        return LatencyHistogram.from_bins(dict(total))

    for ep, rows in itertools.groupby(
        store.latency_samples(since_ns, until_ns, endpoint, RESERVOIR_SIZE, timed), key=lambda row: row.endpoint
    ):
        if ep in tracked:
            compare(ep, [ep], [(row.baseline_ns / 1e9, row.candidate_ns / 1e9) for row in rows])
            continue
        for row in rows:
            item = (-row.priority, row.baseline_ns / 1e9, row.candidate_ns / 1e9)
            if len(overflow) < RESERVOIR_SIZE:
                heapq.heappush(overflow, item)
            elif item > overflow[0]:
                heapq.heapreplace(overflow, item)
    rest = [ep for ep in ranked if ep not in tracked]
    if rest:
        compare(OVERFLOW, rest, [(b, c) for _, b, c in sorted(overflow, reverse=True)])
    comparisons.sort(key=_latency_rank)
    judgement = evaluate_latency_terms(terms, comparisons)
    timed_pairs = sum(timed.values())
    return (
        LatencyReport(
            pairs=timed_pairs,
            untimed=max(compared - timed_pairs, 0),
            min_pairs=MIN_PAIRS,
            comparisons=tuple(comparisons),
            terms=tuple(term.text for term in terms),
            failures=judgement.failures,
            undecided=tuple(LatencyUndecided(*u) for u in judgement.undecided),
        ),
        judgement,
    )


def _examples(
    store: DiffStore,
    k: int,
    since_ns: int | None,
    until_ns: int | None,
    endpoint: str | None,
    reasons: dict[SigKey, str | None],
    rank: Callable[[SigKey], tuple[Any, ...]],
) -> dict[SigKey, tuple[Example, ...]]:
    """The first ``k`` sampled examples of every unsuppressed signature (the most important first
    while ``EXAMPLES_PER_REPORT`` lasts), read in one ordered pass over the samples (which the
    sampler bounds per signature), then each kept exchange."""
    if k <= 0:
        return {}
    sampled: dict[SigKey, list[int]] = {}
    for row in store.examples_in(since_ns, until_ns, endpoint):
        sig_key = (row.endpoint, row.key_id, row.volatile)
        if sig_key not in reasons or reasons[sig_key] is not None:
            continue
        picked = sampled.setdefault(sig_key, [])
        if len(picked) < k:
            picked.append(row.pair_id)
    # The report's budget goes round by round down the ranking: every signature's first example
    # before any signature's second.
    ranked = sorted(sampled, key=rank)
    chosen: dict[SigKey, list[int]] = {sig_key: [] for sig_key in ranked}
    budget = EXAMPLES_PER_REPORT
    for round_ in range(k):
        for sig_key in ranked:
            if budget == 0:
                break
            if round_ < len(sampled[sig_key]):
                chosen[sig_key].append(sampled[sig_key][round_])
                budget -= 1
    out: dict[SigKey, tuple[Example, ...]] = {}
    for sig_key, pair_ids in chosen.items():
        ep, key_id, volatile = sig_key
        examples: list[Example] = []
        for pair_id in pair_ids:
            rows = store.example_differences(pair_id)
            own = [
                path for other_key, path, other_volatile in rows if (other_key, other_volatile) == (key_id, volatile)
            ]
            # The paths to highlight: this signature's, then every other unsuppressed one in the pair.
            others = [
                path
                for other_key, path, other_volatile in rows
                if (other_key, other_volatile) != (key_id, volatile)
                and reasons.get((ep, other_key, other_volatile)) is None
            ]
            exchange = store.example_exchange(pair_id)
            examples.append(
                Example(
                    exchange_id=exchange.id,
                    started_at_ns=exchange.started_at_ns,
                    request=exchange.request,
                    baseline=exchange.primary,
                    candidate=exchange.shadows.get(EXAMPLE_CANDIDATE),
                    paths=tuple(dict.fromkeys([*own, *others])),
                )
            )
        out[sig_key] = tuple(examples)
    return out
