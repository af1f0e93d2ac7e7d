"""The terminal report: ranked, readable at 80 columns, coloured only when asked, inert to hostile text."""

from __future__ import annotations

import dataclasses
import io
import os
import re

import pytest

from shadowtap.differ.report_model import DiffReport
from shadowtap.differ.reports import render_terminal
from tests.differ.report_fixtures import inconclusive_report, passing_report, rich_report

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def render(report: DiffReport, *, color: bool | None = None) -> str:
    out = io.StringIO()
    render_terminal(report, out, color=color)
    return out.getvalue()


def test_plain_output_has_overview_ranked_endpoints_and_top_signatures() -> None:
    text = render(rich_report())
    lines = text.splitlines()
    assert lines[0].split() == ["FAIL", "5", "critical/high", "signatures", "above", "the", "noise", "rule"]
    assert "baseline primary vs candidate v2, noise from v1-copy" in text
    assert "pairs 1300  compared 1280  equal 1015  differing 260" in text
    assert "errors 7  noise suppressed 1110" in text
    table_rows = [line.split() for line in lines if line.strip().startswith(("CRIT ", "HIGH ", "MED ", "ok "))]
    ranked = [row[1:3] for row in table_rows[:7]]
    assert ranked[0] == ["GET", "/users/{id}"]
    assert ranked[2] == ["POST", "/orders"]
    assert ranked[-1] == ["GET", "/health"]
    # The users endpoint's signatures: failing ones marked, suppressed ones only counted with reasons.
    assert re.search(r"CRIT!\s+status\s+status\s+200->500\s+12\s+2\.4%", text)
    assert re.search(r"HIGH!\s+removed\s+body\.email\s+present->missing\s+30\s+6\.0%", text)
    assert re.search(r"MED\s+value\s+body\.orders\[\*\]\.total\s+int->int\s+8\s+1\.6%", text)
    assert "2 suppressed: volatile:timestamp 1, volatile:header 1" in text
    assert "body.updated_at" not in text  # suppressed: counted, not listed
    assert "noise suppressed: volatile:header 500, volatile:timestamp 480, learned-noise 130" in text


def test_fits_80_columns_and_has_no_colour_unless_asked() -> None:
    text = render(rich_report(), color=False)
    assert "\x1b" not in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80


def test_colour_when_asked_and_only_styles_change() -> None:
    coloured = render(rich_report(), color=True)
    assert ANSI.search(coloured)
    assert "\x1b[1;37;41m FAIL \x1b[0m" in coloured
    assert [line.rstrip() for line in ANSI.sub("", coloured).splitlines()] == [
        line.rstrip() for line in render(rich_report(), color=False).splitlines()
    ]


def render_to_tty() -> str:
    read_fd, write_fd = os.openpty()
    try:
        with os.fdopen(write_fd, "w", encoding="utf-8", closefd=False) as tty:
            assert tty.isatty()
            render_terminal(passing_report(), tty)
            tty.flush()
            return os.read(read_fd, 65536).decode("utf-8")
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_colour_follows_the_tty_and_no_color_when_not_specified(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert ANSI.search(render_to_tty())
    assert "\x1b" not in render(passing_report())  # a StringIO is not a TTY
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b" not in render_to_tty()
    assert ANSI.search(render(passing_report(), color=True))  # an explicit request still wins


def test_markup_and_control_characters_from_traffic_print_as_text() -> None:
    report = rich_report()
    hostile = dataclasses.replace(report.endpoints[0], endpoint="GET /[bold red]x[/] \x1b[2J\u202eevil")
    text = render(dataclasses.replace(report, endpoints=(hostile, *report.endpoints[1:])), color=False)
    assert "[bold red]x[/]" in text
    assert "\x1b" not in text and "\u202e" not in text
    assert "\\x1b[2J\\u202eevil" in text


@pytest.mark.parametrize(
    ("make", "first_word", "expected"),
    [
        (passing_report, "PASS", "no regression above the noise rule"),
        (inconclusive_report, "INCONCLUSIVE", "no endpoints were compared"),
    ],
)
def test_passing_and_inconclusive_reports(make: object, first_word: str, expected: str) -> None:
    assert callable(make)
    text = render(make())
    assert text.split()[0] == first_word
    assert expected in text
    assert "!" not in text  # nothing fails the gate


def test_long_reports_are_summarised_not_dumped() -> None:
    report = rich_report()
    many = tuple(dataclasses.replace(report.endpoints[1], endpoint=f"POST /orders/{i}") for i in range(40))
    text = render(dataclasses.replace(report, endpoints=many), color=False)
    assert "+10 more endpoints (see --html)" in text
    assert "+30 more endpoints with differences" in text


def test_an_ascii_only_stream_gets_ascii_boxes_and_escapes_not_an_error() -> None:
    report = rich_report()
    accented = dataclasses.replace(report.endpoints[0], endpoint="GET /caf\u00e9/\u2603")
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    render_terminal(dataclasses.replace(report, endpoints=(accented,)), stream)
    stream.flush()
    text = raw.getvalue().decode("ascii")
    assert "GET /caf\\xe9/\\u2603" in text
    assert "+-----" in text and "\u2500" not in text


def test_pathological_names_are_clipped() -> None:
    report = rich_report()

    def a_count(endpoint: str) -> int:
        named = dataclasses.replace(report.endpoints[0], endpoint=endpoint)
        return render(dataclasses.replace(report, endpoints=(named,))).count("a")

    # Two mentions (the ranked table and the signature table's title), each clipped to 300 chars.
    assert a_count("GET /" + "a" * 5000) - a_count("GET /") == 2 * (300 - len("GET /") - len("..."))
