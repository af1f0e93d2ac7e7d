"""The JUnit XML report: one case per endpoint, failures exactly where the verdict says, always valid XML."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

from shadowtap.differ.report_model import LatencyReport
from shadowtap.differ.reports import render_junit, write_junit
from tests.differ.report_fixtures import (
    LATENCY_TERMS,
    SCRIPT_PAYLOAD,
    SLOWER_ENDPOINT,
    inconclusive_report,
    passing_report,
    rich_report,
)


def cases(xml_text: str) -> dict[str, ET.Element]:
    root = ET.fromstring(xml_text)
    return {case.attrib["name"]: case for case in root.iter("testcase")}


def test_one_case_per_endpoint_failing_where_the_verdict_says(tmp_path: Path) -> None:
    report = rich_report()
    write_junit(report, tmp_path / "junit.xml")
    root = ET.parse(tmp_path / "junit.xml").getroot()
    suite = root.find("testsuite")
    assert suite is not None
    found = {case.attrib["name"]: case for case in suite.iter("testcase")}
    latency_cases = {f"latency {term}" for term in LATENCY_TERMS}
    assert set(found) == {e.endpoint for e in report.endpoints} | latency_cases
    assert {case.attrib["classname"] for case in found.values()} == {"shadowtap.diff"}
    failed = {name for name, case in found.items() if case.find("failure") is not None}
    assert failed == {"GET /users/{id}", "POST /orders", f"GET /orders/{{id}}/<b>{SCRIPT_PAYLOAD}"} | latency_cases
    assert (suite.attrib["tests"], suite.attrib["failures"], suite.attrib["errors"]) == ("9", "5", "0")
    assert root.attrib["failures"] == "5"
    assert suite.attrib["timestamp"] == "2025-11-22T03:46:40"  # generated_at, UTC

    users = found["GET /users/{id}"].find("failure")
    assert users is not None
    assert users.attrib["type"] == "critical"
    assert users.attrib["message"] == "2 failing signatures: status at status (200->500) x12"
    assert users.text is not None and "sig-removed: high removed at body.email present->missing x30" in users.text
    # A suppressed or below-threshold signature never fails a case, but is listed in its output.
    out = found["GET /users/{id}"].find("system-out")
    assert out is not None and out.text is not None
    assert "body.updated_at str->str x480 (96%) [suppressed: volatile:timestamp]" in out.text
    assert found["GET /img/{id}"].find("failure") is None
    summary = suite.find("system-out")
    assert summary is not None and summary.text is not None
    assert summary.text.startswith("FAIL: 5 critical/high signatures above the noise rule")


def test_a_latency_term_is_a_case_failing_with_the_statement_of_each_endpoint_it_failed_at() -> None:
    found = cases(render_junit(rich_report()))
    p50 = found["latency latency.p50>+20%"].find("failure")
    assert p50 is not None and p50.attrib["type"] == "latency"
    assert p50.attrib["message"] == f"latency.p50>+20% fails at 1 endpoint(s), first {SLOWER_ENDPOINT}"
    assert p50.text is not None and p50.text.startswith(f"{SLOWER_ENDPOINT}: p50 ") and "ratio 95% CI" in p50.text
    out = found["latency latency.p99>+20%"].find("system-out")
    assert out is not None and out.text is not None
    assert "GET /orders: too few pairs (500) for a p99 interval" in out.text


def test_without_latency_terms_each_slower_endpoint_is_a_passing_case_with_its_statement() -> None:
    report = rich_report()
    latency = dataclasses.replace(report.latency, terms=(), failures=(), undecided=())
    verdict = dataclasses.replace(report.verdict, failing_latency=())
    found = cases(render_junit(dataclasses.replace(report, latency=latency, verdict=verdict)))
    case = found[f"latency {SLOWER_ENDPOINT}"]
    assert case.find("failure") is None
    out = case.find("system-out")
    assert out is not None and out.text is not None and out.text.startswith("the candidate is slower")
    assert "latency GET /orders" not in found  # no significant difference: no case


def test_a_latency_term_no_endpoint_could_judge_is_skipped() -> None:
    report = dataclasses.replace(
        passing_report(), latency=LatencyReport(pairs=3, min_pairs=50, terms=("latency.p99>+20%",))
    )
    skipped = cases(render_junit(report))["latency latency.p99>+20%"].find("skipped")
    assert skipped is not None and "too few timed pairs" in skipped.attrib["message"]


def test_a_passing_report_has_no_failures() -> None:
    found = cases(render_junit(passing_report()))
    assert set(found) == {"GET /recommendations", "GET /health"}
    assert all(case.find("failure") is None and case.find("error") is None for case in found.values())


def test_an_inconclusive_report_is_an_error_not_a_green_run() -> None:
    text = render_junit(inconclusive_report())
    root = ET.fromstring(text)
    assert root.attrib["errors"] == "1" and root.attrib["tests"] == "1"
    error = cases(text)["(verdict)"].find("error")
    assert error is not None
    assert error.attrib["message"] == "only 0 compared pairs, fewer than --min-samples 100"


def test_characters_xml_cannot_carry_are_replaced_not_fatal() -> None:
    report = rich_report()
    nasty = dataclasses.replace(report.endpoints[0], endpoint="GET /x\x00\x1b\ud800y")
    text = render_junit(dataclasses.replace(report, endpoints=(nasty,)))
    assert text.startswith("<?xml version='1.0' encoding='utf-8'?>")
    assert "GET /x\ufffd\ufffd\ufffdy" in cases(text)
    ET.fromstring(text.encode("utf-8"))  # encodable: no lone surrogate left


def test_a_failing_verdict_always_fails_the_xml() -> None:
    report = rich_report()
    odd = dataclasses.replace(
        report,
        verdict=dataclasses.replace(report.verdict, failing_signatures=("elsewhere",), failing_latency=()),
        latency=LatencyReport(),
    )
    root = ET.fromstring(render_junit(odd))
    assert (root.attrib["tests"], root.attrib["failures"], root.attrib["errors"]) == ("8", "1", "0")
    failure = cases(render_junit(odd))["(verdict)"].find("failure")
    assert failure is not None and failure.attrib["message"] == report.verdict.reason


def test_case_output_lists_a_bounded_number_of_signatures() -> None:
    report = rich_report()
    sig = report.endpoints[0].signatures[0]
    many = tuple(dataclasses.replace(sig, id=f"s{i}", path=f"body.p{i}") for i in range(80))
    endpoint = dataclasses.replace(report.endpoints[0], signatures=many)
    out = cases(render_junit(dataclasses.replace(report, endpoints=(endpoint,))))["GET /users/{id}"].find("system-out")
    assert out is not None and out.text is not None
    assert out.text.count("body.p") == 50
    assert out.text.endswith("+30 more signatures")
