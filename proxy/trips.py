"""Trip rules: guard rails that switch a shadow's mirroring off by themselves.

A rule such as ``shadow.errors>20%/1m`` or ``v2:shadow.p99>3x primary/1m`` is judged once a second
(``TripGuard.tick``, on a loop timer) over a sliding window of one-second buckets. What it reads is
what the metrics already count on the data path (``shadowtap.proxy.metrics.ProxyMetrics``):
cumulative counters of each shadow's answers, 5xx answers and failed copies, and fine latency
histograms (``metrics.TRIP_BINS``) of the primary and of each shadow. The guard takes the difference of
those counters from one tick to the next, so the data path does no more per request than add to a
counter. A window's figures are kept as running sums over a bounded ring of sparse buckets.

A rule that holds over a window with at least its minimum of samples trips: the shadow's mirroring
flag goes off (``RuntimeFlags``, the flag the kill switch flips) with the rule's number in the
flags' ``tripped`` slot, one warning line says the rule, the observed value and the window, and the
shadow stays off until a person turns it back on (``PUT /flags``) or, for a rule with ``rearm``,
until that time has passed. A shadow is judged only on the traffic since its mirroring was last
turned on: while it is off (tripped, the kill switch, ``mirroring: false``) its windows restart.

Grammar (``docs/proxy.md``, "Trip rules")::

    [SHADOW:]METRIC OP VALUE[/WINDOW][;rearm=DURATION][;min=N][;baseline=DURATION]

    shadow.errors>20%          failed copies + 5xx answers, of all copies that ended
    shadow.p99>3x primary      the shadow's p99 over the window against the primary's, same window
    shadow.p99>250ms           the shadow's p99 against a fixed bound (ms or s)
    primary.p99>+10%           the primary's p99 over the window against its own p99 over the
                               ``baseline`` (default 5m) just before the window
    diff.critical>=1           unsuppressed signatures of that severity or worse (critical|high|
                               medium|low; ``major`` is ``high``) the live differ saw in the window
    diff.differing>10%         compared pairs that differed (unsuppressed), of all compared in the window

The ``diff.*`` rules are judged on the live differ's results (``shadowtap.proxy.live_results``
reads the live store once a second in a thread and hands each shadow's window figures to
``TripGuard.take_diff``); while live diff is off, starting, paused or its noise model warms up
they say so and never trip.

With ``--workers N`` each worker judges the traffic it serves; a trip in one switches the shadow off
for all (the flags are shared). This module must never run on the data path: it reads counters on a
timer and flips flags.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, compress
from operator import sub
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from shadowtap.proxy.metrics import TRIP_BINS, trip_bin_s
from shadowtap.recorder.errors import ConfigError

if TYPE_CHECKING:
    from shadowtap.proxy.flags import RuntimeFlags
    from shadowtap.proxy.metrics import ProxyMetrics

__all__ = [
    "COPY_ERRORS",
    "DIFF_KINDS",
    "DiffWindow",
    "TripGuard",
    "TripRule",
    "parse_trip",
    "parse_trips",
]

log = logging.getLogger(__name__)

#: The mirror outcomes (``FailureKind`` values) that count as a shadow's errors: the copy was sent
#: (or tried) and got no usable answer. Drops before sending (queue full, breaker open, sampled out,
#: cancelled by the kill switch) say nothing about the shadow's health and are not counted.
COPY_ERRORS: Final = frozenset({"connect-error", "timeout", "reset", "bad-response", "incomplete", "other"})

#: The longest a window plus its baseline may span: the ring holds one bucket per second.
MAX_SPAN_S: Final = 15 * 60.0
#: Samples a window needs before a rule may trip, unless the rule says ``min=N``.
DEFAULT_MIN_ERRORS: Final = 20
DEFAULT_MIN_LATENCY: Final = 100
DEFAULT_WINDOW_S: Final = 60.0
DEFAULT_BASELINE_S: Final = 300.0
SEVERITIES: Final = ("critical", "high", "medium", "low")
#: Other words a ``diff.SEVERITY`` rule may use.
SEVERITY_ALIASES: Final = {"major": "high"}

_RULE_RE: Final = re.compile(
    r"^(?:(?P<shadow>[A-Za-z0-9_.-]+):)?"
    r"(?P<metric>shadow\.errors|shadow\.p\d{1,2}(?:\.\d+)?|primary\.p\d{1,2}(?:\.\d+)?|diff\.[a-z]+)"
    r"\s*(?P<op>>=|>)\s*(?P<value>[^/;]+?)\s*(?:/\s*(?P<window>[^;]+?)\s*)?(?P<options>(?:;[^;]*)*)$"
)
_DURATION_RE: Final = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h)$")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class DiffWindow(NamedTuple):
    """What the live differ saw of one shadow's pairs since a time: compared pairs, those that
    differed (an unsuppressed difference), errors, and unsuppressed signatures by severity."""

    compared: int
    differing: int
    errors: int
    signatures: dict[str, int]


#: The rule kinds judged on the live differ's results rather than the proxy's counters.
DIFF_KINDS: Final = frozenset({"diff", "diff_rate"})


@dataclass(frozen=True, slots=True)
class TripRule:
    """One parsed rule; ``text`` is what the user wrote, the rule's name in logs, metrics and flags.

    ``kind``: ``errors`` (``threshold`` a fraction), ``vs_primary`` (``threshold`` a factor of the
    primary's percentile), ``absolute`` (seconds), ``primary`` (``threshold`` a relative increase
    over the baseline), ``diff`` (a count of signatures of ``severity`` or worse) or ``diff_rate``
    (``threshold`` a fraction of compared pairs that differed).
    """

    text: str
    kind: str
    threshold: float
    inclusive: bool
    window_s: float
    shadow: str | None = None
    quantile: float = 0.0
    severity: str = ""
    rearm_s: float | None = None
    min_samples: int = DEFAULT_MIN_ERRORS
    baseline_s: float = 0.0

    def applies_to(self, shadow: str) -> bool:
        return self.shadow is None or self.shadow == shadow

    def exceeds(self, observed: float) -> bool:
        return observed >= self.threshold if self.inclusive else observed > self.threshold


def _duration(text: str, rule: str, what: str) -> float:
    match = _DURATION_RE.match(text.strip())
    if match is None:
        raise ConfigError(f"{what} {text!r} is not a duration such as 30s, 1m, 1h (in trip rule {rule!r})")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{what} must be > 0, not {text!r} (in trip rule {rule!r})")
    return seconds


def parse_trip(text: str, shadow_names: Sequence[str] | None = None) -> TripRule:
    """Parse one rule; a ``ConfigError`` quotes the rule. With ``shadow_names``, a rule naming a shadow
    that is not configured is refused."""
    if not isinstance(text, str):
        raise ConfigError(f"expected a rule such as 'shadow.errors>20%/1m', not {text!r}")
    rule = text.strip()
    match = _RULE_RE.match(rule)
    if match is None:
        raise ConfigError(
            f"cannot read trip rule {rule!r}: expected [SHADOW:]METRIC>VALUE[/WINDOW][;rearm=5m][;min=N], with "
            "METRIC shadow.errors, shadow.pNN, primary.pNN, diff.differing or diff.SEVERITY "
            "(e.g. 'shadow.errors>20%/1m')"
        )
    shadow, metric, value = match.group("shadow"), match.group("metric"), match.group("value").strip()
    if shadow is not None and shadow_names is not None and shadow not in shadow_names:
        raise ConfigError(f"no shadow named {shadow!r} (in trip rule {rule!r})")
    inclusive = match.group("op") == ">="
    window_s = DEFAULT_WINDOW_S if match.group("window") is None else _duration(match.group("window"), rule, "window")
    options: dict[str, str] = {}
    for item in match.group("options").split(";")[1:]:
        key, sep, option = item.partition("=")
        key = key.strip()
        if not sep or key not in ("rearm", "min", "baseline") or key in options:
            raise ConfigError(
                f"unknown or repeated option {item.strip()!r} (known: rearm, min, baseline) in trip rule {rule!r}"
            )
        options[key] = option.strip()
    rearm_s = _duration(options["rearm"], rule, "rearm") if "rearm" in options else None
    values: dict[str, Any] = {}
    if metric == "shadow.errors":
        number = _number(value.removesuffix("%"), rule) if value.endswith("%") else None
        if number is None or not 0 <= number < 100:
            raise ConfigError(
                f"shadow.errors takes a percent within 0..100 such as 20%, not {value!r} (in trip rule {rule!r})"
            )
        values = {"kind": "errors", "threshold": number / 100}
    elif metric.startswith("shadow.p"):
        quantile = _quantile(metric, rule)
        if value.endswith("primary"):
            factor = value.removesuffix("primary").strip()
            number = _number(factor.removesuffix("x"), rule) if factor.endswith("x") else None
            if number is None or number <= 0:
                raise ConfigError(f"expected a factor such as '3x primary', not {value!r} (in trip rule {rule!r})")
            values = {"kind": "vs_primary", "threshold": number, "quantile": quantile}
        else:
            values = {"kind": "absolute", "threshold": _duration(value, rule, "latency"), "quantile": quantile}
    elif metric.startswith("primary.p"):
        quantile = _quantile(metric, rule)
        number = _number(value[1:-1], rule) if value.startswith("+") and value.endswith("%") else None
        if number is None or number <= 0:
            raise ConfigError(f"primary.pNN takes an increase such as +10%, not {value!r} (in trip rule {rule!r})")
        baseline_s = _duration(options["baseline"], rule, "baseline") if "baseline" in options else DEFAULT_BASELINE_S
        if window_s + baseline_s > MAX_SPAN_S:
            raise ConfigError(f"window and baseline span more than {MAX_SPAN_S / 60:g} minutes (in trip rule {rule!r})")
        values = {"kind": "primary", "threshold": number / 100, "quantile": quantile, "baseline_s": baseline_s}
    elif metric == "diff.differing":
        number = _number(value.removesuffix("%"), rule) if value.endswith("%") else None
        if number is None or not 0 <= number < 100:
            raise ConfigError(
                f"diff.differing takes a percent within 0..100 such as 10%, not {value!r} (in trip rule {rule!r})"
            )
        values = {"kind": "diff_rate", "threshold": number / 100}
    else:
        word = metric.removeprefix("diff.")
        severity = SEVERITY_ALIASES.get(word, word)
        if severity not in SEVERITIES:
            raise ConfigError(
                f"diff.{word}: expected diff.differing or a severity, one of {', '.join(SEVERITIES)} or "
                f"{', '.join(SEVERITY_ALIASES)} (in trip rule {rule!r})"
            )
        number = _number(value, rule)
        if number is None or number < 0 or number != int(number):
            raise ConfigError(f"diff.{severity} takes a count of signatures, not {value!r} (in trip rule {rule!r})")
        values = {"kind": "diff", "threshold": number, "severity": severity}
    if "baseline" in options and values["kind"] != "primary":
        raise ConfigError(f"baseline applies to primary.pNN rules only (in trip rule {rule!r})")
    if window_s > MAX_SPAN_S:
        raise ConfigError(f"the window may be at most {MAX_SPAN_S / 60:g} minutes (in trip rule {rule!r})")
    default_min = DEFAULT_MIN_ERRORS if values["kind"] in ("errors", "diff", "diff_rate") else DEFAULT_MIN_LATENCY
    min_samples = default_min
    if "min" in options:
        number = _number(options["min"], rule)
        if number is None or number < 1 or number != int(number):
            raise ConfigError(f"min takes a count of samples >= 1, not {options['min']!r} (in trip rule {rule!r})")
        min_samples = int(number)
    return TripRule(
        text=rule, inclusive=inclusive, window_s=window_s, shadow=shadow, rearm_s=rearm_s,
        min_samples=min_samples, **values,
    )  # fmt: skip


def parse_trips(raw: Any, shadow_names: Sequence[str], field: str = "trips") -> tuple[TripRule, ...]:
    """The config's ``trips`` list (rule texts) as rules; errors name the item and quote the rule."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list | tuple):
        raise ConfigError(f"expected a list of trip rules, not {raw!r}", field=field)
    rules: list[TripRule] = []
    for index, text in enumerate(raw):
        if isinstance(text, TripRule):
            text = text.text
        try:
            rules.append(parse_trip(text, shadow_names))
        except ConfigError as exc:
            raise ConfigError(exc.message, field=f"{field}[{index}]") from None
    return tuple(rules)


def _number(text: str, rule: str) -> float | None:
    try:
        number = float(text.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _quantile(metric: str, rule: str) -> float:
    percent = float(metric.partition(".p")[2])
    if not 0 < percent < 100:
        raise ConfigError(f"the percentile must be within 1..99, not {metric!r} (in trip rule {rule!r})")
    return percent / 100


# --- sliding windows --------------------------------------------------------------------------------

#: A latency bucket: sparse {bin: count}, what one second added.
Sparse = dict[int, int]


class SlidingHistogram:
    """The fine latency histogram of the last ``length`` buckets, as running sums: a bucket in adds
    its counts, the bucket that falls out subtracts them (``spill`` gets it: a baseline window)."""

    __slots__ = ("buckets", "counts", "length", "spill", "total")

    def __init__(self, length: int, spill: SlidingHistogram | None = None) -> None:
        self.length = length
        self.buckets: deque[Sparse] = deque()
        self.counts = [0] * (TRIP_BINS)
        self.total = 0
        self.spill = spill

    def push(self, bucket: Sparse) -> None:
        counts = self.counts
        for index, n in bucket.items():
            counts[index] += n
        self.total += sum(bucket.values())
        self.buckets.append(bucket)
        if len(self.buckets) > self.length:
            old = self.buckets.popleft()
            for index, n in old.items():
                counts[index] -= n
            self.total -= sum(old.values())
            if self.spill is not None:
                self.spill.push(old)

    def clear(self) -> None:
        self.buckets.clear()
        self.counts = [0] * (TRIP_BINS)
        self.total = 0
        if self.spill is not None:
            self.spill.clear()

    def quantile_s(self, q: float) -> float | None:
        """The ``q`` quantile in seconds (the middle of its bin, geometrically), None when empty."""
        if self.total == 0:
            return None
        rank = max(1, math.ceil(q * self.total))
        return trip_bin_s(bisect_left(list(accumulate(self.counts)), rank))


class SlidingCount:
    """Errors and ended copies over the last ``length`` buckets, as running sums."""

    __slots__ = ("buckets", "ended", "errors", "length")

    def __init__(self, length: int) -> None:
        self.length = length
        self.buckets: deque[tuple[int, int]] = deque()
        self.errors = 0
        self.ended = 0

    def push(self, errors: int, ended: int) -> None:
        self.buckets.append((errors, ended))
        self.errors += errors
        self.ended += ended
        if len(self.buckets) > self.length:
            old_errors, old_ended = self.buckets.popleft()
            self.errors -= old_errors
            self.ended -= old_ended

    def clear(self) -> None:
        self.buckets.clear()
        self.errors = self.ended = 0


def _delta(now: list[int], before: list[int]) -> Sparse:
    """What ``now`` (a cumulative histogram) gained since ``before``, sparse; updates ``before``."""
    # Element-wise in C (map, compress): only the bins that grew are visited in Python.
    grown = list(map(sub, now, before))
    out = {index: grown[index] for index in compress(range(len(grown)), grown)}
    before[:] = now
    return out


# --- the guard --------------------------------------------------------------------------------------


class _Judge:
    """One rule judging one shadow: its windows, last observation and state."""

    __slots__ = (
        "baseline", "count", "last", "primary", "query_since_ns", "rule", "shadow", "shadow_latency", "since_ns",
        "tripped_at", "trips",
    )  # fmt: skip

    def __init__(self, rule: TripRule, shadow: str, bucket_s: float) -> None:
        self.rule = rule
        self.shadow = shadow
        length = max(1, round(rule.window_s / bucket_s))
        self.count = SlidingCount(length) if rule.kind == "errors" else None
        self.shadow_latency = SlidingHistogram(length) if rule.kind in ("vs_primary", "absolute") else None
        self.baseline: SlidingHistogram | None = None
        if rule.kind == "primary":
            self.baseline = SlidingHistogram(max(1, round(rule.baseline_s / bucket_s)))
        self.primary = SlidingHistogram(length, self.baseline) if rule.kind in ("vs_primary", "primary") else None
        #: The last evaluation: (observed value, samples, what it is compared with), for /stats.
        self.last: dict[str, Any] = {}
        self.tripped_at: float | None = None
        self.trips = 0
        #: ``diff.*`` rules: the wall-clock time (ns) the judged traffic starts at (when mirroring was
        #: last turned on), and the start of the window last asked of the live results.
        self.since_ns = 0
        self.query_since_ns = -1

    def push(self, errors: int, ended: int, shadow_bucket: Sparse, primary_bucket: Sparse) -> None:
        if self.count is not None:
            self.count.push(errors, ended)
        if self.shadow_latency is not None:
            self.shadow_latency.push(shadow_bucket)
        if self.primary is not None:
            self.primary.push(primary_bucket)

    def restart(self, now_ns: int) -> None:
        for window in (self.count, self.shadow_latency, self.primary):
            if window is not None:
                window.clear()
        self.since_ns = now_ns

    def evaluate(self) -> tuple[bool, str]:
        """Whether the rule holds now, and the observed value in words (for the log line)."""
        rule = self.rule
        if rule.kind == "errors":
            assert self.count is not None
            ended, errors = self.count.ended, self.count.errors
            rate = errors / ended if ended else 0.0
            self.last = {"observed": round(rate * 100, 2), "unit": "%", "samples": ended}
            if ended < rule.min_samples:
                self.last["waiting"] = f"{ended} of {rule.min_samples} copies in the window"
                return False, ""
            return rule.exceeds(rate), f"{rate * 100:.1f}% errors ({errors} of {ended} copies)"
        q = rule.quantile
        label = f"p{q * 100:g}"
        if rule.kind == "absolute":
            assert self.shadow_latency is not None
            return self._latency(self.shadow_latency, None, label, lambda s, _: (s, f"{s * 1000:.1f} ms"))
        if rule.kind == "vs_primary":
            assert self.shadow_latency is not None
            return self._latency(
                self.shadow_latency, self.primary, label,
                lambda s, p: (s / p, f"shadow {label} {s * 1000:.1f} ms = {s / p:.2f}x primary's {p * 1000:.1f} ms"),
            )  # fmt: skip
        assert self.primary is not None
        return self._latency(
            self.primary, self.baseline, label,
            lambda s, p: (s / p - 1, f"primary {label} {s * 1000:.1f} ms, {(s / p - 1) * 100:+.1f}% over its "
                                     f"baseline {p * 1000:.1f} ms"),
        )  # fmt: skip

    def evaluate_diff(self, window: DiffWindow) -> tuple[bool, str]:
        """A ``diff.*`` rule on the live differ's figures of the window: whether it holds, in words."""
        rule = self.rule
        samples = window.compared
        if rule.kind == "diff_rate":
            rate = window.differing / samples if samples else 0.0
            self.last = {"observed": round(rate * 100, 2), "unit": "%", "samples": samples}
            words = f"{rate * 100:.1f}% of compared pairs differed ({window.differing} of {samples})"
            observed = rate
        else:
            worse = SEVERITIES[: SEVERITIES.index(rule.severity) + 1]
            count = sum(window.signatures.get(level, 0) for level in worse)
            self.last = {"observed": count, "unit": "signatures", "samples": samples}
            seen = ", ".join(f"{window.signatures[level]} {level}" for level in worse if window.signatures.get(level))
            words = f"{count} unsuppressed signatures of severity {rule.severity} or worse ({seen or 'none'}) in " \
                    f"{samples} compared pairs"  # fmt: skip
            observed = float(count)
        if samples < rule.min_samples:
            self.last["waiting"] = f"{samples} of {rule.min_samples} compared pairs in the window"
            return False, ""
        return rule.exceeds(observed), words

    def _latency(
        self,
        window: SlidingHistogram,
        reference: SlidingHistogram | None,
        label: str,
        compare: Callable[[float, float], tuple[float, str]],
    ) -> tuple[bool, str]:
        rule = self.rule
        samples = window.total if reference is None else min(window.total, reference.total)
        self.last = {"samples": samples}
        if samples < rule.min_samples:
            what = "samples" if reference is None else "samples in each of the window and its reference"
            self.last["waiting"] = f"{samples} of {rule.min_samples} {what}"
            return False, ""
        value = window.quantile_s(rule.quantile)
        base = 1.0 if reference is None else reference.quantile_s(rule.quantile)
        assert value is not None and base is not None
        observed, words = compare(value, base)
        self.last["observed"] = round(observed, 4)
        return rule.exceeds(observed), words


class TripGuard:
    """Judges every rule for every shadow it applies to, once per ``period_s``, on the loop's timer.

    ``tick`` is also callable directly (tests, or a caller with its own clock): it reads the metrics'
    cumulative counters, pushes one bucket into every window, re-arms and trips."""

    def __init__(
        self,
        rules: Sequence[TripRule],
        flags: RuntimeFlags,
        metrics: ProxyMetrics,
        period_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.rules = tuple(rules)
        self._flags = flags
        self._metrics = metrics
        self._period_s = period_s
        self._clock = clock
        self._clock_ns = clock_ns
        metrics.enable_trip_counters(flags.shadow_names)
        self._judges = [
            _Judge(rule, name, period_s) for rule in self.rules for name in flags.shadow_names if rule.applies_to(name)
        ]
        self._rule_number = {rule.text: i + 1 for i, rule in enumerate(self.rules)}
        self._seen_primary = [0] * (TRIP_BINS)
        self._seen_shadow = {name: [0] * (TRIP_BINS) for name in flags.shadow_names}
        self._seen_counts = {name: (0, 0) for name in flags.shadow_names}
        #: Whether each shadow was mirroring at the last tick (a shadow turned back on starts afresh).
        self._was_on = {name: self._mirroring(name) for name in flags.shadow_names}
        self.trips_total: dict[tuple[str, str], int] = {}
        self._timer: asyncio.TimerHandle | None = None
        metrics.trip_view = self._metric_view
        now_ns = clock_ns()
        for judge in self._judges:
            judge.since_ns = now_ns
        #: Why the ``diff.*`` rules cannot be judged now (live diff off, starting, paused, the noise
        #: model warming up), None when they can; set by ``take_diff``.
        self.diff_waiting: str | None = "no results from the live differ yet"
        self._diff_compared: frozenset[str] = frozenset()

    @property
    def has_diff_rules(self) -> bool:
        return any(rule.kind in DIFF_KINDS for rule in self.rules)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._period_s, self._on_timer)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        try:
            self.tick()
        except Exception:  # a bug here must never stop the guard for good, nor reach the loop
            log.exception("judging the trip rules failed")
        self._timer = asyncio.get_running_loop().call_later(self._period_s, self._on_timer)

    def _mirroring(self, name: str) -> bool:
        flags = self._flags
        return flags.mirroring and flags.shadow_mirroring(flags.shadow_index[name])

    def tick(self) -> None:
        now_s = self._clock()
        now_ns = self._clock_ns()
        metrics = self._metrics
        assert metrics.trip_primary is not None
        primary_bucket = _delta(metrics.trip_primary, self._seen_primary)
        shadow_buckets: dict[str, Sparse] = {}
        counts: dict[str, tuple[int, int]] = {}
        for name in self._flags.shadow_names:
            shadow_buckets[name] = _delta(metrics.trip_shadow[name], self._seen_shadow[name])
            errors, ended = metrics.shadow_errors_and_ended(name, COPY_ERRORS)
            seen_errors, seen_ended = self._seen_counts[name]
            self._seen_counts[name] = (errors, ended)
            counts[name] = (errors - seen_errors, ended - seen_ended)
        on_now = {name: self._mirroring(name) for name in self._flags.shadow_names}
        for judge in self._judges:
            name = judge.shadow
            index = self._flags.shadow_index[name]
            if judge.tripped_at is not None:
                rearm_s = judge.rule.rearm_s
                if self._flags.shadow_tripped(index) == 0 or on_now[name]:
                    # A person turned it back on (PUT /flags): armed again, judged on fresh traffic.
                    log.warning("trip rule %r re-armed for shadow %s by a flags change", judge.rule.text, name)
                    judge.tripped_at = None
                    judge.restart(now_ns)
                elif rearm_s is not None and now_s - judge.tripped_at >= rearm_s:
                    log.warning(
                        "trip rule %r re-arms shadow %s after %g s: mirroring on", judge.rule.text, name, rearm_s
                    )
                    judge.tripped_at = None
                    judge.restart(now_ns)
                    self._flags.clear_tripped(index)
                    self._flags.set_shadow_mirroring(index, True)
                continue
            if not on_now[name] or not self._was_on[name]:
                # Off, or just turned on: judge only traffic since mirroring was last turned on.
                judge.restart(now_ns)
                continue
            if judge.rule.kind in DIFF_KINDS:
                continue  # judged as the live results come (take_diff)
            errors, ended = counts[name]
            judge.push(errors, ended, shadow_buckets[name], primary_bucket)
            tripped, words = judge.evaluate()
            if tripped:
                self._trip(judge, index, words, now_s)
                on_now[name] = False
        self._was_on = {name: self._mirroring(name) for name in self._flags.shadow_names}

    def diff_queries(self) -> list[tuple[str, int]]:
        """The windows the ``diff.*`` rules want judged now: (shadow, since wall-clock ns), each a
        rule's window back from now, or less when mirroring was turned on more recently."""
        now_ns = self._clock_ns()
        wanted: set[tuple[str, int]] = set()
        for judge in self._judges:
            if judge.rule.kind not in DIFF_KINDS or judge.tripped_at is not None or not self._mirroring(judge.shadow):
                continue
            judge.query_since_ns = max(now_ns - int(judge.rule.window_s * 1e9), judge.since_ns)
            wanted.add((judge.shadow, judge.query_since_ns))
        return sorted(wanted)

    def take_diff(
        self, windows: Mapping[tuple[str, int], DiffWindow], waiting: str | None, compared: Collection[str]
    ) -> None:
        """Judge the ``diff.*`` rules on the windows ``diff_queries`` asked for, or say why they
        cannot be (``waiting``: they never trip then). ``compared``: the shadows the live differ
        compares with the primary (not the secondary). A window asked before the shadow's
        mirroring was turned off and on again is stale, and skipped."""
        self.diff_waiting = waiting
        self._diff_compared = frozenset(compared)
        now_s = self._clock()
        for judge in self._judges:
            if judge.rule.kind not in DIFF_KINDS or judge.tripped_at is not None:
                continue
            if waiting is not None:
                judge.last = {}
                continue
            window = windows.get((judge.shadow, judge.query_since_ns))
            if window is None or judge.query_since_ns < judge.since_ns or not self._mirroring(judge.shadow):
                continue
            tripped, words = judge.evaluate_diff(window)
            if tripped:
                self._trip(judge, self._flags.shadow_index[judge.shadow], words, now_s)
                # Between ticks: the next tick must see the shadow as off, so a person turning it on
                # within the second still restarts every rule's window on this shadow.
                self._was_on[judge.shadow] = False

    def _trip(self, judge: _Judge, index: int, words: str, now_s: float) -> None:
        rule, name = judge.rule, judge.shadow
        self._flags.set_shadow_mirroring(index, False)
        self._flags.set_tripped(index, self._rule_number[rule.text])
        judge.tripped_at = now_s
        judge.trips += 1
        key = (name, rule.text)
        self.trips_total[key] = self.trips_total.get(key, 0) + 1
        then = (
            f"re-arms in {rule.rearm_s:g} s" if rule.rearm_s is not None else "stays off until PUT /flags turns it on"
        )
        log.warning(
            "trip rule %r tripped for shadow %s: %s over the last %g s; mirroring to %s is off (%s)",
            rule.text, name, words, rule.window_s, name, then,
        )  # fmt: skip

    def _metric_view(self) -> tuple[dict[tuple[str, str], int], dict[str, float]]:
        tripped = {
            name: float(self._flags.shadow_tripped(self._flags.shadow_index[name]) != 0)
            for name in self._flags.shadow_names
        }
        return dict(self.trips_total), tripped

    def snapshot(self) -> list[dict[str, Any]]:
        """The ``/stats`` view: each rule for each shadow, its state and what it saw last."""
        out: list[dict[str, Any]] = []
        now_s = self._clock()
        for judge in self._judges:
            rule = judge.rule
            entry: dict[str, Any] = {"rule": rule.text, "shadow": judge.shadow, "window_s": rule.window_s}
            if judge.tripped_at is not None:
                entry["state"] = "tripped"
                if rule.rearm_s is not None:
                    entry["rearms_in_s"] = round(max(0.0, judge.tripped_at + rule.rearm_s - now_s), 1)
            elif rule.kind in DIFF_KINDS and self.diff_waiting is not None:
                entry["state"] = "waiting for live diff"
                entry["waiting"] = self.diff_waiting
            elif rule.kind in DIFF_KINDS and judge.shadow not in self._diff_compared:
                entry["state"] = "waiting for live diff"
                entry["waiting"] = "the live differ does not compare this shadow (a secondary teaches it noise)"
            elif "waiting" in judge.last:
                entry["state"] = "warming up"
            else:
                entry["state"] = "armed"
            entry.update(judge.last)
            entry["trips"] = judge.trips
            out.append(entry)
        return out
