"""Builds the ``DiffReport`` from the store: counts, noise decisions, signatures, examples, verdict.

Everything a report says is recomputed here from stored pairs and differences, for any time window
or endpoint, so ``shadowtap report`` and ``shadowtap diff`` agree by construction. Suppression is
decided per signature, in order: a volatile detector (decided at compare time), a user ignore rule,
then learned noise (Diffy's rule, see ``is_learned_noise``), never for structural kinds. This module
must never read tapes, and reads the store only through ``DiffStore``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Final

from differ.config import DifferConfig, IgnoreRule, NoiseThresholds
from differ.report_model import (
    REPORT_SCHEMA_VERSION,
    DiffReport,
    EndpointReport,
    Example,
    FieldStat,
    SignatureReport,
    Suppression,
)
from differ.signatures import is_structural, severity, severity_rank, signature_id
from differ.store import EXAMPLE_CANDIDATE, DiffStore
from differ.verdict import decide, parse_fail_on
from recorder.errors import ConfigError

__all__ = ["LEARNED_NOISE", "build_report", "is_learned_noise"]

LEARNED_NOISE: Final = "learned-noise"


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
    pairs: int = 0
    compared: int = 0
    errors: int = 0
    secondary: int = 0


@dataclass(slots=True)
class _SignatureCounts:
    pairs: set[int]
    first_seen_ns: int
    last_seen_ns: int


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
    """The report for the pairs in ``[since_ns, until_ns)`` (and ``endpoint``, when given)."""
    meta = store.meta()
    if meta is None:
        raise ConfigError("the results database holds no diff run", path=store.path)
    rule = parse_fail_on(fail_on if fail_on is not None else config.fail_on)

    counts: dict[str, _EndpointCounts] = defaultdict(_EndpointCounts)
    pair_info: dict[int, tuple[str, int, bool]] = {}
    first_ns: int | None = None
    last_ns: int | None = None
    for pair in store.pairs(since_ns, until_ns, endpoint):
        c = counts[pair.endpoint]
        c.pairs += 1
        if pair.status == "error":
            c.errors += 1
        else:
            c.compared += 1
            c.secondary += pair.has_secondary
        pair_info[pair.id] = (pair.endpoint, pair.started_at_ns, pair.status == "error")
        first_ns = pair.started_at_ns if first_ns is None else min(first_ns, pair.started_at_ns)
        last_ns = pair.started_at_ns if last_ns is None else max(last_ns, pair.started_at_ns)

    noise_pairs: dict[tuple[str, str], set[int]] = defaultdict(set)
    signatures: dict[tuple[str, int, str | None], _SignatureCounts] = {}
    key_info: dict[int, tuple[str, str, str]] = {}
    for diff in store.differences(since_ns, until_ns, endpoint):
        ep, started, _ = pair_info[diff.pair_id]
        if diff.side == "secondary":
            noise_pairs[(ep, diff.path)].add(diff.pair_id)
            continue
        key_info[diff.key_id] = (diff.path, diff.kind, diff.transition)
        sig_key = (ep, diff.key_id, diff.volatile)
        sig = signatures.get(sig_key)
        if sig is None:
            signatures[sig_key] = _SignatureCounts({diff.pair_id}, started, started)
        else:
            sig.pairs.add(diff.pair_id)
            sig.first_seen_ns = min(sig.first_seen_ns, started)
            sig.last_seen_ns = max(sig.last_seen_ns, started)

    def noise_rate(ep: str, path: str) -> float | None:
        secondary = counts[ep].secondary
        return len(noise_pairs.get((ep, path), ())) / secondary if secondary else None

    # First the reasons that do not depend on rates, then each field's candidate rate over what is
    # left (non-structural only), which learned noise compares with the field's noise rate.
    reasons: dict[tuple[str, int, str | None], str | None] = {}
    field_candidate_pairs: dict[tuple[str, str], set[int]] = defaultdict(set)
    for sig_key, sig in signatures.items():
        ep, key_id, volatile = sig_key
        path, kind, transition = key_info[key_id]
        reason = volatile or _rule_reason(config.ignore, ep, path)
        reasons[sig_key] = reason
        if reason is None and not is_structural(kind, transition):
            field_candidate_pairs[(ep, path)].update(sig.pairs)
    for sig_key, reason in reasons.items():
        ep, key_id, _ = sig_key
        path, kind, transition = key_info[key_id]
        if reason is not None or is_structural(kind, transition):
            continue
        compared = counts[ep].compared
        rate = len(field_candidate_pairs[(ep, path)]) / compared if compared else 0.0
        if is_learned_noise(rate, noise_rate(ep, path), config.noise):
            reasons[sig_key] = LEARNED_NOISE

    differing_pairs: set[int] = set()
    for sig_key, sig in signatures.items():
        if reasons[sig_key] is None:
            differing_pairs.update(sig.pairs)
    # A failed pair is an error, not a differing comparison.
    differing_by_endpoint: dict[str, int] = defaultdict(int)
    for pair_id in differing_pairs:
        ep, _, is_error = pair_info[pair_id]
        if not is_error:
            differing_by_endpoint[ep] += 1

    k = config.examples_per_signature
    by_endpoint: dict[str, list[SignatureReport]] = defaultdict(list)
    field_stats: dict[tuple[str, str], tuple[set[int], set[int]]] = {}
    suppression_counts: dict[str, int] = defaultdict(int)
    for sig_key, sig in signatures.items():
        ep, key_id, volatile = sig_key
        path, kind, transition = key_info[key_id]
        reason = reasons[sig_key]
        count = len(sig.pairs)
        denominator = counts[ep].compared + counts[ep].errors if kind == "error" else counts[ep].compared
        unsuppressed_pairs, suppressed_pairs = field_stats.setdefault((ep, path), (set(), set()))
        (suppressed_pairs if reason is not None else unsuppressed_pairs).update(sig.pairs)
        if reason is not None:
            suppression_counts[reason] += count
        examples = _examples(store, ep, key_id, volatile, k, since_ns, until_ns, reasons)
        by_endpoint[ep].append(
            SignatureReport(
                id=signature_id(ep, path, kind, transition if volatile is None else f"{transition} {volatile}"),
                endpoint=ep,
                path=path,
                kind=kind,
                transition=transition,
                severity=severity(kind, transition),
                count=count,
                rate=count / denominator if denominator else 0.0,
                first_seen_ns=sig.first_seen_ns,
                last_seen_ns=sig.last_seen_ns,
                suppressed=reason is not None,
                suppression_reason=reason,
                noise_rate=noise_rate(ep, path),
                examples=examples,
            )
        )

    endpoints: list[EndpointReport] = []
    for ep, c in counts.items():
        sigs = sorted(
            by_endpoint.get(ep, []),
            key=lambda s: (s.suppressed, severity_rank(s.severity), -s.count, s.path, s.kind, s.transition),
        )
        live = [s for s in sigs if not s.suppressed]
        differing = differing_by_endpoint[ep]
        fields = tuple(
            FieldStat(path, len(unsup), c.compared, len(sup), noise_rate(ep, path))
            for (field_ep, path), (unsup, sup) in sorted(field_stats.items())
            if field_ep == ep
        )
        endpoints.append(
            EndpointReport(
                endpoint=ep,
                compared=c.compared,
                equal=c.compared - differing,
                differing=differing,
                errors=c.errors,
                severity=min((s.severity for s in live), key=severity_rank, default=None),
                fields=fields,
                signatures=tuple(sigs),
            )
        )
    endpoints.sort(
        key=lambda e: (severity_rank(e.severity), -(e.differing / e.compared if e.compared else 0.0), e.endpoint)
    )

    all_signatures = [s for e in endpoints for s in e.signatures]
    pairs = sum(c.pairs for c in counts.values())
    compared = sum(c.compared for c in counts.values())
    errors = sum(c.errors for c in counts.values())
    verdict = decide(
        all_signatures,
        rule=rule,
        pairs=pairs,
        compared=compared,
        errors=errors,
        min_samples=config.min_samples if min_samples is None else min_samples,
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
        window_start_ns=since_ns if since_ns is not None else first_ns,
        window_end_ns=until_ns if until_ns is not None else last_ns,
        pairs=pairs,
        compared=compared,
        equal=compared - differing_total,
        differing=differing_total,
        errors=errors,
        noise_suppressed=sum(s.count for s in suppressions),
        suppressions=suppressions,
        endpoints=tuple(endpoints),
        verdict=verdict,
    )


def _examples(
    store: DiffStore,
    endpoint: str,
    key_id: int,
    volatile: str | None,
    k: int,
    since_ns: int | None,
    until_ns: int | None,
    reasons: dict[tuple[str, int, str | None], str | None],
) -> tuple[Example, ...]:
    if k <= 0:
        return ()
    examples: list[Example] = []
    # Over-fetch: a stored sample may show the same key with another volatile verdict.
    for pair_id in store.example_pairs(endpoint, key_id, 4 * k, since_ns, until_ns):
        rows = store.pair_differences(pair_id)
        own = [path for other_key, path, other_volatile in rows if (other_key, other_volatile) == (key_id, volatile)]
        if not own:
            continue
        # The paths to highlight: this signature's, then every other unsuppressed one in the pair.
        others = [
            path
            for other_key, path, other_volatile in rows
            if (other_key, other_volatile) != (key_id, volatile)
            and reasons.get((endpoint, other_key, other_volatile)) is None
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
        if len(examples) >= k:
            break
    return tuple(examples)
