"""shadowtap.differ.reports: the public API, the shared ranking, and every writer producing its file."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import shadowtap.differ.reports
from shadowtap.differ.report_model import DiffReport
from shadowtap.differ.reports import (
    render_terminal,
    report_to_dict,
    write_html,
    write_json,
    write_junit,
    write_markdown,
)
from shadowtap.differ.reports._common import (
    fmt_ns,
    fmt_rate,
    parse_body_path,
    ranked_endpoints,
    ranked_signatures,
    step_matches,
)
from shadowtap.recorder.errors import ConfigError, ShadowtapError
from tests.differ.report_fixtures import inconclusive_report, passing_report, rich_report


def test_public_api_is_pinned() -> None:
    assert sorted(shadowtap.differ.reports.__all__) == [
        "proto_schema",
        "render_html",
        "render_junit",
        "render_markdown",
        "render_terminal",
        "report_to_dict",
        "write_html",
        "write_json",
        "write_junit",
        "write_markdown",
    ]
    for name in shadowtap.differ.reports.__all__:
        assert callable(getattr(shadowtap.differ.reports, name))


def test_endpoints_rank_by_severity_then_rate() -> None:
    ranked = [e.endpoint for e in ranked_endpoints(rich_report())]
    assert ranked[0] == "GET /users/{id}"  # critical, 12% beats critical at 0%
    assert ranked[1].startswith("GET /orders/{id}/")
    assert ranked[2] == "POST /orders"
    assert ranked[3:5] == ["GET /img/{id}", "GET /search"]  # both medium: 25% before 8.3%
    assert ranked[5:] == ["GET /recommendations", "GET /health"]  # nothing unsuppressed: by rate


def test_signatures_rank_unsuppressed_first_then_severity_then_count() -> None:
    users = rich_report().endpoints[0]
    assert [s.id for s in ranked_signatures(users)] == [
        "sig-status",
        "sig-removed",
        "sig-total",
        "sig-updated",
        "sig-reqid",
    ]


@pytest.mark.parametrize(
    ("rate", "text"),
    [(None, "-"), (0.0, "0%"), (0.00001, "<0.01%"), (0.0003, "0.03%"), (0.083, "8.3%"), (0.125, "12%"), (1.0, "100%")],
)
def test_rates_read_well_at_every_magnitude(rate: float | None, text: str) -> None:
    assert fmt_rate(rate) == text


def test_times_read_as_utc_and_never_overflow() -> None:
    assert fmt_ns(1_763_776_000_000_000_000) == "2025-11-22 01:46:40Z"
    assert fmt_ns(None) == "-"
    assert fmt_ns(2**63 - 1) == "2262-04-11 23:47:16Z"
    assert fmt_ns(10**30) == f"{10**30} ns"


def test_body_paths_parse_dotted_indexed_folded_and_quoted_forms() -> None:
    assert parse_body_path("body") == ()
    assert parse_body_path("body.items[3].id") == ("items", 3, "id")
    assert parse_body_path("body[0]") == (0,)
    assert parse_body_path("body.items[*].price") == ("items", "*", "price")
    assert parse_body_path('body["a.b"].c') == ("a.b", "c")
    assert parse_body_path("status") is None
    assert parse_body_path("header.date") is None
    assert parse_body_path("body.items[") is None
    assert step_matches("*", 4) and step_matches(4, 4) and step_matches("price", "price")
    assert not step_matches("*", "x") and not step_matches(3, 4)


@pytest.mark.parametrize("make", [rich_report, passing_report, inconclusive_report])
def test_every_writer_produces_a_parseable_file(make: object, tmp_path: Path) -> None:
    assert callable(make)
    report: DiffReport = make()
    write_json(report, tmp_path / "r.json")
    write_html(report, tmp_path / "r.html")
    write_markdown(report, tmp_path / "r.md")
    write_junit(report, tmp_path / "r.xml")
    assert json.loads((tmp_path / "r.json").read_text("utf-8")) == report_to_dict(report)
    assert (tmp_path / "r.html").read_text("utf-8").startswith("<!doctype html>")
    assert "shadowtap diff" in (tmp_path / "r.md").read_text("utf-8")
    assert ET.parse(tmp_path / "r.xml").getroot().tag == "testsuites"
    out = io.StringIO()
    render_terminal(report, out)
    assert report.verdict.reason in out.getvalue()
    # Nothing but the four reports: the temporary files are renamed or removed.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json", "r.md", "r.xml"]


def test_an_unwritable_path_is_one_clear_error_naming_it(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "report.html"
    with pytest.raises(ConfigError) as caught:
        write_html(rich_report(), target)
    assert isinstance(caught.value, ShadowtapError)
    assert str(target) in str(caught.value)
    assert "cannot write report" in str(caught.value)


@pytest.mark.parametrize("existing_mode", [None, 0o644])
def test_every_report_file_is_private(tmp_path: Path, existing_mode: int | None) -> None:
    import os
    import stat

    names = {"r.json": write_json, "r.html": write_html, "r.md": write_markdown, "r.xml": write_junit}
    if existing_mode is not None:
        for name in names:
            (tmp_path / name).write_text("old")
            (tmp_path / name).chmod(existing_mode)
    previous = os.umask(0o022)
    try:
        for name, write in names.items():
            write(rich_report(), tmp_path / name)
    finally:
        os.umask(previous)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == dict.fromkeys(names, 0o600)
