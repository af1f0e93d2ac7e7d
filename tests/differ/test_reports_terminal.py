"""The terminal report: ranked, at the terminal's width (or a wide default), paths whole, nothing hidden without
a way to see it, coloured only when asked, inert to hostile text."""

from __future__ import annotations

import dataclasses
import io
import os
import re

import pytest

from shadowtap.differ.report_model import DiffReport
from shadowtap.differ.reports import render_terminal
from shadowtap.differ.reports.terminal import WIDE_DEFAULT, wrap_at_separators
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


def test_fits_its_width_and_has_no_colour_unless_asked() -> None:
    text = render(rich_report(), color=False)
    assert "\x1b" not in text
    # Not a terminal: one wide default, not 80 columns.
    assert 80 < max(len(line.rstrip()) for line in text.splitlines()) <= WIDE_DEFAULT
    out = io.StringIO()
    render_terminal(rich_report(), out, color=False, width=80)
    assert max(len(line.rstrip()) for line in out.getvalue().splitlines()) <= 80


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


def test_long_reports_are_summarised_and_say_how_to_see_everything() -> None:
    report = rich_report()
    many = tuple(dataclasses.replace(report.endpoints[1], endpoint=f"POST /orders/{i}") for i in range(40))
    text = render(dataclasses.replace(report, endpoints=many), color=False)
    see_all = "(--full lists them; --json and --html have all)"
    assert f"+10 more endpoints {see_all}" in text
    assert f"+30 more endpoints with differences {see_all}" in text
    assert "POST /orders/39" not in text
    out = io.StringIO()
    render_terminal(dataclasses.replace(report, endpoints=many), out, color=False, full=True)
    full = out.getvalue()
    assert "more endpoints" not in full and all(f"POST /orders/{i} " in full for i in range(40))
    assert full.count("differ (") == 40  # every endpoint's signature table


def test_hidden_signatures_say_how_to_see_them() -> None:
    report = rich_report()
    endpoint = report.endpoints[0]
    extra = tuple(
        dataclasses.replace(endpoint.signatures[0], id=f"x{i}", path=f"body.extra_{i}", suppressed=False)
        for i in range(8)
    )
    crowded = dataclasses.replace(endpoint, signatures=(*endpoint.signatures, *extra))
    report = dataclasses.replace(report, endpoints=(crowded,))
    text = render(report, color=False)
    assert re.search(r"\+\d+ more signatures \(--full lists them; --json and --html have all\)", text)
    out = io.StringIO()
    render_terminal(report, out, color=False, full=True)
    assert "more signatures" not in out.getvalue()
    assert all(f"body.extra_{i}" in out.getvalue() for i in range(8))


@pytest.mark.parametrize("width", [80, 100, 120, 200])
def test_long_paths_wrap_at_separators_never_mid_name(width: int) -> None:
    report = rich_report()
    endpoint = report.endpoints[0]
    names = [f"segment_{i:02d}_name" for i in range(9)]
    long_path = "body." + ".".join(names) + "[*].total_amount_in_cents"
    long_endpoint = "GET /api/v1/organisations/{id}/projects/{id}/environments/{id}/deployments/{id}"
    sig = dataclasses.replace(endpoint.signatures[0], path=long_path, transition="present->missing")
    wide = dataclasses.replace(endpoint, endpoint=long_endpoint, signatures=(sig,))
    out = io.StringIO()
    render_terminal(dataclasses.replace(report, endpoints=(wide,)), out, color=False, width=width)
    text = out.getvalue()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    # Every name is whole on one line, and the path reads back whole from its column.
    for name in [*names, "total_amount_in_cents", "organisations/", "environments/", "deployments/"]:
        assert name in text, (name, text)
    path_lines = [line for line in text.splitlines() if "segment_" in line or "total_amount" in line]
    assert "".join(re.search(r"(\S*(?:segment_|total_amount)\S*)", line)[1] for line in path_lines) == long_path  # type: ignore[index]


def test_wrap_at_separators_keeps_every_character() -> None:
    text = "body.items[*].price/amount{id} a->b"
    for width in range(1, len(text) + 2):
        lines = wrap_at_separators(text, width)
        assert "".join(lines) == text and all(len(line) <= width for line in lines)
    assert wrap_at_separators("body.items[*].price", 12) == ["body.items", "[*].price"]
    assert wrap_at_separators("", 10) == [""]


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
