"""The JSON report: field names pinned to the model and to docs/report-schema.md, bodies and redaction."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from shadowtap.differ.report_model import (
    DiffReport,
    EndpointReport,
    Example,
    FieldStat,
    SignatureReport,
    Suppression,
    Verdict,
)
from shadowtap.differ.reports import report_to_dict, write_json
from shadowtap.recorder.model import Failure, Request, Response
from tests.differ.report_fixtures import (
    HOSTILE_MARKERS,
    JSON_PASSWORD_SECRET,
    SECRETS,
    inconclusive_report,
    passing_report,
    rich_report,
)

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "docs" / "report-schema.md"
BODY_KEYS = {"kind", "wire_bytes", "sha256", "decoded_from", "omitted", "redacted", "note"}


def documented_fields() -> dict[str, set[str]]:
    """Section heading -> the field names in that section's table."""
    sections: dict[str, set[str]] = {}
    heading = ""
    for line in SCHEMA_DOC.read_text("utf-8").splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        match = re.match(r"\| `(\w+)` \|", line)
        if match:
            sections.setdefault(heading, set()).add(match.group(1))
    return sections


def rendered_objects(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every object in a rendered report, grouped by the schema section that documents it."""
    found: dict[str, list[dict[str, Any]]] = {
        name: []
        for name in (
            "Suppression",
            "Endpoint",
            "FieldStat",
            "Signature",
            "Example",
            "Request",
            "Response outcome",
            "Failure outcome",
            "Body",
        )
    }
    found["Report (the top-level object)"] = [doc]
    found["Verdict"] = [doc["verdict"]]
    found["Suppression"] += doc["suppressions"]
    latency = doc["latency"]
    found["Latency"] = [latency]
    found["LatencyComparison"] = latency["comparisons"]
    found["Quantile"] = [q for c in latency["comparisons"] for q in c["quantiles"]]
    found["LatencyFailure"] = latency["failures"]
    found["LatencyUndecided"] = latency["undecided"]
    for endpoint in doc["endpoints"]:
        found["Endpoint"].append(endpoint)
        found["FieldStat"] += endpoint["fields"]
        for sig in endpoint["signatures"]:
            found["Signature"].append(sig)
            for example in sig["examples"]:
                found["Example"].append(example)
                found["Request"].append(example["request"])
                found["Body"].append(example["request"]["body"])
                for side in (example["baseline"], example["candidate"]):
                    if side is None:
                        continue
                    if side["type"] == "response":
                        found["Response outcome"].append(side)
                        found["Body"].append(side["body"])
                    else:
                        found["Failure outcome"].append(side)
    return found


def test_every_rendered_field_is_documented_and_every_documented_field_rendered() -> None:
    documented = documented_fields()
    for section, objects in rendered_objects(report_to_dict(rich_report())).items():
        assert objects, f"the fixture renders no {section}"
        keys = set().union(*(o.keys() for o in objects))
        assert keys == documented[section], section


def test_field_names_are_the_model_dataclass_field_names() -> None:
    doc = report_to_dict(rich_report())
    objects = rendered_objects(doc)

    def names(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    assert set(doc) == names(DiffReport)
    assert set(doc["verdict"]) == names(Verdict)
    assert {k for o in objects["Suppression"] for k in o} == names(Suppression)
    assert {k for o in objects["Endpoint"] for k in o} == names(EndpointReport)
    assert {k for o in objects["FieldStat"] for k in o} == names(FieldStat)
    assert {k for o in objects["Signature"] for k in o} == names(SignatureReport)
    assert {k for o in objects["Example"] for k in o} == names(Example)
    assert {k for o in objects["Request"] for k in o} == names(Request)
    assert {k for o in objects["Response outcome"] for k in o} == names(Response) | {"type"}
    assert {k for o in objects["Failure outcome"] for k in o} == names(Failure) | {"type"}


def test_top_level_keys_are_in_schema_order() -> None:
    assert list(report_to_dict(passing_report())) == [f.name for f in dataclasses.fields(DiffReport)]


def test_document_is_strict_json_for_every_fixture(tmp_path: Path) -> None:
    for report in (rich_report(), passing_report(), inconclusive_report()):
        doc = report_to_dict(report)
        text = json.dumps(doc, allow_nan=False)
        assert json.loads(text) == doc
        write_json(report, tmp_path / "r.json")
        assert json.loads((tmp_path / "r.json").read_text("utf-8")) == doc


def _examples(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {ex["exchange_id"]: ex for ep in doc["endpoints"] for sig in ep["signatures"] for ex in sig["examples"]}


def test_bodies_are_text_when_utf8_and_base64_when_binary() -> None:
    examples = _examples(report_to_dict(rich_report()))
    binary = examples["ex-bin-1"]["candidate"]["body"]
    assert binary["kind"] == "binary" and "text" not in binary
    assert base64.b64decode(binary["base64"]) == b"\x89PNG\r\n\x1a\n\x00\x02"
    assert binary["wire_bytes"] == 10 and len(binary["sha256"]) == 64
    text = examples["ex-text-1"]["candidate"]["body"]
    assert text["kind"] == "text" and "base64" not in text
    assert text["text"].endswith("\nextra")
    empty = examples["ex-text-1"]["request"]["body"]
    assert empty == {
        "kind": "empty",
        "text": "",
        "wire_bytes": 0,
        "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "decoded_from": None,
        "omitted": 0,
        "redacted": False,
        "note": None,
    }
    for body in (binary, text, empty):
        assert set(body) >= BODY_KEYS


def test_content_encoded_bodies_are_decoded_and_say_so() -> None:
    examples = _examples(report_to_dict(rich_report()))
    gzipped = examples["ex-removed-1"]["candidate"]["body"]
    assert gzipped["decoded_from"] == "gzip"
    assert json.loads(gzipped["text"])["orders"][1]["total"] == 26
    brotlied = examples["ex-type-1"]["candidate"]["body"]
    assert brotlied["decoded_from"] == "br"
    assert json.loads(brotlied["text"]) == {"id": 99, "total": "20.00"}


def test_headers_are_ordered_name_value_pairs_and_outcomes_are_tagged() -> None:
    example = _examples(report_to_dict(rich_report()))["ex-fail-1"]
    assert example["baseline"]["headers"] == [["Content-Type", "application/json"]]
    assert example["candidate"] == {"type": "failure", "kind": "timeout", "message": "no response within 2.0s"}


def test_no_secret_survives_into_the_document() -> None:
    doc = report_to_dict(rich_report())
    text = json.dumps(doc)
    for secret in SECRETS:
        assert secret not in text
    request = _examples(doc)["ex-type-1"]["request"]
    assert json.loads(request["body"]["text"])["password"] == "[redacted]"
    assert request["body"]["redacted"] is True
    assert JSON_PASSWORD_SECRET not in text
    assert ["Authorization", "Basic [redacted]"] in request["headers"]


def test_hostile_text_is_kept_verbatim_as_data() -> None:
    # JSON is data, not markup: escaping is the HTML renderer's job, the JSON must keep the bytes' meaning.
    text = json.dumps(report_to_dict(rich_report()))
    decoded = json.loads(text)
    flat = json.dumps(decoded, ensure_ascii=False)
    for marker in HOSTILE_MARKERS:
        assert marker.replace('"', '\\"') in flat


def documented_types() -> dict[str, dict[str, str]]:
    """Section heading -> field -> the documented type (the table's second column)."""
    sections: dict[str, dict[str, str]] = {}
    heading = ""
    for line in SCHEMA_DOC.read_text("utf-8").splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        match = re.match(r"\| `(\w+)` \| ([^|]+) \|", line)
        if match:
            sections.setdefault(heading, {})[match.group(1)] = match.group(2).strip()
    return sections


OBJECT_TYPES = {
    "Suppression",
    "Endpoint",
    "FieldStat",
    "Signature",
    "Example",
    "Request",
    "Body",
    "Verdict",
    "Outcome",
    "Latency",
    "LatencyComparison",
    "Quantile",
    "LatencyFailure",
    "LatencyUndecided",
    "object",
}


def conforms(value: Any, declared: str) -> bool:
    if declared.endswith(" or null"):
        return value is None or conforms(value, declared.removesuffix(" or null"))
    if declared.startswith("array of "):
        item = declared.removeprefix("array of ")
        return isinstance(value, list) and all(conforms(v, item) for v in value)
    if declared == "[string, string]":
        return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
    if declared == "[float, float]":
        return isinstance(value, list) and len(value) == 2 and all(conforms(v, "float") for v in value)
    if declared == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if declared == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if declared == "boolean":
        return isinstance(value, bool)
    if declared == "string":
        return isinstance(value, str)
    if declared == "severity":
        return value in ("critical", "high", "medium", "low")
    if declared in OBJECT_TYPES:
        return isinstance(value, dict)
    raise AssertionError(f"docs/report-schema.md uses a type this test does not know: {declared!r}")


def test_every_rendered_value_has_its_documented_type() -> None:
    types = documented_types()
    for report in (rich_report(), passing_report(), inconclusive_report()):
        for section, objects in rendered_objects(report_to_dict(report)).items():
            for obj in objects:
                for key, value in obj.items():
                    assert conforms(value, types[section][key]), (section, key, value)
