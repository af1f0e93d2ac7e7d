"""The engine: one Exchange in, the comparison of its baseline with its candidate (and secondary) out.

``DiffEngine.compare_exchange`` is a pure function of one exchange, usable from the CLI's loop or off
the proxy's event loop in a worker. It picks the named outcomes, skips exchanges whose candidate was
never sent (sampled out, queue full ...), and compares, each shadow against the primary with what
the proxy changed in that shadow's request (its recorded request delta, ``shadowtap.differ.rewrites``). It
must never do I/O, keep state between calls, or decide severity and noise: that happens when
results are aggregated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from shadowtap.differ.compare import Comparator, Difference
from shadowtap.differ.config import CompareOptions
from shadowtap.differ.rewrites import Rewrites
from shadowtap.recorder.model import PRIMARY, Exchange, Failure, FailureKind, Response

__all__ = ["DiffEngine", "PairResult", "PairStatus"]

PairStatus = Literal["compared", "error", "skipped"]

#: Failure kinds that mean "the request was never sent to that upstream": not a failure of it.
NOT_SENT: Final = frozenset(
    {
        FailureKind.QUEUE_FULL,
        FailureKind.BREAKER_OPEN,
        FailureKind.SAMPLED_OUT,
        FailureKind.METHOD_NOT_ALLOWED,
        FailureKind.RATE_LIMITED,
        FailureKind.DISABLED,
        FailureKind.CANCELLED,
    }
)


@dataclass(frozen=True, slots=True)
class PairResult:
    """What one exchange showed.

    ``status``: ``compared`` (both sides answered), ``error`` (one side failed; ``differences`` holds
    the ``error`` difference) or ``skipped`` (no pair: the candidate or baseline was never sent).
    ``noise`` holds baseline-vs-secondary differences, ``None`` when there was no secondary answer.
    """

    status: PairStatus
    differences: tuple[Difference, ...] = ()
    noise: tuple[Difference, ...] | None = None


_SKIPPED: Final = PairResult("skipped")
_EQUAL: Final = PairResult("compared")


def _sent(outcome: Response | Failure | None) -> bool:
    return outcome is not None and not (isinstance(outcome, Failure) and outcome.kind in NOT_SENT)


class DiffEngine:
    """Compares ``baseline`` (default ``primary``) with ``candidate`` in each exchange."""

    __slots__ = ("baseline", "candidate", "comparator", "secondary")

    def __init__(
        self, options: CompareOptions, *, candidate: str, baseline: str = PRIMARY, secondary: str | None = None
    ) -> None:
        self.comparator = Comparator(options)
        self.baseline = baseline
        self.candidate = candidate
        self.secondary = secondary

    def _rewrites(self, exchange: Exchange, name: str) -> Rewrites | None:
        """What the proxy changed in ``name``'s copy, against the request the baseline (the primary)
        answered; None without a recorded delta."""
        delta = exchange.request_deltas.get(name)
        return None if delta is None or self.baseline != PRIMARY else Rewrites(exchange.request, delta)

    def compare_exchange(self, exchange: Exchange) -> PairResult:
        baseline = exchange.outcome(self.baseline)
        candidate = exchange.outcome(self.candidate)
        if baseline is None or candidate is None or not _sent(baseline) or not _sent(candidate):
            return _SKIPPED
        compare = self.comparator.compare
        if not (isinstance(baseline, Response) and isinstance(candidate, Response)):
            return PairResult("error", tuple(compare(baseline, candidate)))
        noise: tuple[Difference, ...] | None = None
        deltas = exchange.request_deltas
        if self.secondary is not None:
            secondary = exchange.outcome(self.secondary)
            if isinstance(secondary, Response):
                rewrites = self._rewrites(exchange, self.secondary) if deltas else None
                noise = tuple(compare(baseline, secondary, rewrites, exchange.request.target))
        rewrites = self._rewrites(exchange, self.candidate) if deltas else None
        differences = compare(baseline, candidate, rewrites, exchange.request.target)
        if not differences and noise is None:
            return _EQUAL
        return PairResult("compared", tuple(differences), noise)
