"""The gate: turns a report's signatures and counts into an exit code, by the ``--fail-on`` SPEC.

SPEC is clauses separated by ``,`` (any clause failing fails the run); a clause is conditions joined
by ``&`` (all must hold for one signature): ``critical|high|medium|low`` (that severity or worse),
``severity>=medium``, ``rate>0.01``, ``count>=5``, ``kind=status``, ``any``, or ``never``. Only
unsuppressed signatures are tested. A clause may instead be a latency term (``latency.p99>+20%``,
``latency.p50>+5ms``, ``latency.p90>2x``: ``shadowtap.differ.latency``), judged on the report's
latency comparisons; a SPEC of latency terms only fails on no signature. This module must never
look at responses or the store.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from shadowtap.differ.latency import LatencyJudgement, LatencyTerm, parse_latency_term
from shadowtap.differ.report_model import SEVERITIES, SignatureReport, Verdict
from shadowtap.differ.signatures import severity_rank
from shadowtap.recorder.errors import ConfigError

__all__ = ["EXIT_INFRASTRUCTURE", "EXIT_PASS", "EXIT_REGRESSION", "FailRule", "decide", "parse_fail_on"]

EXIT_PASS: Final = 0
EXIT_REGRESSION: Final = 1
EXIT_INFRASTRUCTURE: Final = 2

_OPS: Final[dict[str, Callable[[float, float], bool]]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    "=": operator.eq,
}
_CONDITION: Final = re.compile(r"(?P<field>severity|rate|count|kind)\s*(?P<op>>=|<=|==|!=|>|<|=)\s*(?P<value>\S+)\Z")

Condition = Callable[[SignatureReport], bool]


@dataclass(frozen=True, slots=True)
class FailRule:
    """A parsed SPEC: ``clauses`` of conditions; a signature fails when all of one clause hold.
    ``latency_terms``: the SPEC's latency clauses."""

    spec: str
    clauses: tuple[tuple[Condition, ...], ...]
    latency_terms: tuple[LatencyTerm, ...] = ()

    def fails(self, signature: SignatureReport) -> bool:
        return any(all(cond(signature) for cond in clause) for clause in self.clauses)


def _error(spec: str, message: str) -> ConfigError:
    return ConfigError(f"{message} in {spec!r}; e.g. 'high', 'severity>=medium&rate>0.01', 'never'", field="--fail-on")


def _severity_condition(op: Callable[[float, float], bool], level: str, spec: str) -> Condition:
    if level not in SEVERITIES:
        raise _error(spec, f"unknown severity {level!r}")
    # Ranks grow as severity falls, so "severity >= high" is "rank <= rank(high)": compare negated.
    wanted = -SEVERITIES.index(level)
    return lambda sig: op(-severity_rank(sig.severity), wanted)


def _condition(text: str, spec: str) -> Condition:
    if text in SEVERITIES:
        return _severity_condition(operator.ge, text, spec)
    if text == "any":
        return lambda sig: True
    match = _CONDITION.match(text)
    if match is None:
        raise _error(spec, f"cannot read condition {text!r}")
    field, op, value = match["field"], _OPS[match["op"]], match["value"]
    if field == "severity":
        return _severity_condition(op, value, spec)
    if field == "kind":
        if match["op"] not in ("=", "==", "!="):
            raise _error(spec, "kind takes = or !=")
        if match["op"] == "!=":
            return lambda sig: sig.kind != value
        return lambda sig: sig.kind == value
    try:
        number = float(value)
    except ValueError:
        raise _error(spec, f"{field} needs a number, not {value!r}") from None
    if field == "rate":
        return lambda sig: op(sig.rate, number)
    return lambda sig: op(sig.count, number)


def parse_fail_on(spec: str) -> FailRule:
    """Parse a ``--fail-on`` SPEC; ``never`` gives a rule no signature fails."""
    text = spec.strip().lower()
    if not text:
        raise _error(spec, "empty SPEC")
    if text in ("never", "none"):
        return FailRule(spec, ())
    clauses: list[tuple[Condition, ...]] = []
    terms: list[LatencyTerm] = []
    for clause in text.split(","):
        if clause.strip().startswith("latency."):
            terms.append(parse_latency_term(clause))
            continue
        if clause.strip() in ("never", "none") and all(
            c.strip() in ("never", "none") or c.strip().startswith("latency.") for c in text.split(",")
        ):
            continue  # 'never,latency.p99>+20%': no signature fails, the latency terms still do
        conditions = tuple(_condition(part.strip(), spec) for part in clause.split("&") if part.strip())
        if not conditions:
            raise _error(spec, "empty clause")
        clauses.append(conditions)
    return FailRule(spec, tuple(clauses), tuple(terms))


def decide(
    signatures: Iterable[SignatureReport],
    *,
    rule: FailRule,
    pairs: int,
    compared: int,
    errors: int,
    min_samples: int,
    latency: LatencyJudgement | None = None,
) -> Verdict:
    """Exit 2 when the run cannot be trusted (too few compared pairs, most candidates failed), else
    exit 1 when an unsuppressed signature fails ``rule`` or a latency term failed (``latency``, the
    judgement of ``rule.latency_terms``), else exit 2 when the rule has latency terms and not one
    could be judged on any endpoint (too few timed pairs: a latency gate that saw nothing is not a
    pass), else 0. Failing signatures and latency terms are listed in every case, so a run that is
    both untrustworthy and failing still names what it saw."""
    failing: Sequence[SignatureReport] = [s for s in signatures if not s.suppressed and rule.fails(s)]
    failing_ids = tuple(s.id for s in failing)
    latency_failures = () if latency is None else latency.failures
    failing_latency = tuple(f"{f.term} at {f.endpoint}" for f in latency_failures)
    if pairs > 0 and errors * 2 > pairs:
        return Verdict(
            EXIT_INFRASTRUCTURE,
            f"{errors} of {pairs} pairs failed: the candidate or baseline is unhealthy",
            failing_ids,
            failing_latency,
        )
    if compared < min_samples:
        return Verdict(
            EXIT_INFRASTRUCTURE,
            f"only {compared} pairs compared, fewer than {min_samples}",
            failing_ids,
            failing_latency,
        )
    if failing or latency_failures:
        reasons: list[str] = []
        if failing:
            worst = min(failing, key=lambda s: (severity_rank(s.severity), -s.count))
            reasons.append(
                f"{len(failing)} signature(s) fail '{rule.spec}', worst: {worst.severity} {worst.kind} "
                f"at {worst.endpoint} {worst.path} ({worst.transition}) in {worst.count} pairs"
            )
        if latency_failures:
            first = latency_failures[0]
            reasons.append(
                f"{len(latency_failures)} latency term(s) fail, first: {first.term} at {first.endpoint}: "
                f"{first.statement}"
            )
        return Verdict(EXIT_REGRESSION, "; ".join(reasons), failing_ids, failing_latency)
    if rule.latency_terms and (latency is None or latency.judged == 0):
        undecided = 0 if latency is None else len({(e, s) for _, e, s, _ in latency.undecided})
        why = (
            f"all {undecided} endpoint(s) with timed pairs have too few of them"
            if undecided
            else "no compared pair has both sides timed"
        )
        return Verdict(EXIT_INFRASTRUCTURE, f"no latency term could be judged: {why}", (), ())
    judged = "" if latency is None or not rule.latency_terms else f", {latency.judged} latency judgement(s)"
    return Verdict(EXIT_PASS, f"{compared} pairs compared{judged}, nothing fails '{rule.spec}'", ())
