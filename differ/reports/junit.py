"""The JUnit XML report: one test case per endpoint, so CI dashboards show which endpoints regressed.

Latency: one case per ``--fail-on`` latency term (``latency latency.p99>+20%``), failing with the
statement of each endpoint where it failed, skipped when no endpoint had pairs enough to judge it;
without latency terms, one passing case per endpoint the test found slower, its statement as output
(so a dashboard shows it without failing the build).

A case fails when the endpoint holds a signature the verdict names in ``failing_signatures`` (the
gate decided; this module never re-decides). The XML's outcome always matches the exit code: an
inconclusive verdict (exit 2) adds one erroring ``(verdict)`` case, so "not enough samples" can never
look green, and a failing verdict whose signatures no endpoint case shows adds one failing case.
It must never emit text XML 1.0 cannot carry: control characters from traffic are replaced,
everything is escaped by ElementTree.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from typing import Final

from shadowtap.differ.report_model import DiffReport, EndpointReport
from shadowtap.differ.reports._common import (
    endpoint_rate,
    fmt_ns,
    fmt_rate,
    printable,
    ranked_endpoints,
    ranked_signatures,
    verdict_word,
)
from shadowtap.differ.reports._files import write_atomically

__all__ = ["JUNIT_CLASSNAME", "render_junit", "write_junit"]

JUNIT_CLASSNAME: Final = "shadowtap.diff"
VERDICT_CASE_NAME: Final = "(verdict)"
#: Signatures listed in a case's output; CI dashboards show it inline, the HTML report has the rest.
SIGNATURES_PER_CASE: Final = 50
# XML 1.0 Char production: everything else (NUL, most C0 controls, lone surrogates, U+FFFE/F) is
# unrepresentable even as a character reference.
_NOT_XML_CHAR: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(value: str) -> str:
    return _NOT_XML_CHAR.sub("\ufffd", value)


def _summary(report: DiffReport) -> str:
    return (
        f"{verdict_word(report.verdict.exit_code)}: {report.verdict.reason}\n"
        f"{report.baseline_name} vs {report.candidate_name}: {report.pairs} pairs, {report.compared} compared, "
        f"{report.equal} equal, {report.differing} differing, {report.noise_suppressed} noise suppressed, "
        f"{report.errors} errors"
    )


def _endpoint_out(endpoint: EndpointReport) -> str:
    lines = [
        f"{endpoint.endpoint}: {endpoint.compared} compared, {endpoint.equal} equal, {endpoint.differing} differing "
        f"({fmt_rate(endpoint_rate(endpoint))}), {endpoint.errors} errors"
    ]
    signatures = ranked_signatures(endpoint)
    for sig in signatures[:SIGNATURES_PER_CASE]:
        state = f" [suppressed: {sig.suppression_reason or 'yes'}]" if sig.suppressed else ""
        lines.append(
            f"  {sig.severity:<8} {sig.kind:<7} {sig.path} {sig.transition} x{sig.count} ({fmt_rate(sig.rate)}){state}"
        )
    if len(signatures) > SIGNATURES_PER_CASE:
        lines.append(f"  +{len(signatures) - SIGNATURES_PER_CASE} more signatures")
    return "\n".join(lines)


def _case(suite: ET.Element, endpoint: EndpointReport, failing: frozenset[str]) -> bool:
    case = ET.SubElement(suite, "testcase", classname=JUNIT_CLASSNAME, name=_xml_text(endpoint.endpoint), time="0")
    failed = [s for s in ranked_signatures(endpoint) if s.id in failing]
    if failed:
        worst = failed[0]
        failure = ET.SubElement(
            case,
            "failure",
            type=worst.severity,
            message=_xml_text(
                f"{len(failed)} failing signature{'s' if len(failed) != 1 else ''}: "
                f"{worst.kind} at {worst.path} ({worst.transition}) x{worst.count}"
            ),
        )
        failure.text = _xml_text(
            "\n".join(f"{s.id}: {s.severity} {s.kind} at {s.path} {s.transition} x{s.count}" for s in failed)
        )
    ET.SubElement(case, "system-out").text = _xml_text(_endpoint_out(endpoint))
    return bool(failed)


def _latency_cases(suite: ET.Element, report: DiffReport) -> tuple[int, int]:
    """The latency cases; (cases, failing cases)."""
    latency = report.latency
    failures = 0
    for term in latency.terms:
        case = ET.SubElement(suite, "testcase", classname=JUNIT_CLASSNAME, name=_xml_text(f"latency {term}"), time="0")
        failed = [f for f in latency.failures if f.term == term]
        undecided = [u for u in latency.undecided if u.term == term]
        judged = len(latency.comparisons) - len(undecided)
        if failed:
            failure = ET.SubElement(
                case,
                "failure",
                type="latency",
                message=_xml_text(printable(f"{term} fails at {len(failed)} endpoint(s), first {failed[0].endpoint}")),
            )
            failure.text = _xml_text("\n".join(printable(f"{f.endpoint}: {f.statement}") for f in failed))
            failures += 1
        elif judged == 0:
            ET.SubElement(case, "skipped", message=f"too few timed pairs to judge {term} at any endpoint")
        lines = [f"judged at {judged} endpoint(s), not judged at {len(undecided)} (too few pairs)"]
        lines += [f"{u.endpoint}: {u.reason}" for u in undecided[:SIGNATURES_PER_CASE]]
        ET.SubElement(case, "system-out").text = _xml_text("\n".join(printable(line) for line in lines))
    slower = [] if latency.terms else [c for c in latency.comparisons if c.verdict == "slower"]
    for c in slower:
        case = ET.SubElement(
            suite, "testcase", classname=JUNIT_CLASSNAME, name=_xml_text(f"latency {c.endpoint}"), time="0"
        )
        ET.SubElement(case, "system-out").text = _xml_text(printable(c.statement))
    return len(latency.terms) + len(slower), failures


def render_junit(report: DiffReport) -> str:
    """The JUnit XML document for ``report`` (with an XML declaration)."""
    failing = frozenset(report.verdict.failing_signatures)
    suites = ET.Element("testsuites", name="shadowtap diff")
    suite = ET.SubElement(suites, "testsuite", name=JUNIT_CLASSNAME)
    endpoints = ranked_endpoints(report)
    failures = sum(_case(suite, endpoint, failing) for endpoint in endpoints)
    latency_cases, latency_failures = _latency_cases(suite, report)
    failures += latency_failures
    errors = 0
    verdict_case: ET.Element | None = None
    if report.verdict.exit_code == 2:
        verdict_case = ET.SubElement(suite, "testcase", classname=JUNIT_CLASSNAME, name=VERDICT_CASE_NAME, time="0")
        ET.SubElement(verdict_case, "error", type="inconclusive", message=_xml_text(report.verdict.reason))
        errors = 1
    elif report.verdict.exit_code != 0 and failures == 0:
        # The gate failed on something no endpoint case shows (a signature id the report does not
        # list): the XML must still fail, as the exit code does.
        verdict_case = ET.SubElement(suite, "testcase", classname=JUNIT_CLASSNAME, name=VERDICT_CASE_NAME, time="0")
        ET.SubElement(verdict_case, "failure", type="regression", message=_xml_text(report.verdict.reason))
        failures = 1
    tests = len(endpoints) + latency_cases + (verdict_case is not None)
    # The JUnit schema's timestamp: ISO 8601 local form without a zone; ours is UTC.
    generated = fmt_ns(report.generated_at_ns)
    if generated.endswith("Z"):
        suite.set("timestamp", generated[:-1].replace(" ", "T"))
    for element in (suites, suite):
        element.set("tests", str(tests))
        element.set("failures", str(failures))
        element.set("errors", str(errors))
        element.set("time", "0")
    ET.SubElement(suite, "system-out").text = _xml_text(_summary(report))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(report: DiffReport, path: str | os.PathLike[str]) -> None:
    """Write the JUnit XML for ``report`` to ``path``."""
    write_atomically(path, render_junit(report))
