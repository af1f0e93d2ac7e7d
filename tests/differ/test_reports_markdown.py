"""The Markdown PR comment: verdict, endpoint table, collapsible details, nothing raw or live."""

from __future__ import annotations

import dataclasses
import re

from shadowtap.differ.reports import render_markdown
from tests.differ.report_fixtures import (
    SCRIPT_PAYLOAD,
    SECRETS,
    inconclusive_report,
    passing_report,
    rich_report,
)


def table_rows(text: str) -> list[list[str]]:
    """The endpoint table's data rows, split on unescaped pipes."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| :"):
            cells = re.split(r"(?<!\\)\|", line)[1:-1]
            rows.append([c.strip() for c in cells])
    return rows


def test_verdict_line_and_overview_come_first() -> None:
    text = render_markdown(rich_report())
    lines = text.splitlines()
    assert lines[0] == "### :x: shadowtap diff: FAIL"
    assert "5 critical/high signatures above the noise rule" in lines[2]
    assert "**1300** pairs, **1280** compared, **1015** equal, **260** differing" in text
    assert render_markdown(passing_report()).startswith("### :white_check_mark: shadowtap diff: PASS")
    assert render_markdown(inconclusive_report()).startswith("### :warning: shadowtap diff: INCONCLUSIVE")


def test_endpoint_table_ranks_with_severity_and_top_change() -> None:
    rows = table_rows(render_markdown(rich_report()))
    assert len(rows) == 7
    assert all(len(row) == 6 for row in rows)  # no stray pipe split a row
    assert rows[0][:4] == [":red_circle: critical", "`GET /users/{id}`", "60 / 500", "12%"]
    assert rows[0][5] == "`status` status `200->500` (12)"
    assert rows[2][1] == "`POST /orders`"
    assert rows[-1][0] == ":white_circle: none" and rows[-1][5] == "-"


def test_details_hold_signatures_and_short_redacted_snippets() -> None:
    text = render_markdown(rich_report())
    assert text.count("<details>") == text.count("</details>") == 7  # 6 endpoints with signatures + noise
    assert "- high removed at `body.email`: `present->missing`, 30 times (6.0%) **fails the gate**" in text
    assert '    - `body.email`: `"ann@example.com"` &rarr; `(absent)`' in text
    assert "    - `body.orders[1].total`: `25` &rarr; `26`" in text
    assert "  - example `ex-removed-1`: `GET /users/8?api_key=[redacted]`" in text
    assert "(43%, noise 45%, suppressed: `learned-noise`)" in text


def test_no_secret_and_no_long_body_leaks_into_the_comment() -> None:
    text = render_markdown(rich_report())
    for secret in SECRETS:
        assert secret not in text
    for line in text.splitlines():
        for span in re.findall(r"`([^`]*)`", line):
            assert len(span) <= 80


def test_untrusted_text_cannot_become_html_or_markdown() -> None:
    text = render_markdown(rich_report())
    # In the table the endpoint sits in a code span (literal); in <summary> it is entity-escaped.
    assert f"`GET /orders/{{id}}/<b>{SCRIPT_PAYLOAD}`" in text
    assert "<summary>GET /orders/{id}/&lt;b&gt;&lt;script&gt;" in text
    outside_code = re.sub(r"`[^`]*`", "", text)
    assert "<script>" not in outside_code and "<b>" not in outside_code


def test_pipes_and_backticks_in_traffic_keep_the_table_intact() -> None:
    report = rich_report()
    odd = dataclasses.replace(report.endpoints[0], endpoint="GET /a|b/`x`")
    rows = table_rows(render_markdown(dataclasses.replace(report, endpoints=(odd, *report.endpoints[1:]))))
    assert all(len(row) == 6 for row in rows)
    assert rows[0][1] == "`` GET /a\\|b/`x` ``"


def test_big_reports_stay_within_a_pr_comment() -> None:
    report = rich_report()
    many = tuple(dataclasses.replace(report.endpoints[0], endpoint=f"GET /e{i}/{{id}}") for i in range(200))
    text = render_markdown(dataclasses.replace(report, endpoints=many))
    assert len(text) < 65_536
    assert "*175 more endpoints*" in text


def test_free_text_cannot_start_markdown_blocks_or_inline_syntax() -> None:
    report = rich_report()
    for reason, expected in (
        ("# not a heading", "\\# not a heading"),
        ("- not a list", "\\- not a list"),
        ("12. not a list", "12\\. not a list"),
        ("> not a quote", "&gt; not a quote"),
        ("see [x](http://evil) *now* a_b", "see \\[x\\](http://evil) \\*now\\* a\\_b"),
        ("2 signature(s) fail 'severity>=high'", "2 signature(s) fail 'severity&gt;=high'"),
    ):
        verdict = dataclasses.replace(report.verdict, reason=reason)
        assert render_markdown(dataclasses.replace(report, verdict=verdict)).split("\n")[2] == expected


def test_pathological_names_are_clipped() -> None:
    report = rich_report()
    long_name = dataclasses.replace(report.endpoints[0], endpoint="GET /" + "a" * 5000)
    text = render_markdown(dataclasses.replace(report, endpoints=(long_name,)))
    assert "a" * 5000 not in text
    assert "`GET /" + "a" * 192 + "...`" in text
