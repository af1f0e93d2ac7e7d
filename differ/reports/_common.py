"""What every renderer agrees on: ranking, number and time formats, verdict words, path parsing.

It must never compute diff results (the report is the data) and never do I/O.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Final

from shadowtap.differ.latency import LatencyComparison, QuantileComparison
from shadowtap.differ.report_model import SEVERITIES, DiffReport, EndpointReport, Severity, SignatureReport

__all__ = [
    "MISSING",
    "PathToken",
    "clip",
    "endpoint_rate",
    "fmt_ms",
    "fmt_quantile",
    "latency_failing_endpoints",
    "latency_word",
    "fmt_ns",
    "fmt_rate",
    "lookup_json",
    "parse_body_path",
    "printable",
    "ranked_endpoints",
    "ranked_signatures",
    "severity_rank",
    "step_matches",
    "verdict_word",
]

_VERDICT_WORDS: Final = {0: "PASS", 1: "FAIL", 2: "INCONCLUSIVE"}
# C0/C1 controls (ESC starts terminal escape sequences), and the format characters that reorder or
# hide text (bidi overrides, zero-width): traffic must not be able to restyle a terminal or make a
# path read as something else.
# Lone surrogates too: no encoding can write them, so left in they would become escapes only at
# output, after the layout measured them as one character (a table row would overflow its width).
_UNPRINTABLE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")


def clip(text: str, limit_chars: int) -> str:
    """``text`` cut to ``limit_chars`` with a visible ``...`` when it was longer."""
    return text if len(text) <= limit_chars else text[: limit_chars - 3] + "..."


def printable(text: str) -> str:
    """``text`` with control, bidi/zero-width and lone surrogate characters shown as ``\\xNN`` /
    ``\\uNNNN`` escapes."""
    return _UNPRINTABLE.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def verdict_word(exit_code: int) -> str:
    """PASS / FAIL / INCONCLUSIVE for the verdict's exit code."""
    return _VERDICT_WORDS.get(exit_code, f"EXIT {exit_code}")


def severity_rank(severity: Severity | None) -> int:
    """0 for critical ... 3 for low, 4 for "nothing unsuppressed differs"."""
    return SEVERITIES.index(severity) if severity is not None else len(SEVERITIES)


def endpoint_rate(endpoint: EndpointReport) -> float:
    """Share of the endpoint's compared pairs that differed."""
    return endpoint.differing / endpoint.compared if endpoint.compared else 0.0


def ranked_endpoints(report: DiffReport) -> list[EndpointReport]:
    """Endpoints most severe first, then by differing rate, then count; stable for equal keys."""
    return sorted(
        report.endpoints,
        key=lambda e: (severity_rank(e.severity), -endpoint_rate(e), -e.differing, -e.errors, e.endpoint),
    )


def ranked_signatures(endpoint: EndpointReport) -> list[SignatureReport]:
    """Unsuppressed before suppressed, then most severe, then most frequent."""
    return sorted(
        endpoint.signatures,
        key=lambda s: (s.suppressed, severity_rank(s.severity), -s.count, s.path, s.kind),
    )


def fmt_rate(rate: float | None) -> str:
    """A rate as a short percentage: ``12.5%``, ``0.03%``, ``<0.01%``; ``-`` when unknown."""
    if rate is None:
        return "-"
    percent = rate * 100
    if percent == 0:
        return "0%"
    if percent < 0.01:
        return "<0.01%"
    if percent < 1:
        return f"{percent:.2f}%"
    if percent < 10:
        return f"{percent:.1f}%"
    return f"{percent:.0f}%"


def fmt_ms(seconds: float) -> str:
    """A latency in milliseconds, three significant figures at most: ``0.412``, ``18.3``, ``1234``."""
    ms = seconds * 1000
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_quantile(c: QuantileComparison) -> str:
    """``18.3 -> 23.7 ms x1.30 [1.23-1.36]``: both sides, the ratio and its 95 % interval (``[?]``
    when there were too few pairs for one)."""
    interval = "[?]" if c.ratio_ci is None else f"[{c.ratio_ci[0]:.2f}-{c.ratio_ci[1]:.2f}]"
    return f"{fmt_ms(c.primary_s)} -> {fmt_ms(c.shadow_s)} ms x{c.ratio:.2f} {interval}"


_LATENCY_WORDS: Final = {
    "slower": "SLOWER",
    "faster": "faster",
    "no significant difference": "same",
    "too few samples": "too few",
}


def latency_word(c: LatencyComparison) -> str:
    """SLOWER / faster / same / too few: a comparison's verdict in one short word."""
    return _LATENCY_WORDS.get(c.verdict, c.verdict)


def latency_failing_endpoints(report: DiffReport) -> dict[str, list[str]]:
    """Endpoint -> the ``--fail-on`` latency terms that failed there."""
    out: dict[str, list[str]] = {}
    for failure in report.latency.failures:
        out.setdefault(failure.endpoint, []).append(failure.term)
    return out


def fmt_ns(ns: int | None) -> str:
    """Wall-clock ns since the epoch as ``2026-11-22 02:46:06Z``; ``-`` when unknown."""
    if ns is None:
        return "-"
    try:
        return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{ns} ns"  # beyond what datetime can show: still say what the report holds


# A JSON path inside a body, as shadowtap.differ.paths spells it: ``body.user.name``, ``body.items[3].id``,
# ``body[0]``, and ``body["odd key"]`` with the key as a JSON string.
PathToken = str | int
_TOKEN: Final = re.compile(r"""\.(?P<name>[^.\[]+)|\[(?P<index>\d+|\*)\]|\[(?P<quoted>"(?:[^"\\]|\\.)*")\]""")


def parse_body_path(path: str) -> tuple[PathToken, ...] | None:
    """The tokens of a ``body...`` path (``"*"`` for a folded index), or ``None`` if not a body path.

    ``body`` itself gives ``()``; anything unparseable gives ``None`` (the caller then highlights the
    whole body rather than guessing).
    """
    if path == "body":
        return ()
    if not path.startswith(("body.", "body[")):
        return None
    rest = path[4:]
    tokens: list[PathToken] = []
    pos = 0
    while pos < len(rest):
        match = _TOKEN.match(rest, pos)
        if match is None:
            return None
        if match.group("name") is not None:
            tokens.append(match.group("name"))
        elif match.group("index") is not None:
            index = match.group("index")
            tokens.append("*" if index == "*" else int(index))
        else:
            try:
                tokens.append(str(json.loads(match.group("quoted"))))
            except ValueError:
                return None
        pos = match.end()
    return tuple(tokens)


def step_matches(pattern_step: PathToken, step: PathToken) -> bool:
    """Whether one path step matches a pattern's step; ``"*"`` (a folded index) matches any index."""
    return pattern_step == step or (pattern_step == "*" and isinstance(step, int))


MISSING: Final = object()


def lookup_json(value: object, tokens: tuple[PathToken, ...]) -> object:
    """The value at ``tokens`` inside parsed JSON ``value``, or ``MISSING``."""
    node = value
    for token in tokens:
        in_list = isinstance(token, int) and isinstance(node, list) and 0 <= token < len(node)
        in_object = isinstance(token, str) and isinstance(node, dict) and token in node
        if not (in_list or in_object):
            return MISSING
        node = node[token]  # type: ignore[index]
    return node
