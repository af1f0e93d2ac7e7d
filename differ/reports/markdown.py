"""The Markdown report: a compact pull-request comment (GitHub-flavoured Markdown).

A verdict line, a table of endpoints with their severity and top change, the latency table (the
candidate's p50, p90 and p99 against the baseline's, slower endpoints first), and collapsible details
per endpoint with short, redacted value snippets. It must never paste raw bodies (a PR comment is public
to everyone with repository access) and never let traffic-derived text become Markdown or HTML: every
such string goes through ``_code`` or ``_text``.
"""

from __future__ import annotations

import html
import os
import re
from typing import Final

from shadowtap.differ.latency import QuantileComparison
from shadowtap.differ.report_model import DiffReport, EndpointReport, Example, Severity, SignatureReport
from shadowtap.differ.reports._bodies import value_at
from shadowtap.differ.reports._common import (
    clip,
    endpoint_rate,
    fmt_ms,
    fmt_rate,
    latency_failing_endpoints,
    latency_word,
    printable,
    ranked_endpoints,
    ranked_signatures,
    verdict_word,
)
from shadowtap.differ.reports._files import write_atomically
from shadowtap.differ.reports.redact import redact_target

__all__ = ["render_markdown", "write_markdown"]

#: GitHub truncates comments at 65,536 characters; these bounds keep a big report well below that.
TABLE_ENDPOINTS: Final = 25
DETAILED_ENDPOINTS: Final = 10
SIGNATURES_PER_ENDPOINT: Final = 8
SNIPPET_PATHS: Final = 4
SNIPPET_CHARS: Final = 60
#: Endpoints in the latency table (slower first).
LATENCY_ENDPOINTS: Final = 25
#: Longest endpoint, path or reason shown: one pathological name must not eat the comment's budget.
TEXT_CHARS: Final = 200

_VERDICT_ICON: Final = {0: ":white_check_mark:", 1: ":x:", 2: ":warning:"}
_SEVERITY_ICON: Final[dict[Severity | None, str]] = {
    "critical": ":red_circle: critical",
    "high": ":orange_circle: high",
    "medium": ":yellow_circle: medium",
    "low": ":large_blue_circle: low",
    None: ":white_circle: none",
}
# Inline syntax anywhere in a line; block syntax (headings, lists) only at its start. A leading `>`
# needs nothing: it becomes the entity &gt;, which never starts a quote.
_MARKDOWN_INLINE: Final = re.compile(r"([\\`*_\[\]|~])")
_MARKDOWN_BLOCK_START: Final = re.compile(r"^(?:([#+=-])|(\d+)([.)]))")


def _flat(value: str) -> str:
    # One line, no control characters: a PR comment line must stay one line and one table row.
    return clip(" ".join(printable(value).split()), TEXT_CHARS)


def _text(value: str) -> str:
    """Untrusted text as inert Markdown: HTML entities for <>&, backslashes for Markdown syntax."""
    flat = _flat(value)
    flat = _MARKDOWN_INLINE.sub(r"\\\1", flat)
    flat = _MARKDOWN_BLOCK_START.sub(lambda m: f"\\{m[1]}" if m[1] else f"{m[2]}\\{m[3]}", flat)
    return flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(value: str) -> str:
    """Untrusted text as an inline code span, safe inside a table cell."""
    flat = _flat(value) or " "
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {flat} " if flat.startswith("`") or flat.endswith("`") or longest else flat
    # Inside a GFM table a pipe ends the cell even within a code span, unless escaped.
    return f"{fence}{padded}{fence}".replace("|", "\\|")


def _top_change(endpoint: EndpointReport) -> str:
    for sig in ranked_signatures(endpoint):
        if not sig.suppressed:
            return f"{_code(sig.path)} {_text(sig.kind)} {_code(sig.transition)} ({sig.count})"
    return "-"


def _endpoint_table(endpoints: list[EndpointReport]) -> list[str]:
    lines = [
        "| Severity | Endpoint | Differing | Rate | Errors | Top change |",
        "|---|---|---:|---:|---:|---|",
    ]
    for endpoint in endpoints[:TABLE_ENDPOINTS]:
        lines.append(
            f"| {_SEVERITY_ICON[endpoint.severity]} | {_code(endpoint.endpoint)} "
            f"| {endpoint.differing} / {endpoint.compared} | {fmt_rate(endpoint_rate(endpoint))} "
            f"| {endpoint.errors} | {_top_change(endpoint)} |"
        )
    if len(endpoints) > TABLE_ENDPOINTS:
        lines.append(f"| | *{len(endpoints) - TABLE_ENDPOINTS} more endpoints* | | | | |")
    return lines


def _snippet(example: Example) -> list[str]:
    request = example.request
    lines = [f"  - example {_code(example.exchange_id)}: {_code(request.method + ' ' + redact_target(request.target))}"]
    for path in example.paths[:SNIPPET_PATHS]:
        before = value_at(example.baseline, path, SNIPPET_CHARS, example.request.path)
        after = value_at(example.candidate, path, SNIPPET_CHARS, example.request.path)
        lines.append(f"    - {_code(path)}: {_code(before)} &rarr; {_code(after)}")
    if len(example.paths) > SNIPPET_PATHS:
        lines.append(f"    - and {len(example.paths) - SNIPPET_PATHS} more paths")
    return lines


def _signature_line(sig: SignatureReport, failing: frozenset[str]) -> str:
    gate = " **fails the gate**" if sig.id in failing else ""
    noise = f", noise {fmt_rate(sig.noise_rate)}" if sig.noise_rate is not None else ""
    suppressed = f", suppressed: {_code(sig.suppression_reason or 'yes')}" if sig.suppressed else ""
    return (
        f"- {sig.severity} {_text(sig.kind)} at {_code(sig.path)}: {_code(sig.transition)}, "
        f"{sig.count} times ({fmt_rate(sig.rate)}{noise}{suppressed}){gate}"
    )


def _details(endpoint: EndpointReport, failing: frozenset[str]) -> list[str]:
    signatures = ranked_signatures(endpoint)
    plural = "s" if len(signatures) != 1 else ""
    summary = (
        f"{html.escape(_flat(endpoint.endpoint))}: {len(signatures)} signature{plural}, "
        f"{endpoint.differing}/{endpoint.compared} differing"
    )
    lines = ["<details>", f"<summary>{summary}</summary>", ""]
    for sig in signatures[:SIGNATURES_PER_ENDPOINT]:
        lines.append(_signature_line(sig, failing))
        if sig.examples and not sig.suppressed:
            lines.extend(_snippet(sig.examples[0]))
    if len(signatures) > SIGNATURES_PER_ENDPOINT:
        lines.append(f"- and {len(signatures) - SIGNATURES_PER_ENDPOINT} more signatures")
    lines += ["", "</details>"]
    return lines


def _quantile_cell(q: QuantileComparison) -> str:
    # Figures of our own, not traffic: plain Markdown (no escaping needed, none wanted: "18.3").
    interval = "" if q.ratio_ci is None else f" [{q.ratio_ci[0]:.2f}-{q.ratio_ci[1]:.2f}]"
    return f"{fmt_ms(q.primary_s)} &rarr; {fmt_ms(q.shadow_s)} x{q.ratio:.2f}{interval}"


def _latency(report: DiffReport) -> list[str]:
    """The "Latency" section: endpoints with a statement (slower first), each percentile side by
    side with its ratio and 95 % interval, the failed terms with their statements, what was not judged."""
    latency = report.latency
    if latency.pairs == 0:
        untimed = f" ({latency.untimed} compared pairs untimed)" if latency.untimed else ""
        return [f"**Latency**: no compared pair has both sides timed{untimed}.", ""]
    stated = [c for c in latency.comparisons if c.quantiles]
    too_few = len(latency.comparisons) - len(stated)
    lines = [f"**Latency** ({latency.pairs} timed pairs, {latency.untimed} untimed)"]
    if too_few:
        lines[0] += f"; {too_few} endpoint(s) with fewer than {latency.min_pairs} pairs: too few samples, no statement"
    lines.append("")
    failing = latency_failing_endpoints(report)
    if stated:
        lines += [
            "| Latency | Endpoint | Pairs | p50 ms | p90 ms | p99 ms |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for c in stated[:LATENCY_ENDPOINTS]:
            word = f"**{latency_word(c)}**" if c.verdict == "slower" else latency_word(c)
            gate = " (fails the gate)" if c.endpoint in failing else ""
            cells = " | ".join(_quantile_cell(q) for q in c.quantiles)
            lines.append(f"| {word}{gate} | {_code(c.endpoint)} | {c.pairs} | {cells} |")
        if len(stated) > LATENCY_ENDPOINTS:
            lines.append(f"| | *{len(stated) - LATENCY_ENDPOINTS} more endpoints* | | | | |")
        lines.append("")
    for f in latency.failures:
        lines.append(f"- :x: {_code(f.term)} fails at {_code(f.endpoint)}: {_text(f.statement)}")
    undecided = {(u.term, u.endpoint) for u in latency.undecided}
    if undecided:
        terms = ", ".join(_code(t) for t in sorted({t for t, _ in undecided}))
        lines.append(f"- not judged for too few pairs: {terms} at {len({e for _, e in undecided})} endpoint(s)")
    if latency.failures or undecided:
        lines.append("")
    return lines


def render_markdown(report: DiffReport) -> str:
    """The PR comment for ``report``."""
    verdict = report.verdict
    icon = _VERDICT_ICON.get(verdict.exit_code, ":grey_question:")
    versus = f"{_code(report.baseline_name)} vs {_code(report.candidate_name)}"
    if report.secondary_name is not None:
        versus += f" (noise from {_code(report.secondary_name)})"
    lines = [
        f"### {icon} shadowtap diff: {verdict_word(verdict.exit_code)}",
        "",
        f"{_text(verdict.reason)}",
        "",
        f"{versus}: **{report.pairs}** pairs, **{report.compared}** compared, **{report.equal}** equal, "
        f"**{report.differing}** differing, **{report.noise_suppressed}** noise suppressed, "
        f"**{report.errors}** errors",
        "",
    ]
    endpoints = ranked_endpoints(report)
    if endpoints:
        lines += _endpoint_table(endpoints)
        lines.append("")
    lines += _latency(report)
    failing = frozenset(verdict.failing_signatures)
    for endpoint in [e for e in endpoints if e.signatures][:DETAILED_ENDPOINTS]:
        lines += _details(endpoint, failing)
        lines.append("")
    if report.suppressions:
        lines += ["<details>", f"<summary>Noise suppressed: {report.noise_suppressed}</summary>", ""]
        lines += ["| Reason | Count |", "|---|---:|"]
        lines += [f"| {_code(s.reason)} | {s.count} |" for s in report.suppressions]
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def write_markdown(report: DiffReport, path: str | os.PathLike[str]) -> None:
    """Write the PR comment for ``report`` to ``path``."""
    write_atomically(path, render_markdown(report))
