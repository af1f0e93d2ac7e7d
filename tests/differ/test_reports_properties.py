"""Property tests: whatever text and bytes traffic puts into a report, every renderer stays well-formed.

Endpoints, paths, transitions, reasons, header values and bodies are arbitrary (markup, control
characters, lone surrogates, binary). The HTML keeps exactly its own structure, the JUnit XML parses,
the Markdown table keeps its columns, the JSON round-trips and the terminal stays plain and narrow.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowtap.differ.report_model import (
    REPORT_SCHEMA_VERSION,
    SEVERITIES,
    DiffReport,
    EndpointReport,
    Example,
    FieldStat,
    SignatureReport,
    Suppression,
    Verdict,
)
from shadowtap.differ.reports import render_html, render_junit, render_markdown, render_terminal, report_to_dict
from shadowtap.differ.reports._bodies import display_body
from shadowtap.differ.reports._common import printable
from shadowtap.recorder.model import Failure, Request, Response

timestamps = st.integers(-(2**63), 2**63 - 1)
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)
header_names = st.sampled_from([b"Content-Type", b"Content-Encoding", b"Set-Cookie", b"X-Thing", b"Authorization"])
header_values = st.one_of(
    st.sampled_from([b"application/json", b"text/plain", b"gzip", b"br", b"zstd", b"deflate, gzip"]),
    st.binary(max_size=24),
)
headers = st.lists(st.tuples(header_names, header_values), max_size=4).map(tuple)
bodies = st.one_of(
    st.binary(max_size=120),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), any_text),
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(any_text, inner, max_size=3)),
        max_leaves=8,
    ).map(lambda v: json.dumps(v).encode()),
)
paths = st.one_of(
    any_text,
    st.sampled_from(["status", "body", "header.content-type", "body.a", "body[0]", 'body["x y"].z']),
)
outcomes = st.one_of(
    st.none(),
    st.builds(Failure, any_text, any_text),
    st.builds(Response, st.integers(100, 599), any_text, headers, bodies),
)
examples = st.builds(
    Example,
    any_text,
    timestamps,
    st.builds(Request, st.sampled_from(["GET", "POST"]), any_text, headers, bodies),
    outcomes,
    outcomes,
    st.lists(paths, max_size=3).map(tuple),
)


@st.composite
def reports(draw: st.DrawFn) -> DiffReport:
    endpoints = []
    failing: list[str] = []
    for e in range(draw(st.integers(0, 3))):
        name = draw(any_text)
        signatures = []
        for s in range(draw(st.integers(0, 3))):
            suppressed = draw(st.booleans())
            sig_id = f"{e}-{s}"
            if not suppressed and draw(st.booleans()):
                failing.append(sig_id)
            signatures.append(
                SignatureReport(
                    id=sig_id,
                    endpoint=name,
                    path=draw(paths),
                    kind=draw(any_text),
                    transition=draw(any_text),
                    severity=draw(st.sampled_from(SEVERITIES)),
                    count=draw(st.integers(0, 10**6)),
                    rate=draw(st.floats(0, 1)),
                    first_seen_ns=draw(timestamps),
                    last_seen_ns=draw(timestamps),
                    suppressed=suppressed,
                    suppression_reason=draw(any_text) if suppressed else None,
                    noise_rate=draw(st.none() | st.floats(0, 1)),
                    examples=tuple(draw(st.lists(examples, max_size=2))),
                )
            )
        fields = tuple(
            FieldStat(
                draw(paths), draw(st.integers(0, 9)), draw(st.integers(0, 9)), 0, draw(st.none() | st.floats(0, 1))
            )
            for _ in range(draw(st.integers(0, 3)))
        )
        compared = draw(st.integers(0, 10**6))
        endpoints.append(
            EndpointReport(
                name, compared, 0, draw(st.integers(0, compared)), 0, draw(st.sampled_from((*SEVERITIES, None))),
                fields, tuple(signatures),
            )
        )  # fmt: skip
    return DiffReport(
        schema_version=REPORT_SCHEMA_VERSION,
        generated_at_ns=draw(timestamps),
        sources=tuple(draw(st.lists(any_text, max_size=2))),
        baseline_name=draw(any_text),
        candidate_name=draw(any_text),
        secondary_name=draw(st.none() | any_text),
        window_start_ns=None,
        window_end_ns=None,
        pairs=1,
        compared=1,
        equal=0,
        differing=1,
        errors=0,
        noise_suppressed=0,
        suppressions=tuple(draw(st.lists(st.builds(Suppression, any_text, st.integers(0, 99)), max_size=2))),
        endpoints=tuple(endpoints),
        verdict=Verdict(draw(st.integers(0, 2)), draw(any_text), tuple(failing)),
    )


class TagCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def _tags(document: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    parser = TagCounter()
    parser.feed(document)
    parser.close()
    return parser.tags


ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "h4", "h5", "p", "b", "main",
    "section", "div", "span", "input", "button", "label", "details", "summary", "table", "thead", "tbody", "tr",
    "th", "td", "code", "pre", "mark", "meter", "a", "footer", "script",
}  # fmt: skip


@PROPERTY_SETTINGS
@given(reports())
def test_html_structure_is_only_ever_our_own(report: DiffReport) -> None:
    tags = _tags(render_html(report))
    assert {tag for tag, _ in tags} <= ALLOWED_TAGS
    assert sum(1 for tag, _ in tags if tag == "script") == 1
    for _, attrs in tags:
        for name, value in attrs:
            assert not name.startswith("on") and name != "src"
            if name == "href":
                assert value is not None and value.startswith("#sig-")


@PROPERTY_SETTINGS
@given(reports())
def test_junit_always_parses_with_one_case_per_endpoint(report: DiffReport) -> None:
    root = ET.fromstring(render_junit(report).encode("utf-8"))
    names = [case.attrib["name"] for case in root.iter("testcase") if case.attrib["name"] != "(verdict)"]
    assert len(names) == len(report.endpoints)


@PROPERTY_SETTINGS
@given(reports())
def test_markdown_table_rows_keep_their_six_columns(report: DiffReport) -> None:
    for line in render_markdown(report).split("\n"):
        if line.startswith("| :"):
            assert len(re.split(r"(?<!\\)\|", line)) == 8, line


@PROPERTY_SETTINGS
@given(reports())
def test_json_round_trips_strictly(report: DiffReport) -> None:
    doc: dict[str, Any] = report_to_dict(report)
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc


@PROPERTY_SETTINGS
@given(reports())
def test_terminal_stays_plain_and_narrow(report: DiffReport) -> None:
    out = io.StringIO()
    render_terminal(report, out, color=False, width=80)
    text = out.getvalue()
    assert "\x1b" not in text
    assert max((len(line.rstrip()) for line in text.splitlines()), default=0) <= 80


@PROPERTY_SETTINGS
@given(headers, st.binary(max_size=300), st.none() | st.integers(0, 10**6))
def test_display_body_never_raises_and_always_bounds_its_output(
    message_headers: tuple[tuple[bytes, bytes], ...], body: bytes, truncated_from: int | None
) -> None:
    shown = display_body(message_headers, body, truncated_from)
    assert shown.kind in ("empty", "json", "text", "binary")
    assert shown.wire_bytes == len(body)


secrets_text = st.text("ABCDEFGHJKLMNPQRSTUVWXYZ23456789", min_size=16, max_size=24).map(lambda s: "S3" + s)


@PROPERTY_SETTINGS
@given(reports(), secrets_text, st.sampled_from(["password", "api_key", "access_token", "client_secret"]))
def test_planted_secrets_never_reach_any_report(report: DiffReport, secret: str, field: str) -> None:
    request = Request(
        "POST",
        f"/login?{field}={secret}&next=/home",
        ((b"Authorization", b"Bearer " + secret.encode()), (b"Cookie", b"sid=" + secret.encode())),
        json.dumps({"user": "ann", field: secret}).encode(),
    )
    response = Response(
        200,
        "OK",
        ((b"Set-Cookie", b"sid=" + secret.encode() + b"; Path=/"), (b"Content-Type", b"application/json")),
        json.dumps({"ok": True, "session": {field: secret}}).encode(),
    )
    example = Example("ex", 0, request, response, response, ("body.session", f"body.session.{field}"))
    endpoint = EndpointReport(
        "POST /login", 1, 0, 1, 0, "medium", (),
        (SignatureReport("sig", "POST /login", "body.session", "value", "str->str", "medium", 1, 1.0, 0, 0, False,
                         None, None, (example,)),),
    )  # fmt: skip
    planted = dataclasses.replace(report, endpoints=(*report.endpoints, endpoint))
    out = io.StringIO()
    render_terminal(planted, out)
    for rendered in (
        render_html(planted),
        render_markdown(planted),
        render_junit(planted),
        json.dumps(report_to_dict(planted)),
        out.getvalue(),
    ):
        assert secret not in rendered


def test_a_lone_surrogate_is_escaped_before_layout_so_rows_keep_their_width() -> None:
    # Found by test_terminal_stays_plain_and_narrow: a path of "\ud800" was laid out as one
    # character and written as six, pushing its row past 80 columns.
    assert printable("a\ud800b") == "a\\ud800b"
    sig = SignatureReport(
        id="0-0", endpoint="", path="\ud800", kind="", transition="", severity="critical", count=0, rate=0.0,
        first_seen_ns=0, last_seen_ns=0, suppressed=False, suppression_reason=None, noise_rate=None, examples=(),
    )  # fmt: skip
    endpoint = EndpointReport(
        endpoint="", compared=0, equal=0, differing=0, errors=0, severity="critical", fields=(), signatures=(sig,)
    )
    report = DiffReport(
        schema_version=1, generated_at_ns=0, sources=(), baseline_name="", candidate_name="", secondary_name=None,
        window_start_ns=None, window_end_ns=None, pairs=1, compared=1, equal=0, differing=1, errors=0,
        noise_suppressed=0, suppressions=(), endpoints=(endpoint,), verdict=Verdict(0, "", ()),
    )  # fmt: skip
    out = io.StringIO()
    render_terminal(report, out, color=False, width=80)
    assert "\\ud800" in out.getvalue()
    assert max(len(line.rstrip()) for line in out.getvalue().splitlines()) <= 80
