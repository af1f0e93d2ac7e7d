"""The terminal report: a ranked summary a reviewer reads in a CI log or a shell.

Renders with rich at the terminal's width (``WIDE_DEFAULT`` columns when not writing to one), colour
only when asked or when writing to a TTY. Paths and endpoints wrap only at their separators (``.``,
``/``, ``[``), never mid-name, and whatever is left out for length says how to see it (``full``, the
``--full`` flag, lists everything). Every piece of report text goes
in as a ``rich.text.Text`` (never markup) after ``printable`` (no control characters), because
endpoints and paths come from traffic: ``[red]`` must print as itself and an ESC byte must not
restyle the reader's terminal. It must never print bodies (the HTML report has examples) and never
compute results. The "Latency" section lists the endpoints with a latency statement, those
found slower first, each percentile as ``baseline -> candidate xRATIO`` (ms), and the statements
(with their confidence intervals) of the slower ones.
"""

from __future__ import annotations

import io
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Final, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shadowtap.differ.report_model import DiffReport, EndpointReport, Severity
from shadowtap.differ.reports._common import (
    clip,
    endpoint_rate,
    fmt_ms,
    fmt_ns,
    fmt_rate,
    latency_failing_endpoints,
    latency_word,
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
#: Endpoints in the latency table (slower ones first) and statements printed under it.
LATENCY_ENDPOINTS: Final = 10
LATENCY_STATEMENTS: Final = 3
#: Columns when not writing to a terminal (a CI log, a file): wide enough for real paths, which a
#: log viewer shows whole or wraps itself.
WIDE_DEFAULT: Final = 120
#: Where a path or endpoint may wrap: after these, and before an index or template (``[*]``, ``{id}``).
_BREAK_AFTER: Final = frozenset("./ ,>)")
_BREAK_BEFORE: Final = frozenset("[{")
#: Below this many columns for a path there is no sensible table left: rich folds as it can.
_MIN_WRAP_COLUMNS: Final = 12
#: How to see what a summary left out, said wherever it leaves something out.
_SEE_ALL: Final = "--full lists them; --json and --html have all"
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


def _pieces(text: str) -> Iterator[str]:
    """``text`` cut where it may wrap (``_BREAK_AFTER``, ``_BREAK_BEFORE``); the pieces join back to it."""
    start = 0
    for i, char in enumerate(text):
        if char in _BREAK_BEFORE and i > start:
            yield text[start:i]
            start = i
        elif char in _BREAK_AFTER:
            yield text[start : i + 1]
            start = i + 1
    if start < len(text):
        yield text[start:]


def wrap_at_separators(text: str, width: int) -> list[str]:
    """``text`` as lines of at most ``width``, broken only between ``_pieces``; a piece longer than a
    whole line (a name with no separator in ``width`` characters) is the one thing cut mid-name."""
    lines: list[str] = []
    line = ""
    for piece in _pieces(text):
        while len(piece) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if len(line) + len(piece) > width:
            lines.append(line)
            line = piece
        else:
            line += piece
    if line or not lines:
        lines.append(line)
    return lines


def _wrapped(value: str, width: int | None, style: str = "") -> Text:
    """``_t(value)``, pre-wrapped at separators to ``width`` columns when a width is given."""
    text = clip(printable(value), _TEXT_CHARS)
    if width is not None and width >= _MIN_WRAP_COLUMNS:
        text = "\n".join(wrap_at_separators(text, width))
    return Text(text, style=style)


def _flexible_widths(total: int, fixed: Sequence[int], wanted: Sequence[int], floor: Sequence[int]) -> list[int]:
    """Widths for the wrapping columns of a table ``total`` wide whose other columns take ``fixed``.

    Each wrapping column gets what it ``wanted`` when everything fits; otherwise the columns past the
    first keep at least their ``floor`` (or what they want, if less) and the first, the path, gets the
    rest. A SIMPLE_HEAD table without edge padding spends 3 columns between cells and 1 at each edge.
    """
    columns = len(fixed) + len(wanted)
    room = total - sum(fixed) - (3 * columns - 1)
    if sum(wanted) <= room:
        return list(wanted)
    others = [min(w, f) for w, f in zip(wanted[1:], floor[1:], strict=True)]
    first = max(room - sum(others), 0)
    if first > wanted[0]:  # the path fits: the rest goes to the others, in order
        spare = first - wanted[0]
        first = wanted[0]
        for i, w in enumerate(wanted[1:]):
            extra = min(spare, w - others[i])
            others[i] += extra
            spare -= extra
    return [first, *others]


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
        console.print(_wrapped("tapes: " + ", ".join(report.sources), console.width, "dim"))
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


#: A heading, a table and a note under it. Heading and note are printed as lines of their own, at the
#: console's width: as a table's title or caption they would wrap at the table's.
_Block = tuple[Text | None, Table, Text | None]


def _endpoint_table(endpoints: list[EndpointReport], width: int, full: bool) -> _Block:
    """The ranked table, and the line that says what it left out."""
    shown = endpoints if full else endpoints[:TABLE_ENDPOINTS]
    rows = [
        (
            _severity(endpoint.severity),
            clip(printable(endpoint.endpoint), _TEXT_CHARS),
            str(endpoint.compared),
            str(endpoint.differing),
            fmt_rate(endpoint_rate(endpoint)),
            Text(str(endpoint.errors), style="red" if endpoint.errors else ""),
        )
        for endpoint in shown
    ]
    headers = ("Sev", "Endpoint", "Compared", "Differ", "Rate", "Errors")
    fixed = [max([len(headers[i]), *(len(str(row[i])) for row in rows)]) for i in (0, 2, 3, 4, 5)]
    (endpoint_width,) = _flexible_widths(
        width, fixed, [max([len(headers[1]), *(len(row[1]) for row in rows)])], [len(headers[1])]
    )
    table = Table(box=box.SIMPLE_HEAD, title="Endpoints", title_justify="left", title_style="bold", pad_edge=False)
    table.add_column("Sev", no_wrap=True)
    table.add_column("Endpoint", overflow="fold", width=endpoint_width)
    table.add_column("Compared", justify="right", no_wrap=True)
    table.add_column("Differ", justify="right", no_wrap=True)
    table.add_column("Rate", justify="right", no_wrap=True)
    table.add_column("Errors", justify="right", no_wrap=True)
    for severity, endpoint_text, compared, differing, rate, errors in rows:
        table.add_row(severity, _wrapped(endpoint_text, endpoint_width), compared, differing, rate, errors)
    if len(endpoints) > len(shown):
        return None, table, Text(f"+{len(endpoints) - len(shown)} more endpoints ({_SEE_ALL})", style="dim")
    return None, table, None


def _signature_table(endpoint: EndpointReport, failing: frozenset[str], width: int, full: bool) -> _Block:
    """One endpoint's top signatures: its heading, the table, and the line that says what it left out."""
    title = Text()
    title.append_text(_severity(endpoint.severity))
    title.append(" ")
    title.append_text(_wrapped(endpoint.endpoint, width - len(title), "bold"))
    title.append(f"  {endpoint.differing}/{endpoint.compared} differ ({fmt_rate(endpoint_rate(endpoint))})", "dim")
    signatures = ranked_signatures(endpoint)
    unsuppressed = [s for s in signatures if not s.suppressed]
    shown = unsuppressed if full else unsuppressed[:SIGNATURES_PER_ENDPOINT]
    with_noise = any(s.noise_rate is not None for s in shown)
    rows: list[tuple[Text, str, str, str, str, str, str | None]] = []
    for sig in shown:
        severity = _severity(sig.severity)
        if sig.id in failing:
            severity.append("!", style="bold red")
        rows.append(
            (
                severity,
                clip(printable(sig.kind), _TEXT_CHARS),
                clip(printable(sig.path), _TEXT_CHARS),
                clip(printable(sig.transition), _TEXT_CHARS),
                str(sig.count),
                fmt_rate(sig.rate),
                fmt_rate(sig.noise_rate) if with_noise else None,
            )
        )
    fixed = [
        max(5, *(len(row[0]) for row in rows)) if rows else 5,
        max([4, *(len(row[1]) for row in rows)]),
        max([5, *(len(row[4]) for row in rows)]),
        max([4, *(len(row[5]) for row in rows)]),
    ]
    if with_noise:
        fixed.append(max([5, *(len(row[6] or "") for row in rows)]))
    wanted = [max([4, *(len(row[2]) for row in rows)]), max([6, *(len(row[3]) for row in rows)])]
    path_width, change_width = _flexible_widths(width, fixed, wanted, [4, 10])
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("Sev", no_wrap=True, min_width=5)
    table.add_column("Kind", no_wrap=True)
    table.add_column("Path", overflow="fold", width=path_width)
    table.add_column("Change", overflow="fold", width=change_width)
    table.add_column("Count", justify="right", no_wrap=True)
    table.add_column("Rate", justify="right", no_wrap=True)
    if with_noise:
        table.add_column("Noise", justify="right", no_wrap=True)
    for severity, kind, path, change, count, rate, noise in rows:
        cells: list[Text | str] = [
            severity,
            Text(kind),
            _wrapped(path, path_width),
            _wrapped(change, change_width),
            count,
            rate,
        ]
        if noise is not None:
            cells.append(noise)
        table.add_row(*cells)
    hidden = len(unsuppressed) - len(shown)
    suppressed = Counter(s.suppression_reason or "suppressed" for s in signatures if s.suppressed)
    notes: list[str] = []
    if hidden > 0:
        notes.append(f"+{hidden} more signatures ({_SEE_ALL})")
    if suppressed:
        detail = ", ".join(f"{reason} {count}" for reason, count in suppressed.most_common())
        notes.append(f"{sum(suppressed.values())} suppressed: {detail}")
    return title, table, _t("; ".join(notes), "dim") if notes else None


def _latency_block(report: DiffReport, width: int, full: bool) -> list[Text | Table]:
    """The "Latency" section: a line of counts, the endpoints with a statement (slower first) side
    by side at p50, p90 and p99 (baseline -> candidate ms, ratio), the statements of the slower ones
    (with the intervals), the latency terms that failed, and what the gate could not judge."""
    latency = report.latency
    if latency.pairs == 0:
        untimed = f" ({latency.untimed} compared pairs untimed)" if latency.untimed else ""
        return [Text(f"latency: no compared pair has both sides timed{untimed}", style="dim")]
    stated = [c for c in latency.comparisons if c.quantiles]
    too_few = len(latency.comparisons) - len(stated)
    head = Text("Latency", style="bold")
    counts = f"  {latency.pairs} timed pairs"
    if latency.untimed:
        counts += f", {latency.untimed} untimed"
    if too_few:
        counts += f"; {too_few} endpoint(s) with fewer than {latency.min_pairs} pairs: too few samples, no statement"
    head.append(counts, style="dim")
    out: list[Text | Table] = [head]
    if not stated:
        return out
    failing = latency_failing_endpoints(report)
    shown = stated if full else stated[:LATENCY_ENDPOINTS]
    headers = ("Latency", "Endpoint", "Pairs", "p50 ms", "p90 ms", "p99 ms")
    words: list[Text] = []
    for c in shown:
        word = Text(latency_word(c), style="bold red" if c.verdict == "slower" else "")
        if c.endpoint in failing:
            word.append("!", style="bold red")
        words.append(word)
    endpoints = [clip(printable(c.endpoint), _TEXT_CHARS) for c in shown]
    # Each percentile on one line when the endpoints keep room, else the ratio under the figures.
    for joiner in (" ", "\n"):
        cells = [
            [f"{fmt_ms(q.primary_s)} -> {fmt_ms(q.shadow_s)}{joiner}x{q.ratio:.2f}" for q in c.quantiles] for c in shown
        ]
        fixed = [
            max(len(headers[0]), *(len(w) for w in words)),
            max(len(headers[2]), *(len(str(c.pairs)) for c in shown)),
            *(max(len(headers[3 + i]), *(len(line) for row in cells for line in row[i].split("\n"))) for i in range(3)),
        ]
        wanted = max(len(headers[1]), *(len(e) for e in endpoints))
        (endpoint_width,) = _flexible_widths(width, fixed, [wanted], [len(headers[1])])
        if endpoint_width >= min(wanted, 24):
            break
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("Latency", no_wrap=True)
    table.add_column("Endpoint", overflow="fold", width=endpoint_width)
    table.add_column("Pairs", justify="right", no_wrap=True)
    for label in headers[3:]:
        table.add_column(label, justify="right", no_wrap=True)
    for word, endpoint_text, c, row in zip(words, endpoints, shown, cells, strict=True):
        table.add_row(word, _wrapped(endpoint_text, endpoint_width), str(c.pairs), *row)
    out.append(table)
    if len(stated) > len(shown):
        out.append(Text(f"+{len(stated) - len(shown)} more endpoints ({_SEE_ALL})", style="dim"))
    slower = [c for c in shown if c.verdict == "slower"]
    for c in slower if full else slower[:LATENCY_STATEMENTS]:
        line = _t(c.endpoint, "bold")
        line.append(": ")
        line.append_text(_t(c.statement))
        out.append(line)
    for f in latency.failures:
        line = Text("! ", style="bold red")
        line.append_text(_t(f"{f.term} fails at {f.endpoint}: {f.statement}"))
        out.append(line)
    undecided = {(u.term, u.endpoint) for u in latency.undecided}
    if undecided:
        terms = sorted({term for term, _ in undecided})
        out.append(
            _t(
                f"not judged for too few pairs: {', '.join(terms)} at {len({e for _, e in undecided})} endpoint(s)",
                "dim",
            )
        )
    return out


class _Sink(io.StringIO):
    """Collects the rendering; claims the real stream's encoding so rich picks ASCII boxes for it."""

    def __init__(self, encoding: str) -> None:
        super().__init__()
        self._target_encoding = encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._target_encoding


def _render(report: DiffReport, console: Console, full: bool) -> None:
    _header(report, console)
    endpoints = ranked_endpoints(report)
    if not endpoints:
        console.print(Text("no endpoints were compared", style="dim"))
        return
    console.print()
    failing = frozenset(report.verdict.failing_signatures)
    detailed = [e for e in endpoints if any(not s.suppressed for s in e.signatures)]
    tables = [_endpoint_table(endpoints, console.width, full)]
    tables += [
        _signature_table(e, failing, console.width, full) for e in (detailed if full else detailed[:DETAILED_ENDPOINTS])
    ]
    for i, (heading, table, notes) in enumerate(tables):
        if i:
            console.print()
        if heading is not None:
            console.print(heading)
        console.print(table)
        if notes is not None:
            console.print(notes)
    if not full and len(detailed) > DETAILED_ENDPOINTS:
        console.print(
            Text(f"+{len(detailed) - DETAILED_ENDPOINTS} more endpoints with differences ({_SEE_ALL})", style="dim")
        )
    console.print()
    for item in _latency_block(report, console.width, full):
        console.print(item)
    if report.suppressions:
        line = Text("noise suppressed: ", style="dim")
        line.append_text(_t(", ".join(f"{s.reason} {s.count}" for s in report.suppressions), "dim"))
        console.print(line)
    if failing:
        console.print(Text("! = the signature fails the gate", style="dim"))


def terminal_width(file: TextIO) -> int:
    """The width to render for: the terminal's when ``file`` is one, else ``WIDE_DEFAULT``."""
    if not file.isatty():
        return WIDE_DEFAULT
    try:
        columns = os.get_terminal_size(file.fileno()).columns
    except (OSError, ValueError, io.UnsupportedOperation):
        columns = shutil.get_terminal_size((WIDE_DEFAULT, 24)).columns
    return columns if columns > 0 else WIDE_DEFAULT  # a terminal that never said its size reports 0


def render_terminal(
    report: DiffReport, file: TextIO, *, color: bool | None = None, width: int | None = None, full: bool = False
) -> None:
    """Write the terminal summary of ``report`` to ``file``.

    Colour iff ``color``; when it is None, iff ``file`` is a TTY and ``NO_COLOR`` is not set (no-color.org).
    ``width`` defaults to ``terminal_width(file)``; ``full`` lists every endpoint and signature
    instead of the top ones.

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
        width=terminal_width(file) if width is None else width,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=False,
    )
    _render(report, console, full)
    file.write(sink.getvalue().encode(encoding, "backslashreplace").decode(encoding))
