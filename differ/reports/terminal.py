"""The terminal report: a ranked summary a reviewer reads in a CI log or a shell, at 80 columns.

Renders with rich, colour only when asked or when writing to a TTY. Every piece of report text goes
in as a ``rich.text.Text`` (never markup) after ``printable`` (no control characters), because
endpoints and paths come from traffic: ``[red]`` must print as itself and an ESC byte must not
restyle the reader's terminal. It must never print bodies (the HTML report has examples) and never
compute results.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from typing import Final, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shadowtap.differ.report_model import DiffReport, EndpointReport, Severity
from shadowtap.differ.reports._common import (
    clip,
    endpoint_rate,
    fmt_ns,
    fmt_rate,
    printable,
    ranked_endpoints,
    ranked_signatures,
    verdict_word,
)

__all__ = ["render_terminal"]

#: Endpoints shown with their signatures, and signatures per endpoint; the rest are summarised. A
#: CI log is read top-down and the regression is near the top of a ranked list.
DETAILED_ENDPOINTS: Final = 10
SIGNATURES_PER_ENDPOINT: Final = 5
#: Endpoints in the ranked table; a service with hundreds of routes must not flood the log.
TABLE_ENDPOINTS: Final = 30
_NON_TTY_WIDTH: Final = 80
#: Longest endpoint, path or reason printed; a pathological name must not fill the screen.
_TEXT_CHARS: Final = 300

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
_VERDICT_STYLE: Final = {0: "bold white on green", 1: "bold white on red", 2: "bold black on yellow"}


def _t(value: str, style: str = "") -> Text:
    return Text(clip(printable(value), _TEXT_CHARS), style=style)


def _severity(severity: Severity | None) -> Text:
    return Text(_SEVERITY_SHORT[severity], style=_SEVERITY_STYLE[severity])


def _same_day(a: int | None, b: int | None) -> bool:
    return a is not None and b is not None and fmt_ns(a)[:10] == fmt_ns(b)[:10]


def _header(report: DiffReport, console: Console) -> None:
    verdict = report.verdict
    line = Text()
    line.append(f" {verdict_word(verdict.exit_code)} ", style=_VERDICT_STYLE.get(verdict.exit_code, "bold"))
    line.append(" ")
    line.append_text(_t(verdict.reason, "bold"))
    console.print(line)
    versus = Text("baseline ", style="dim")
    versus.append_text(_t(report.baseline_name, "bold"))
    versus.append(" vs candidate ", style="dim")
    versus.append_text(_t(report.candidate_name, "bold"))
    if report.secondary_name is not None:
        versus.append(", noise from ", style="dim")
        versus.append_text(_t(report.secondary_name, "bold"))
    console.print(versus)
    if report.window_start_ns is not None or report.window_end_ns is not None:
        end = fmt_ns(report.window_end_ns)
        if _same_day(report.window_start_ns, report.window_end_ns):
            end = end[11:]
        console.print(Text(f"window {fmt_ns(report.window_start_ns)} to {end}", style="dim"))
    if report.sources:
        console.print(_t("tapes: " + ", ".join(report.sources), "dim"), overflow="fold")
    # Two short lines rather than one that wraps mid-figure at 80 columns.
    for figures in (
        (
            ("pairs", report.pairs, ""),
            ("compared", report.compared, ""),
            ("equal", report.equal, "green"),
            ("differing", report.differing, "yellow" if report.differing else ""),
        ),
        (
            ("errors", report.errors, "red" if report.errors else ""),
            ("noise suppressed", report.noise_suppressed, ""),
        ),
    ):
        counts = Text()
        for label, value, style in figures:
            counts.append(f"{label} ", style="dim")
            counts.append(str(value), style=f"bold {style}".strip())
            counts.append("  ")
        counts.rstrip()
        console.print(counts)


def _endpoint_table(endpoints: list[EndpointReport]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="Endpoints", title_justify="left", title_style="bold", pad_edge=False)
    table.add_column("Sev", no_wrap=True)
    table.add_column("Endpoint", overflow="fold", ratio=1)
    table.add_column("Compared", justify="right", no_wrap=True)
    table.add_column("Differ", justify="right", no_wrap=True)
    table.add_column("Rate", justify="right", no_wrap=True)
    table.add_column("Errors", justify="right", no_wrap=True)
    for endpoint in endpoints[:TABLE_ENDPOINTS]:
        table.add_row(
            _severity(endpoint.severity),
            _t(endpoint.endpoint),
            str(endpoint.compared),
            str(endpoint.differing),
            fmt_rate(endpoint_rate(endpoint)),
            Text(str(endpoint.errors), style="red" if endpoint.errors else ""),
        )
    if len(endpoints) > TABLE_ENDPOINTS:
        table.caption = Text(f"+{len(endpoints) - TABLE_ENDPOINTS} more endpoints (see --html)", style="dim")
        table.caption_justify = "left"
    return table


def _signature_table(endpoint: EndpointReport, failing: frozenset[str]) -> Table:
    title = Text()
    title.append_text(_severity(endpoint.severity))
    title.append(" ")
    title.append_text(_t(endpoint.endpoint, "bold"))
    title.append(f"  {endpoint.differing}/{endpoint.compared} differ ({fmt_rate(endpoint_rate(endpoint))})", "dim")
    signatures = ranked_signatures(endpoint)
    shown = [s for s in signatures if not s.suppressed][:SIGNATURES_PER_ENDPOINT]
    with_noise = any(s.noise_rate is not None for s in shown)
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, expand=True)
    table.add_column("Sev", no_wrap=True, min_width=5)
    table.add_column("Kind", no_wrap=True)
    table.add_column("Path", overflow="fold", ratio=3)
    table.add_column("Change", overflow="fold", ratio=2)
    table.add_column("Count", justify="right", no_wrap=True)
    table.add_column("Rate", justify="right", no_wrap=True)
    if with_noise:
        table.add_column("Noise", justify="right", no_wrap=True)
    for sig in shown:
        severity = _severity(sig.severity)
        if sig.id in failing:
            severity.append("!", style="bold red")
        cells: list[Text | str] = [
            severity,
            _t(sig.kind),
            _t(sig.path),
            _t(sig.transition),
            str(sig.count),
            fmt_rate(sig.rate),
        ]
        if with_noise:
            cells.append(fmt_rate(sig.noise_rate))
        table.add_row(*cells)
    hidden = sum(1 for s in signatures if not s.suppressed) - len(shown)
    suppressed = Counter(s.suppression_reason or "suppressed" for s in signatures if s.suppressed)
    notes: list[str] = []
    if hidden > 0:
        notes.append(f"+{hidden} more signatures")
    if suppressed:
        detail = ", ".join(f"{reason} {count}" for reason, count in suppressed.most_common())
        notes.append(f"{sum(suppressed.values())} suppressed: {detail}")
    if notes:
        table.caption = _t("; ".join(notes), "dim")
        table.caption_justify = "left"
    return table


class _Sink(io.StringIO):
    """Collects the rendering; claims the real stream's encoding so rich picks ASCII boxes for it."""

    def __init__(self, encoding: str) -> None:
        super().__init__()
        self._target_encoding = encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._target_encoding


def _render(report: DiffReport, console: Console) -> None:
    _header(report, console)
    endpoints = ranked_endpoints(report)
    if not endpoints:
        console.print(Text("no endpoints were compared", style="dim"))
        return
    console.print()
    console.print(_endpoint_table(endpoints))
    failing = frozenset(report.verdict.failing_signatures)
    detailed = [e for e in endpoints if any(not s.suppressed for s in e.signatures)]
    for endpoint in detailed[:DETAILED_ENDPOINTS]:
        console.print()
        console.print(_signature_table(endpoint, failing))
    if len(detailed) > DETAILED_ENDPOINTS:
        console.print(Text(f"+{len(detailed) - DETAILED_ENDPOINTS} more endpoints with differences", style="dim"))
    if report.suppressions:
        line = Text("noise suppressed: ", style="dim")
        line.append_text(_t(", ".join(f"{s.reason} {s.count}" for s in report.suppressions), "dim"))
        console.print(line)
    if failing:
        console.print(Text("! = the signature fails the gate", style="dim"))


def render_terminal(report: DiffReport, file: TextIO, *, color: bool | None = None) -> None:
    """Write the terminal summary of ``report`` to ``file``.

    Colour iff ``color``; when it is None, iff ``file`` is a TTY and ``NO_COLOR`` is not set (no-color.org).

    The summary is rendered in memory and written once, in whatever encoding ``file`` has: on an
    ASCII-only stream boxes are ASCII and other characters from traffic become escapes, never an
    UnicodeEncodeError.
    """
    is_tty = file.isatty()
    use_color = (is_tty and not os.environ.get("NO_COLOR")) if color is None else color
    encoding = getattr(file, "encoding", None) or "utf-8"
    sink = _Sink(encoding)
    console = Console(
        file=sink,
        force_terminal=use_color,
        no_color=not use_color,
        color_system="standard" if use_color else None,
        width=Console(file=file).width if is_tty else _NON_TTY_WIDTH,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=False,
    )
    _render(report, console)
    file.write(sink.getvalue().encode(encoding, "backslashreplace").decode(encoding))
