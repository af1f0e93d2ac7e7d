"""The HTML report: one self-contained file a release reviewer opens offline and explores.

Overview cards, endpoints ranked by severity and rate (each a ``<details>`` holding its field tree and
signatures), each signature holding side-by-side examples of the request and both responses with the
differing paths highlighted, and the suppressed noise with its reasons. CSS and JS are inlined from
``report.css`` and ``report.js``; a Content-Security-Policy admits only those two inline blocks by
hash and no network at all. Bodies are untrusted: every traffic-derived string is escaped here and
secrets are redacted again. It must never reference anything outside the file and never compute
results.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import html
import json
import os
import shlex
from collections.abc import Iterable, Sequence
from importlib import resources
from json.encoder import encode_basestring
from typing import Any, Final

from shadowtap.differ.paths import full_path
from shadowtap.differ.report_model import DiffReport, EndpointReport, Example, FieldStat, Severity, SignatureReport
from shadowtap.differ.reports._bodies import DisplayBody, display_body, value_at
from shadowtap.differ.reports._common import (
    PathToken,
    endpoint_rate,
    fmt_ms,
    fmt_ns,
    fmt_rate,
    latency_failing_endpoints,
    latency_word,
    parse_body_path,
    ranked_endpoints,
    ranked_signatures,
    severity_rank,
    step_matches,
    verdict_word,
)
from shadowtap.differ.reports._files import write_atomically
from shadowtap.differ.reports.redact import redact_headers, redact_target
from shadowtap.recorder.model import Failure, Headers, Outcome, Request

__all__ = ["content_security_policy", "render_html", "report_stylesheet", "write_html"]

#: After trimming the common first and last lines, difflib runs only when (lines a) x (lines b) is at
#: most this: on repetitive text it is worse than quadratic (2,000 periodic lines took 29 s), and
#: 300 x 300 stays near 0.1 s. A larger changed middle is marked as one block.
_LINE_DIFF_MAX_PAIRS: Final = 90_000
_MAX_INDENT_CLASS: Final = 8
#: Characters of full example HTML (request, both responses, pretty bodies) one report may hold.
#: Each signature shows one example in full (the same exchange or identical messages only once,
#: linked to after that) and its other examples by their differing paths and values; once this
#: budget is spent, full examples shrink to that too. So a report stays small enough to mail and
#: open anywhere (a few hundred differing pairs: well under 200 KB) and the JSON report has every
#: example. The most important examples (ranked endpoints and signatures, rendered first) get the
#: budget; suppressed signatures only get its first half.
EXAMPLES_BUDGET_CHARS: Final = 96 * 1024
#: Field-tree rows per endpoint (the busiest paths): a JSON API can have thousands of paths.
FIELD_ROWS: Final = 300
#: Endpoints shown in full (field tree, signatures, examples), the most important first; the others
#: are one line each (counts, severity), so that an API of thousands of templates makes a page a
#: browser opens in a moment. The JSON report has every endpoint in full.
DETAILED_ENDPOINTS: Final = 300
#: Rows of the "failing the gate" table; the JSON report lists every failing signature.
FAILING_ROWS: Final = 500
#: Rows of the latency table (slower endpoints first); the JSON report has every endpoint.
LATENCY_ROWS: Final = 1000
_SEVERITY_LABEL: Final[dict[Severity | None, str]] = {
    "critical": "critical",
    "high": "high",
    "medium": "medium",
    "low": "low",
    None: "no change",
}
_VERDICT_CLASS: Final = {0: "pass", 1: "fail", 2: "inconclusive"}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _text(value: str) -> str:
    # Element text, never an attribute: quotes need no escaping (JSON bodies are full of them).
    return html.escape(value, quote=False)


def _asset(name: str) -> str:
    # Next to this module (not in a subfolder) so pyproject's package-data globs ship them in a wheel.
    return resources.files("shadowtap.differ.reports").joinpath(name).read_text(encoding="utf-8")


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


def report_stylesheet() -> str:
    """The stylesheet every shadowtap HTML report inlines (this one and the replay report): one
    look, light and dark."""
    return _asset("report.css")


def content_security_policy(css: str, script: str | None = None) -> str:
    """The page's policy: exactly the inline ``css`` (and ``script``, if any) by hash, data: images,
    and no network at all."""
    scripts = _csp_hash(script) if script is not None else "'none'"
    return (
        f"default-src 'none'; style-src {_csp_hash(css)}; script-src {scripts}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _meter(rate: float) -> str:
    # Chromium colours a meter by its low/high/optimum bands: green under 1%, amber to 10%, red above.
    return (
        f'<meter min="0" max="1" low="0.01" high="0.1" optimum="0" value="{rate:.4f}" '
        f'title="{fmt_rate(rate)} differ">{fmt_rate(rate)}</meter>'
    )


def _severity_badge(severity: Severity | None) -> str:
    return f'<span class="sev sev-{_e(severity or "none")}">{_e(_SEVERITY_LABEL[severity])}</span>'


# --- JSON with highlighted paths -----------------------------------------------------------------


def _json_scalar(value: Any) -> str:
    # Called once per scalar of every example body: the C string encoder and no json.dumps round
    # trip per value keep a 10 KiB body at a few milliseconds.
    if isinstance(value, str):
        return f'<span class="js">{_text(encode_basestring(value))}</span>'
    if value is None:
        return '<span class="jz">null</span>'
    if isinstance(value, bool):
        return f'<span class="jb">{"true" if value else "false"}</span>'
    if isinstance(value, int):
        return f'<span class="jn">{value}</span>'
    return f'<span class="jn">{_text(json.dumps(value))}</span>'


Patterns = list[tuple[PathToken, ...]]


def _json_html(value: Any, patterns: Patterns) -> str:
    """Pretty JSON (2-space indent) as HTML, with the subtrees at ``patterns`` wrapped in ``<mark>``.

    A highlighted path this side does not have (a field the other side added, or this side lost)
    is shown as a marked ``(absent)`` placeholder where it would be, so both columns line up.
    Each level passes down only the patterns that can still match beneath it, so the (usual) large
    unhighlighted rest of a body costs no path bookkeeping at all.
    """

    def mark(fragment: str, path: tuple[PathToken, ...], css: str = "hl") -> str:
        return f'<mark class="{css}" title="{_e(full_path("body", path))}">{fragment}</mark>'

    def node(item: Any, path: tuple[PathToken, ...], live: Patterns, depth: int) -> str:
        # ``depth`` is the nesting level (the indent); ``path`` is only kept while patterns live.
        if not isinstance(item, dict | list):
            return _json_scalar(item)
        pad = "  " * (depth + 1)
        steps: Iterable[tuple[PathToken, Any]] = item.items() if isinstance(item, dict) else enumerate(item)
        entries = []
        for step, child in steps:
            key = f'<span class="jk">{_text(encode_basestring(step))}</span>: ' if isinstance(step, str) else ""
            if not live:
                entries.append(pad + key + node(child, path, live, depth + 1))
                continue
            child_live = [p for p in live if step_matches(p[depth], step)]
            child_path = (*path, step)
            entry = key + node(child, child_path, [p for p in child_live if len(p) > depth + 1], depth + 1)
            highlighted = any(len(p) == depth + 1 for p in child_live)
            entries.append(pad + (mark(entry, child_path) if highlighted else entry))
        ghosts = [
            pad
            + mark(
                (f'<span class="jk">{_text(encode_basestring(step))}</span>: ' if isinstance(step, str) else "")
                + "(absent)",
                (*path, step),
                "hl absent",
            )
            for step in _absent_steps(item, [p[depth] for p in live if len(p) == depth + 1])
        ]
        open_, close = ("{", "}") if isinstance(item, dict) else ("[", "]")
        if not entries and not ghosts:
            return open_ + close
        # Commas separate real entries only: a placeholder is not JSON and must not look like it.
        body = ",\n".join(entries) + ("\n" if entries and ghosts else "") + "\n".join(ghosts)
        return open_ + "\n" + body + "\n" + "  " * depth + close

    root_highlighted = () in patterns
    rendered = node(value, (), [p for p in patterns if p], 0)
    return mark(rendered, ()) if root_highlighted else rendered


def _absent_steps(item: dict[str, Any] | list[Any], last_steps: list[PathToken]) -> list[PathToken]:
    """Of the highlighted child steps of ``item``, those it does not have, in first-seen order."""
    absent: list[PathToken] = []
    for step in last_steps:
        if isinstance(item, dict):
            missing = isinstance(step, str) and step not in item
        else:
            missing = isinstance(step, int) and step >= len(item)
        if missing and step not in absent:
            absent.append(step)
    return absent


# --- examples ------------------------------------------------------------------------------------


def _headers_html(headers: Headers, highlighted: frozenset[str]) -> str:
    """The headers folded behind the body they came with: a closed ``<details>``, open when one of
    them differs (and is highlighted)."""
    if not headers:
        return '<p class="muted">no headers</p>'
    rows = []
    differing = 0
    for name, value in redact_headers(headers):
        lowered = name.decode("latin-1").lower()
        hot = f"header.{lowered}" in highlighted
        differing += hot
        css = ' class="hl"' if hot else ""
        rows.append(f"<tr{css}><th>{_e(name.decode('latin-1'))}</th><td>{_e(value.decode('latin-1'))}</td></tr>")
    label = _plural(len(rows), "header") + (f", {differing} differing" if differing else "")
    return (
        f'<details class="hdrs"{" open" if differing else ""}><summary>{label}</summary>'
        '<table class="headers">' + "".join(rows) + "</table></details>"
    )


def _body_notes(shown: DisplayBody) -> str:
    notes = [f"{shown.kind}, {shown.wire_bytes} bytes on the wire"]
    if shown.decoded_from:
        notes.append(f"decoded from {shown.decoded_from}")
    if shown.redacted:
        notes.append("secrets redacted")
    if shown.omitted_chars:
        notes.append(f"{shown.omitted_chars} more characters not shown")
    if shown.note:
        notes.append(shown.note)
    return f'<p class="body-note">{_e("; ".join(notes))}</p>'


def _text_lines_html(text: str, changed_lines: frozenset[int]) -> str:
    lines = text.split("\n")
    return "\n".join(
        f'<mark class="hl">{_e(line)}</mark>' if index in changed_lines else _e(line)
        for index, line in enumerate(lines)
    )


def _body_html(shown: DisplayBody, paths: tuple[str, ...], changed_lines: frozenset[int] | None) -> str:
    if shown.kind == "empty":
        return '<p class="muted">empty body</p>' + (_body_notes(shown) if shown.note else "")
    # ``whole``: the body differs as a block (binary, a JSON/text swap); a JSON tree or a line diff
    # marks its own parts instead.
    whole = "body" in paths
    content: str | None = None
    if shown.kind == "json":
        patterns = [p for p in (parse_body_path(path) for path in paths) if p is not None]
        try:
            content = _json_html(shown.value, patterns)
            whole = False
        except RecursionError:
            # Nested too deep to render as a tree: shown as its text, marked as a whole.
            whole = whole or bool(patterns)
    elif shown.kind == "text" and changed_lines is not None:
        content = _text_lines_html(shown.text, changed_lines)
        whole = False
    if content is None:
        content = _e(shown.text)
    css = "body hl-block" if whole else "body"
    return _body_notes(shown) + f'<pre class="{css}">{content}</pre>'


def _changed_lines(left: DisplayBody | None, right: DisplayBody | None) -> tuple[frozenset[int], frozenset[int]] | None:
    if left is None or right is None or left.kind != "text" or right.kind != "text":
        return None
    a = left.text.split("\n")
    b = right.text.split("\n")
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    if (end_a - start) * (end_b - start) > _LINE_DIFF_MAX_PAIRS:
        return frozenset(range(start, end_a)), frozenset(range(start, end_b))
    changed_a: set[int] = set()
    changed_b: set[int] = set()
    matcher = difflib.SequenceMatcher(None, a[start:end_a], b[start:end_b], autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag != "equal":
            changed_a.update(range(start + a0, start + a1))
            changed_b.update(range(start + b0, start + b1))
    return frozenset(changed_a), frozenset(changed_b)


def _outcome_html(
    title: str,
    outcome: Outcome | None,
    shown: DisplayBody | None,
    paths: tuple[str, ...],
    changed: frozenset[int] | None,
) -> str:
    head = f"<h5>{_e(title)}</h5>"
    if outcome is None:
        return f'<div class="side">{head}<p class="muted">no outcome recorded</p></div>'
    if isinstance(outcome, Failure):
        return (
            f'<div class="side">{head}<p class="failure hl-block">failed: <b>{_e(outcome.kind)}</b> '
            f"{_e(outcome.message)}</p></div>"
        )
    assert shown is not None
    highlighted = frozenset(paths)
    status_css = ' class="status hl"' if "status" in highlighted else ' class="status"'
    status = f"<p{status_css}>HTTP/{_e(outcome.http_version)} <b>{outcome.status}</b> {_e(outcome.reason)}</p>"
    return (
        f'<div class="side">{head}{status}{_body_html(shown, paths, changed)}'
        f"{_headers_html(outcome.headers, highlighted)}</div>"
    )


def _shown(outcome: Outcome | None, method: str) -> DisplayBody | None:
    if outcome is None or isinstance(outcome, Failure):
        return None
    return display_body(outcome.headers, outcome.body, outcome.truncated_from, method)


class _RenderState:
    """What one report's rendering has spent and shown so far.

    ``remaining_chars`` is what is left of ``EXAMPLES_BUDGET_CHARS``; ``shown`` maps the messages
    of every example rendered in full (request, both outcomes, highlighted paths) to its anchor, so
    the same exchange sampled for several signatures (or identical exchanges) is written once and
    linked to after that.
    """

    __slots__ = ("remaining_chars", "shown")

    def __init__(self, chars: int) -> None:
        self.remaining_chars = chars
        self.shown: dict[_MessagesKey, tuple[str, str]] = {}


_MessagesKey = tuple[Request, Outcome | None, Outcome | None, frozenset[str]]


def _messages_key(example: Example) -> _MessagesKey:
    return (example.request, example.baseline, example.candidate, frozenset(example.paths))


def _paths_table(example: Example, report: DiffReport) -> str:
    if not example.paths:
        return ""
    rows = "".join(
        f'<tr><td><code class="path">{_e(path)}</code></td>'
        f"<td><code>{_e(value_at(example.baseline, path, 120, example.request.path))}</code></td>"
        f"<td><code>{_e(value_at(example.candidate, path, 120, example.request.path))}</code></td></tr>"
        for path in example.paths
    )
    return (
        f'<table class="paths"><thead><tr><th>differing path</th><th>{_e(report.baseline_name)}</th>'
        f"<th>{_e(report.candidate_name)}</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _request_line(request: Request) -> str:
    return f"<b>{_e(request.method)}</b> {_e(redact_target(request.target))}"


def _messages_html(example: Example, report: DiffReport) -> str:
    """The request and both outcomes side by side, differing paths highlighted, headers folded."""
    request = example.request
    request_body = display_body(request.headers, request.body, request.truncated_from, request.path, True)
    request_html = (
        f'<div class="request"><h5>request</h5>'
        f'<p class="reqline">{_request_line(request)}'
        f"{' <span class=muted>@ ' + _e(request.authority) + '</span>' if request.authority else ''}</p>"
        f"{_body_html(request_body, (), None) if request_body.kind != 'empty' else ''}"
        f"{_headers_html(request.headers, frozenset())}</div>"
    )
    left, right = _shown(example.baseline, request.path), _shown(example.candidate, request.path)
    changed = _changed_lines(left, right)
    left_changed, right_changed = changed if changed is not None else (None, None)
    baseline_title, candidate_title = f"baseline: {report.baseline_name}", f"candidate: {report.candidate_name}"
    return (
        f'{request_html}<div class="sides">'
        f"{_outcome_html(baseline_title, example.baseline, left, example.paths, left_changed)}"
        f"{_outcome_html(candidate_title, example.candidate, right, example.paths, right_changed)}"
        "</div>"
    )


def _example_head(example: Example, number: int) -> str:
    return (
        f'<p class="ex-head">example {number}: exchange <code>{_e(example.exchange_id)}</code> '
        f"at {_e(fmt_ns(example.started_at_ns))}</p>"
    )


def _full_example_html(
    example: Example, report: DiffReport, state: _RenderState, reserve_chars: int, sig: SignatureReport
) -> str:
    """An example with its full messages, or a link to the signature that already shows the same
    messages, or (once the report's budget is spent) its differing paths and request line only."""
    head = _example_head(example, 1)
    paths_table = _paths_table(example, report)
    key = _messages_key(example)
    seen = state.shown.get(key)
    if seen is not None:
        anchor, where = seen
        return (
            f'<div class="example">{head}{paths_table}<p class="reqline">{_request_line(example.request)}</p>'
            f'<p class="muted seen">request and responses shown once, under <a href="#{_e(anchor)}">{_e(where)}</a></p>'
            "</div>"
        )
    if state.remaining_chars <= reserve_chars:
        return (
            f'<div class="example">{head}{paths_table}<p class="reqline">{_request_line(example.request)}</p>'
            '<p class="muted omitted">full request and responses omitted: this report reached its size budget '
            "(the JSON report has every example)</p></div>"
        )
    state.shown[key] = (f"sig-{sig.id}", f"{sig.endpoint} {sig.kind} {sig.path}")
    full = f'<div class="example">{head}{paths_table}{_messages_html(example, report)}</div>'
    state.remaining_chars -= len(full)
    return full


def _more_examples_html(examples: Sequence[Example], report: DiffReport, first_number: int) -> str:
    """The examples after the one shown in full: differing paths and request line each, examples
    with the same differing values folded into the first of them."""
    if not examples:
        return ""
    groups: dict[str, list[Example]] = {}
    for example in examples:
        groups.setdefault(_paths_table(example, report), []).append(example)
    parts = []
    for number, (table, group) in enumerate(groups.items(), first_number):
        first = group[0]
        same = ""
        if len(group) > 1:
            ids = ", ".join(f"<code>{_e(e.exchange_id)}</code>" for e in group[1:])
            same = f'<p class="muted">{_plural(len(group) - 1, "more example")} with the same values: {ids}</p>'
        parts.append(
            f'<div class="example compact">{_example_head(first, number)}{table}'
            f'<p class="reqline">{_request_line(first.request)}</p>{same}</div>'
        )
    return "".join(parts)


# --- endpoints -----------------------------------------------------------------------------------


def _signature_html(sig: SignatureReport, report: DiffReport, failing: frozenset[str], state: _RenderState) -> str:
    badges = _severity_badge(sig.severity)
    if sig.id in failing:
        badges += ' <span class="gate">fails the gate</span>'
    if sig.suppressed:
        badges += f' <span class="supp">suppressed: {_e(sig.suppression_reason or "yes")}</span>'
    noise = f"noise {fmt_rate(sig.noise_rate)}" if sig.noise_rate is not None else "no noise baseline"
    summary = (
        f'<summary>{badges} <span class="kind">{_e(sig.kind)}</span> <code class="path">{_e(sig.path)}</code> '
        f'<span class="transition">{_e(sig.transition)}</span> '
        f'<span class="count">{sig.count}&times; ({fmt_rate(sig.rate)}, {_e(noise)})</span></summary>'
    )
    reserve_chars = EXAMPLES_BUDGET_CHARS // 2 if sig.suppressed else 0
    examples = ""
    if sig.examples:
        # One example in full: one whose messages are already on the page if there is one (a link
        # then costs a line), else the first; the others by their differing paths.
        full = next((e for e in sig.examples if _messages_key(e) in state.shown), sig.examples[0])
        rest = [e for e in sig.examples if e is not full]
        examples = _full_example_html(full, report, state, reserve_chars, sig) + _more_examples_html(rest, report, 2)
    css = "signature suppressed" if sig.suppressed else "signature"
    return (
        f'<details class="{css}" id="sig-{_e(sig.id)}" data-signature="{_e(sig.id)}">{summary}'
        f'<div class="sig-body"><p class="muted">signature <code>{_e(sig.id)}</code>; first seen '
        f"{_e(fmt_ns(sig.first_seen_ns))}, last seen {_e(fmt_ns(sig.last_seen_ns))}; "
        f"{_plural(len(sig.examples), 'example')}</p>"
        f"{examples or '<p class=muted>no examples were sampled</p>'}</div></details>"
    )


def _field_sort_key(stat: FieldStat) -> tuple[Any, ...]:
    # Status, then headers, then the body tree in path order (a parent right before its children).
    tokens = parse_body_path(stat.path)
    if tokens is not None:
        return (2, tuple(str(t) for t in tokens))
    group = 0 if stat.path == "status" else 1 if stat.path.startswith("header.") else 3
    return (group, (stat.path,))


def _field_depths(fields: list[FieldStat]) -> dict[str, int]:
    # Indent by how many of the listed paths are this one's ancestors, so the table reads as a tree
    # even when intermediate nodes (``body.orders`` above ``body.orders[*]``) never differed.
    # Prefix lookups in a set: linear in fields x depth, for endpoints with thousands of paths.
    body_paths = {stat.path: tokens for stat in fields if (tokens := parse_body_path(stat.path)) is not None}
    listed = set(body_paths.values())
    return {
        path: min(_MAX_INDENT_CLASS, sum(1 for cut in range(len(tokens)) if tokens[:cut] in listed))
        for path, tokens in body_paths.items()
    }


def _fields_html(fields: Sequence[FieldStat]) -> str:
    # The busiest paths, shown as a tree; a reviewer reads hundreds of rows at most.
    busiest = sorted(fields, key=lambda f: (-(f.differing + f.suppressed), f.path))[:FIELD_ROWS]
    ordered = sorted(busiest, key=_field_sort_key)
    depths = _field_depths(ordered)
    rows = []
    for stat in ordered:
        rate = stat.differing / stat.compared if stat.compared else 0.0
        rows.append(
            f'<tr class="d{depths.get(stat.path, 0)}{" hot" if stat.differing else ""}">'
            f'<td><code class="path">{_e(stat.path)}</code></td><td class="num">{stat.differing}</td>'
            f'<td class="num">{stat.compared}</td><td class="num">{fmt_rate(rate)}'
            f" {_meter(rate)}</td>"
            f'<td class="num">{stat.suppressed}</td><td class="num">{fmt_rate(stat.noise_rate)}</td></tr>'
        )
    if not rows:
        return '<p class="muted">no field differed</p>'
    more = len(fields) - len(busiest)
    return (
        '<table class="fields"><thead><tr><th>path</th><th>differing</th><th>compared</th><th>rate</th>'
        "<th>suppressed</th><th>noise rate</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + (f'<p class="muted">{more} quieter paths not shown (the JSON report lists them all)</p>' if more else "")
    )


def _endpoint_html(
    endpoint: EndpointReport, report: DiffReport, failing: frozenset[str], rank: int, state: _RenderState
) -> str:
    rate = endpoint_rate(endpoint)
    signatures = ranked_signatures(endpoint)
    suppressed = sum(1 for s in signatures if s.suppressed)
    live = _plural(len(signatures) - suppressed, "signature")
    summary = (
        f'<summary>{_severity_badge(endpoint.severity)} <span class="ep-name">{_e(endpoint.endpoint)}</span> '
        f'<span class="ep-stats">{endpoint.differing}/{endpoint.compared} differ ({fmt_rate(rate)})'
        f"{f', {endpoint.errors} errors' if endpoint.errors else ''}; {live}"
        f"{f', {suppressed} suppressed' if suppressed else ''}</span>"
        f" {_meter(rate)}</summary>"
    )
    counts = (
        f'<p class="muted">{endpoint.compared} compared, {endpoint.equal} equal, '
        f"{endpoint.differing} differing, {endpoint.errors} errors</p>"
    )
    if rank >= DETAILED_ENDPOINTS:
        body = (
            f'<div class="ep-body">{counts}<p class="muted">{_plural(len(signatures), "signature")} and the field '
            f"tree are in the JSON report, or here with <code>shadowtap report --endpoint "
            f"{_e(shlex.quote(endpoint.endpoint))} --html OUT</code>: this page details the "
            f"{DETAILED_ENDPOINTS} endpoints that matter most.</p></div>"
        )
    else:
        body = (
            f'<div class="ep-body">{counts}'
            f"<h4>Field tree</h4>{_fields_html(endpoint.fields)}"
            f"<h4>Signatures</h4>"
            + ("".join(_signature_html(s, report, failing, state) for s in signatures) or '<p class="muted">none</p>')
            + "</div>"
        )
    # Open when it fails the gate: that is what the reviewer came for; the rest wait for a click.
    fails = any(s.id in failing for s in signatures)
    return (
        f'<details class="endpoint ep-{_e(endpoint.severity or "none")}{" fails-gate" if fails else ""}" '
        f'id="ep-{rank}" data-endpoint="{_e(endpoint.endpoint)}"{" open" if fails else ""}>{summary}{body}</details>'
    )


# --- page ----------------------------------------------------------------------------------------


def _failing_html(report: DiffReport, endpoints: list[EndpointReport]) -> str:
    """The signatures that fail the gate, most severe then most frequent first, linking to their examples."""
    failing = frozenset(report.verdict.failing_signatures)
    signatures = sorted(
        (sig for endpoint in endpoints for sig in endpoint.signatures if sig.id in failing),
        key=lambda s: (severity_rank(s.severity), -s.rate, -s.count, s.endpoint, s.path),
    )
    rows = [
        f"<tr><td>{_severity_badge(sig.severity)}</td><td><code>{_e(sig.endpoint)}</code></td>"
        f'<td>{_e(sig.kind)}</td><td><a href="#sig-{_e(sig.id)}"><code class="path">{_e(sig.path)}</code></a></td>'
        f'<td><span class="transition">{_e(sig.transition)}</span></td><td class="num">{sig.count}</td>'
        f'<td class="num">{fmt_rate(sig.rate)}</td><td class="num">{fmt_rate(sig.noise_rate)}</td></tr>'
        for sig in signatures[:FAILING_ROWS]
    ]
    if not rows:
        return ""
    more = len(signatures) - len(rows)
    return (
        f'<section id="failing"><h2>Failing the gate ({len(signatures)})</h2>'
        '<table class="failing"><thead><tr><th>severity</th><th>endpoint</th><th>kind</th><th>path</th>'
        '<th>change</th><th class="num">count</th><th class="num">rate</th><th class="num">noise</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        + (f'<p class="muted">and {more} more, in the JSON report</p>' if more > 0 else "")
        + "</section>"
    )


def _latency_html(report: DiffReport) -> str:
    """The latency section: one row per endpoint (slower first), p50, p90 and p99 of both sides with
    the ratio and its 95 % interval, the verdict and its statement; then the terms that failed and
    those that could not be judged."""
    latency = report.latency
    if latency.pairs == 0:
        untimed = f" ({latency.untimed} compared pairs untimed)" if latency.untimed else ""
        return (
            f'<section id="latency"><h2>Latency</h2><p class="muted">no compared pair has both sides timed'
            f"{_text(untimed)}</p></section>"
        )
    failing = latency_failing_endpoints(report)
    rows: list[str] = []
    for c in latency.comparisons[:LATENCY_ROWS]:
        gate = f' <span class="lat-fail" title="{_e(", ".join(failing[c.endpoint]))}">fails the gate</span>' if (
            c.endpoint in failing
        ) else ""  # fmt: skip
        cells = (
            "".join(
                f'<td class="num">{_e(fmt_ms(q.primary_s))}</td><td class="num">{_e(fmt_ms(q.shadow_s))}</td>'
                f'<td class="num">x{q.ratio:.2f}<br><span class="muted">'
                f"{'-' if q.ratio_ci is None else f'{q.ratio_ci[0]:.2f}-{q.ratio_ci[1]:.2f}'}</span></td>"
                for q in c.quantiles
            )
            or '<td colspan="9" class="muted">too few samples</td>'
        )
        rows.append(
            f'<tr class="lat-{_e(c.verdict.replace(" ", "-"))}" data-endpoint="{_e(c.endpoint)}">'
            f"<td><b>{_e(latency_word(c))}</b>{gate}</td><td><code>{_e(c.endpoint)}</code></td>"
            f'<td class="num">{c.pairs}</td>{cells}<td class="statement">{_text(c.statement)}</td></tr>'
        )
    more = len(latency.comparisons) - len(rows)
    notes = [
        f"<li>{_e(f.term)} fails at <code>{_e(f.endpoint)}</code>: {_text(f.statement)}</li>" for f in latency.failures
    ]
    undecided = {(u.term, u.endpoint) for u in latency.undecided}
    if undecided:
        terms = ", ".join(sorted({t for t, _ in undecided}))
        notes.append(
            f"<li>not judged for too few pairs: {_e(terms)} at {_plural(len({e for _, e in undecided}), 'endpoint')}"
            "</li>"
        )
    heads = "".join(
        f'<th class="num">{q} baseline ms</th><th class="num">{q} candidate ms</th>'
        f'<th class="num">{q} ratio, 95% CI</th>'
        for q in ("p50", "p90", "p99")
    )
    return (
        f'<section id="latency"><h2>Latency ({_plural(len(latency.comparisons), "endpoint")})</h2>'
        f'<p class="muted">{latency.pairs} compared pairs with both sides timed, {latency.untimed} untimed; '
        f"each side from its request sent to its last byte. No statement below {latency.min_pairs} pairs; "
        "slower or faster means a Wilcoxon signed-rank p-value under 0.01.</p>"
        + (f"<ul>{''.join(notes)}</ul>" if notes else "")
        + '<table class="latency"><thead><tr><th>latency</th><th>endpoint</th><th class="num">pairs</th>'
        f"{heads}<th>statement</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        + (f'<p class="muted">and {more} more, in the JSON report</p>' if more > 0 else "")
        + "</section>"
    )


def _cards(report: DiffReport) -> str:
    verdict = report.verdict
    cards = [
        ("pairs", report.pairs),
        ("compared", report.compared),
        ("equal", report.equal),
        ("differing", report.differing),
        ("noise-suppressed", report.noise_suppressed),
        ("errors", report.errors),
    ]
    html_cards = "".join(
        f'<div class="card" data-card="{key}"><span class="num">{value}</span>'
        f'<span class="label">{key.replace("-", " ")}</span></div>'
        for key, value in cards
    )
    css = _VERDICT_CLASS.get(verdict.exit_code, "inconclusive")
    html_cards += (
        f'<div class="card verdict-card {css}" data-card="verdict"><span class="num">'
        f"{_e(verdict_word(verdict.exit_code))}</span>"
        f'<span class="label">verdict (exit {verdict.exit_code})</span></div>'
    )
    return f'<section class="cards">{html_cards}</section>'


def _suppressions_html(report: DiffReport) -> str:
    rows = "".join(
        f'<tr><td><code>{_e(s.reason)}</code></td><td class="num">{s.count}</td></tr>' for s in report.suppressions
    )
    suppressed_sigs = [(e, s) for e in report.endpoints for s in e.signatures if s.suppressed]
    sig_rows = "".join(
        f'<tr><td>{_e(e.endpoint)}</td><td><a href="#sig-{_e(s.id)}"><code>{_e(s.path)}</code></a></td>'
        f'<td>{_e(s.kind)}</td><td class="num">{s.count}</td><td>{_e(s.suppression_reason or "")}</td>'
        f'<td class="num">{fmt_rate(s.noise_rate)}</td></tr>'
        for e, s in suppressed_sigs
    )
    parts = [f"<h2>Noise suppressed: {report.noise_suppressed}</h2>"]
    parts.append(
        '<table class="supp-table"><thead><tr><th>reason</th><th>differences</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
        if rows
        else '<p class="muted">nothing was suppressed</p>'
    )
    if sig_rows:
        parts.append(
            "<h3>Suppressed signatures</h3>"
            '<table class="supp-sigs"><thead><tr><th>endpoint</th><th>path</th><th>kind</th><th>count</th>'
            f"<th>reason</th><th>noise rate</th></tr></thead><tbody>{sig_rows}</tbody></table>"
        )
    return '<section id="suppressions">' + "".join(parts) + "</section>"


def render_html(report: DiffReport) -> str:
    """The complete HTML document for ``report``."""
    css = report_stylesheet()
    script = _asset("report.js")
    csp = content_security_policy(css, script)
    verdict = report.verdict
    failing = frozenset(verdict.failing_signatures)
    versus = f"<b>{_e(report.baseline_name)}</b> vs <b>{_e(report.candidate_name)}</b>"
    if report.secondary_name is not None:
        versus += f", noise measured against <b>{_e(report.secondary_name)}</b>"
    meta = [versus, f"generated {_e(fmt_ns(report.generated_at_ns))}"]
    if report.window_start_ns is not None or report.window_end_ns is not None:
        meta.append(f"window {_e(fmt_ns(report.window_start_ns))} to {_e(fmt_ns(report.window_end_ns))}")
    if report.sources:
        meta.append("tapes: " + ", ".join(f"<code>{_e(s)}</code>" for s in report.sources))
    endpoints = ranked_endpoints(report)
    state = _RenderState(EXAMPLES_BUDGET_CHARS)
    endpoints_html = "".join(_endpoint_html(e, report, failing, i, state) for i, e in enumerate(endpoints))
    title = f"shadowtap diff: {verdict_word(verdict.exit_code)} ({report.baseline_name} vs {report.candidate_name})"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{_e(title)}</title>
<style>{css}</style>
</head>
<body>
<header>
<h1>shadowtap diff</h1>
<p class="verdict {_VERDICT_CLASS.get(verdict.exit_code, "inconclusive")}"><b>{_e(verdict_word(verdict.exit_code))}</b>
{_e(verdict.reason)}</p>
<p class="meta">{" &middot; ".join(meta)}</p>
</header>
<main>
{_cards(report)}
{_failing_html(report, endpoints)}
<section id="endpoints">
<h2>Endpoints ({len(endpoints)})</h2>
<div class="toolbar">
<input type="search" id="filter" placeholder="filter endpoints" aria-label="filter endpoints">
<button type="button" id="expand-all">expand all</button>
<button type="button" id="collapse-all">collapse all</button>
<label><input type="checkbox" id="hide-suppressed"> hide suppressed signatures</label>
</div>
{endpoints_html or '<p class="muted">no endpoints were compared</p>'}
</section>
{_latency_html(report)}
{_suppressions_html(report)}
</main>
<footer><p class="muted">schema version {report.schema_version}. Secrets in headers, query strings and
JSON fields are redacted. This file makes no network requests.</p></footer>
<script>{script}</script>
</body>
</html>
"""


def write_html(report: DiffReport, path: str | os.PathLike[str]) -> None:
    """Write the self-contained HTML report for ``report`` to ``path``."""
    write_atomically(path, render_html(report))
