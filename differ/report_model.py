"""The diff report as data: what the engine and store produce and every renderer reads.

The engine/store side builds one ``DiffReport``; the renderers (terminal, JSON, HTML, Markdown, JUnit)
only format it. This module must never compute anything: no comparing, no I/O. Field names here are
the JSON report's field names (docs/report-schema.md), so renaming one is a schema change.

Paths name a place in a response: ``status``, ``header.<lower-case name>``, ``body`` (whole body,
text or binary), ``body.<json path>`` with ``[*]`` for folded array indexes in signatures and real
indexes (``[3]``) in examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from shadowtap.differ.latency import LatencyComparison, LatencyFailure
from shadowtap.recorder.model import Outcome, Request

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "SEVERITIES",
    "DiffReport",
    "EndpointReport",
    "Example",
    "NO_LATENCY",
    "FieldStat",
    "LatencyReport",
    "LatencyUndecided",
    "Severity",
    "SignatureReport",
    "Suppression",
    "Verdict",
]

REPORT_SCHEMA_VERSION: Final = 1

Severity = Literal["critical", "high", "medium", "low"]
#: Most severe first; renderers rank by this order.
SEVERITIES: Final[tuple[Severity, ...]] = ("critical", "high", "medium", "low")


@dataclass(frozen=True, slots=True)
class Example:
    """One sampled exchange showing a signature: the request and both outcomes, secrets redacted.

    ``paths`` are the full (unfolded) paths that differ in this exchange.
    """

    exchange_id: str
    started_at_ns: int
    request: Request
    baseline: Outcome | None
    candidate: Outcome | None
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SignatureReport:
    """A kind of difference seen at one endpoint and path, with its counts and examples.

    ``kind``: status, removed, added, type, value, length, header, text, binary, error.
    ``transition``: the value-class change (``200->500``, ``int->null``, ``present->missing``).
    ``rate`` is ``count`` over the endpoint's compared pairs; ``noise_rate`` the rate at which the
    same path differed between baseline and secondary beyond what detectors and rules explain
    (``None`` without a secondary, and for signatures a detector or ignore rule suppressed).
    """

    id: str
    endpoint: str
    path: str
    kind: str
    transition: str
    severity: Severity
    count: int
    rate: float
    first_seen_ns: int
    last_seen_ns: int
    suppressed: bool
    suppression_reason: str | None
    noise_rate: float | None
    examples: tuple[Example, ...]


@dataclass(frozen=True, slots=True)
class FieldStat:
    """One node of an endpoint's field tree: how often this (folded) path differed.

    ``differing`` counts pairs where the path differed and was not suppressed; ``suppressed`` those
    where it differed but noise rules silenced it; ``compared`` the endpoint's compared pairs.
    """

    path: str
    differing: int
    compared: int
    suppressed: int
    noise_rate: float | None


@dataclass(frozen=True, slots=True)
class EndpointReport:
    """One endpoint template (``GET /users/{id}``) and what differed there.

    ``severity`` is the worst unsuppressed signature's, ``None`` when nothing unsuppressed differs.
    ``signatures`` are ranked by severity, then count.
    """

    endpoint: str
    compared: int
    equal: int
    differing: int
    errors: int
    severity: Severity | None
    fields: tuple[FieldStat, ...]
    signatures: tuple[SignatureReport, ...]


@dataclass(frozen=True, slots=True)
class Suppression:
    """How many differences one reason silenced (``volatile:uuid``, ``rule:body.ts``, ``learned-noise``)."""

    reason: str
    count: int


@dataclass(frozen=True, slots=True)
class LatencyUndecided:
    """A ``--fail-on`` latency term that could not be judged on one endpoint, and why."""

    term: str
    endpoint: str
    shadow: str
    reason: str


@dataclass(frozen=True, slots=True)
class LatencyReport:
    """Is the candidate slower? Its latency against the baseline's on the same requests.

    ``pairs``: compared pairs with both sides timed; ``untimed``: compared pairs where a side had no
    timing (not in any comparison); ``min_pairs``: pairs an endpoint needs for any statement.
    ``comparisons``: one per endpoint (``shadow`` is the candidate's name), those the test finds
    slower first. ``terms``: the ``--fail-on`` latency terms; ``failures``: where a term failed;
    ``undecided``: where one could not be judged (too few pairs).
    """

    pairs: int = 0
    untimed: int = 0
    min_pairs: int = 0
    comparisons: tuple[LatencyComparison, ...] = ()
    terms: tuple[str, ...] = ()
    failures: tuple[LatencyFailure, ...] = ()
    undecided: tuple[LatencyUndecided, ...] = ()


#: The latency of a report nothing was timed in.
NO_LATENCY: Final = LatencyReport()


@dataclass(frozen=True, slots=True)
class Verdict:
    """The gate: ``exit_code`` 0 pass, 1 regression above threshold, 2 not enough samples / errors.

    ``failing_latency``: ``"<term> at <endpoint>"`` for each latency term that failed.
    """

    exit_code: int
    reason: str
    failing_signatures: tuple[str, ...]
    failing_latency: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DiffReport:
    """Everything a reviewer sees. Endpoints are ranked most severe and most frequent first.

    ``pairs``: exchanges considered; ``compared``: pairs where both sides had an outcome to compare;
    ``errors``: pairs where the candidate (or baseline) failed; ``noise_suppressed``: differences
    silenced, detailed in ``suppressions``; ``latency``: the candidate's latency against the baseline's.
    """

    schema_version: int
    generated_at_ns: int
    sources: tuple[str, ...]
    baseline_name: str
    candidate_name: str
    secondary_name: str | None
    window_start_ns: int | None
    window_end_ns: int | None
    pairs: int
    compared: int
    equal: int
    differing: int
    errors: int
    noise_suppressed: int
    suppressions: tuple[Suppression, ...]
    endpoints: tuple[EndpointReport, ...]
    verdict: Verdict
    latency: LatencyReport = NO_LATENCY
