"""The terminal report: a ranked summary a reviewer reads in a CI log or a shell, at 80 columns.

Renders with rich, colour only when asked or when writing to a TTY. Every piece of report text goes
in as a ``rich.text.Text`` (never markup) because endpoints and paths come from traffic and a path
like ``[red]`` must print as itself. It must never print bodies (the HTML report has examples) and
never compute results.
"""

from __future__ import annotations

from collections import Counter
from typing import Final, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from differ.report_model import DiffReport, EndpointReport, Severity
from differ.reports._common import (
    endpoint_rate,
    fmt_ns,
    fmt_rate,
    ranked_endpoints,
    ranked_signatures,
    verdict_word,
)

__all__ = ["render_terminal"]

#: Endpoints shown with their signatures; the rest are in the ranked table only. A CI log is read
#: top-down and the tenth endpoint's fifth signature is never where the regression is.
DETAILED_ENDPOINTS: Final = 10
SIGNATURES_PER_ENDPOINT: Final = 5
_NON_TTY_WIDTH: Final = 80

_SEVERITY_STYLE: Final[dict[Severity | None, str]] = {
    "critical": "bold white on red",
    "high": "bold red",
    "medium": "yellow",
    "low": "cyan",
    None: "green",
}
_SEVERITY_SHORT: Final[dict[Severity | None, str]] = {
    "critical": "CRIT",
    "high": "HIGH",
    "medium": "MED",
    "low": "LOW",
    None: "ok",
}
_VERDICT_STYLE: Final = {0: "bold green", 1: "bold red", 2: "bold yellow"}


def _severity(severity: Severity | None) -> Text:
    return Text(_SEVERITY_SHORT[severity], style=_SEVERITY_STYLE[severity])


def _header(report: DiffReport, console: Console) -> None:
    verdict = report.verdict
    line = Text()
    line.append(f" {verdict_word(verdict.exit_code)} ", style=_VERDICT_STYLE.get(verdict.exit_code, "bold"))
    line.append(" ")
    line.append(verdict.reason)
    console.print(line)
    versus = Text("compared ", style="dim")
    versus.append(report.baseline_name, style="bold")
    versus.append(" vs ", style="dim")
    versus.append(report.candidate_name, style="bold")
    if report.secondary_name is not None:
        versus.append("  noise from ", style="dim")
        versus.append(report.secondary_name, style="bold")
    if report.window_start_ns is not None or report.window_end_ns is not None:
        versus.append(f"  window {fmt_ns(report.window_start_ns)} .. {fmt_ns(report.window_end_ns)}", style="dim")
    console.print(versus)
    if report.sources:
        console.print(Text("tapes: " + ", ".join(report.sources), style="dim"), overflow="fold")
    counts = Text()
    for label, value, style in (
        ("pairs", report.pairs, ""),
        ("compared", report.compared, ""),
        ("equal", report.equal, "green"),
        ("differing", report.differing, "yellow" if report.differing else ""),
        ("noise suppressed", report.noise_suppressed, "dim"),
        ("errors", report.errors, "red" if report.errors else ""),
    ):
        counts.append(f"{label} ")
        counts.append(str(value), style=f"bold {style}".strip())
        counts.append("  ")
    console.print(counts)


def _endpoint_table(endpoints: list[EndpointReport]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="Endpoints", title_justify="left", expand=False, pad_edge=False)
    table.add_column("Sev", no_wrap=True)
    table.add_column("Endpoint", overflow="fold", ratio=1)
    table.add_column("Compared", justify="right", no_wrap=True)
    table.add_column("Differ", justify="right", no_wrap=True)
    table.add_column("Rate", justify="right", no_wrap=True)
    table.add_column("Errors", justify="right", no_wrap=True)
    for endpoint in endpoints:
        table.add_row(
            _severity(endpoint.severity),
            Text(endpoint.endpoint),
            str(endpoint.compared),
            str(endpoint.differing),
            fmt_rate(endpoint_rate(endpoint)),
            Text(str(endpoint.errors), style="red" if endpoint.errors else ""),
        )
    return table


def _signature_table(endpoint: EndpointReport, failing: frozenset[str]) -> Table:
    title = Text(endpoint.endpoint, style="bold")
    title.append(f"  {endpoint.differing}/{endpoint.compared} differ ({fmt_rate(endpoint_rate(endpoint))})")
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
    table.add_column("Sev", no_wrap=True)
    table.add_column("Kind", no_wrap=True)
    table.add_column("Path", overflow="fold", ratio=2)
    table.add_column("Change", overflow="fold", ratio=1)
    table.add_column("Count", justify="right", no_wrap=True)
    table.add_column("Rate", justify="right", no_wrap=True)
    table.add_column("Noise", justify="right", no_wrap=True)
    signatures = ranked_signatures(endpoint)
    shown = [s for s in signatures if not s.suppressed][:SIGNATURES_PER_ENDPOINT]
    for sig in shown:
        severity = _severity(sig.severity)
        if sig.id in failing:
            severity.append("!", style="bold red")
        table.add_row(
            severity,
            sig.kind,
            Text(sig.path),
            Text(sig.transition),
            str(sig.count),
            fmt_rate(sig.rate),
            fmt_rate(sig.noise_rate),
        )
    hidden = sum(1 for s in signatures if not s.suppressed) - len(shown)
    suppressed = Counter(s.suppression_reason or "suppressed" for s in signatures if s.suppressed)
    notes: list[str] = []
    if hidden > 0:
        notes.append(f"+{hidden} more signatures")
    if suppressed:
        detail = ", ".join(f"{reason} {count}" for reason, count in suppressed.most_common())
        notes.append(f"{sum(suppressed.values())} suppressed ({detail})")
    if notes:
        table.caption = Text("; ".join(notes), style="dim")
        table.caption_justify = "left"
    return table


def render_terminal(report: DiffReport, file: TextIO, *, color: bool | None = None) -> None:
    """Write the terminal summary of ``report`` to ``file``; colour iff ``color``, or iff a TTY when None."""
    is_tty = file.isatty()
    use_color = is_tty if color is None else color
    console = Console(
        file=file,
        force_terminal=use_color,
        no_color=not use_color,
        color_system="standard" if use_color else None,
        width=None if is_tty else _NON_TTY_WIDTH,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=False,
    )
    _header(report, console)
    endpoints = ranked_endpoints(report)
    if not endpoints:
        console.print(Text("no endpoints compared", style="dim"))
        return
    console.print(_endpoint_table(endpoints))
    failing = frozenset(report.verdict.failing_signatures)
    detailed = [e for e in endpoints if any(not s.suppressed for s in e.signatures)][:DETAILED_ENDPOINTS]
    for endpoint in detailed:
        console.print(_signature_table(endpoint, failing))
    if report.suppressions:
        line = Text("noise suppressed: ", style="dim")
        line.append(", ".join(f"{s.reason} {s.count}" for s in report.suppressions), style="dim")
        console.print(line)
    if failing:
        console.print(Text("! = signature fails the gate (--fail-on)", style="dim"))
