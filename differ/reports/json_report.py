"""The JSON report: the ``DiffReport`` as a stable JSON document (schema: docs/report-schema.md).

Field names are the dataclass field names of ``shadowtap.differ.report_model``; only bytes-bearing values get
a representation of their own (headers as ``[[name, value], ...]``, bodies as body objects). Secrets
are redacted here as in every report. It must never compute or reorder results: the document is the
report, field for field.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from shadowtap.differ.report_model import (
    DiffReport,
    EndpointReport,
    Example,
    FieldStat,
    LatencyReport,
    SignatureReport,
    Suppression,
    Verdict,
)
from shadowtap.differ.reports._bodies import display_body
from shadowtap.differ.reports._files import write_atomically
from shadowtap.differ.reports.redact import redact_headers, redact_target
from shadowtap.recorder.model import Failure, Headers, Outcome, Request, StreamMessage

__all__ = ["report_to_dict", "write_json"]


def _headers(headers: Headers) -> list[list[str]]:
    # Header bytes are latin-1 on the wire (RFC 9110 obs-text); latin-1 maps every byte losslessly.
    return [[name.decode("latin-1"), value.decode("latin-1")] for name, value in redact_headers(headers)]


def _body(
    headers: Headers, body: bytes, truncated_from: int | None, method: str, request: bool = False
) -> dict[str, Any]:
    shown = display_body(headers, body, truncated_from, method, request)
    doc: dict[str, Any] = {"kind": shown.kind}
    if shown.kind == "binary":
        doc["base64"] = base64.b64encode(shown.binary).decode("ascii")
    else:
        doc["text"] = shown.text
    doc.update(
        wire_bytes=shown.wire_bytes,
        sha256=shown.sha256,
        decoded_from=shown.decoded_from,
        omitted=shown.omitted_chars,
        redacted=shown.redacted,
        note=shown.note,
    )
    return doc


def _messages(messages: tuple[StreamMessage, ...]) -> list[dict[str, Any]]:
    return [{"flags": m.flags, "length": m.length, "at_ns": m.at_ns} for m in messages]


def _request(request: Request) -> dict[str, Any]:
    return {
        "method": request.method,
        "target": redact_target(request.target),
        "headers": _headers(request.headers),
        "body": _body(request.headers, request.body, request.truncated_from, request.path, True),
        "scheme": request.scheme,
        "authority": request.authority,
        "http_version": request.http_version,
        "truncated_from": request.truncated_from,
        "trailers": _headers(request.trailers),
        "messages": _messages(request.messages),
    }


def _outcome(outcome: Outcome | None, method: str) -> dict[str, Any] | None:
    if outcome is None:
        return None
    if isinstance(outcome, Failure):
        return {"type": "failure", "kind": outcome.kind, "message": outcome.message}
    return {
        "type": "response",
        "status": outcome.status,
        "reason": outcome.reason,
        "headers": _headers(outcome.headers),
        "body": _body(outcome.headers, outcome.body, outcome.truncated_from, method),
        "http_version": outcome.http_version,
        "truncated_from": outcome.truncated_from,
        "trailers": _headers(outcome.trailers),
        "messages": _messages(outcome.messages),
    }


def _example(example: Example) -> dict[str, Any]:
    return {
        "exchange_id": example.exchange_id,
        "started_at_ns": example.started_at_ns,
        "request": _request(example.request),
        "baseline": _outcome(example.baseline, example.request.path),
        "candidate": _outcome(example.candidate, example.request.path),
        "paths": list(example.paths),
    }


def _signature(sig: SignatureReport) -> dict[str, Any]:
    return {
        "id": sig.id,
        "endpoint": sig.endpoint,
        "path": sig.path,
        "kind": sig.kind,
        "transition": sig.transition,
        "severity": sig.severity,
        "count": sig.count,
        "rate": sig.rate,
        "first_seen_ns": sig.first_seen_ns,
        "last_seen_ns": sig.last_seen_ns,
        "suppressed": sig.suppressed,
        "suppression_reason": sig.suppression_reason,
        "noise_rate": sig.noise_rate,
        "examples": [_example(e) for e in sig.examples],
    }


def _field(stat: FieldStat) -> dict[str, Any]:
    return {
        "path": stat.path,
        "differing": stat.differing,
        "compared": stat.compared,
        "suppressed": stat.suppressed,
        "noise_rate": stat.noise_rate,
    }


def _endpoint(endpoint: EndpointReport) -> dict[str, Any]:
    return {
        "endpoint": endpoint.endpoint,
        "compared": endpoint.compared,
        "equal": endpoint.equal,
        "differing": endpoint.differing,
        "errors": endpoint.errors,
        "severity": endpoint.severity,
        "fields": [_field(f) for f in endpoint.fields],
        "signatures": [_signature(s) for s in endpoint.signatures],
    }


def _suppression(suppression: Suppression) -> dict[str, Any]:
    return {"reason": suppression.reason, "count": suppression.count}


def _verdict(verdict: Verdict) -> dict[str, Any]:
    return {
        "exit_code": verdict.exit_code,
        "reason": verdict.reason,
        "failing_signatures": list(verdict.failing_signatures),
        "failing_latency": list(verdict.failing_latency),
    }


def _latency(latency: LatencyReport) -> dict[str, Any]:
    return {
        "pairs": latency.pairs,
        "untimed": latency.untimed,
        "min_pairs": latency.min_pairs,
        "comparisons": [c.to_dict() for c in latency.comparisons],
        "terms": list(latency.terms),
        "failures": [
            {
                "term": f.term,
                "endpoint": f.endpoint,
                "shadow": f.shadow,
                "observed": f.observed,
                "statement": f.statement,
            }
            for f in latency.failures
        ],
        "undecided": [
            {"term": u.term, "endpoint": u.endpoint, "shadow": u.shadow, "reason": u.reason} for u in latency.undecided
        ],
    }


def report_to_dict(report: DiffReport) -> dict[str, Any]:
    """The JSON document for ``report``: plain dicts, lists, strings and numbers only."""
    return {
        "schema_version": report.schema_version,
        "generated_at_ns": report.generated_at_ns,
        "sources": list(report.sources),
        "baseline_name": report.baseline_name,
        "candidate_name": report.candidate_name,
        "secondary_name": report.secondary_name,
        "window_start_ns": report.window_start_ns,
        "window_end_ns": report.window_end_ns,
        "pairs": report.pairs,
        "compared": report.compared,
        "equal": report.equal,
        "differing": report.differing,
        "errors": report.errors,
        "noise_suppressed": report.noise_suppressed,
        "suppressions": [_suppression(s) for s in report.suppressions],
        "endpoints": [_endpoint(e) for e in report.endpoints],
        "verdict": _verdict(report.verdict),
        "latency": _latency(report.latency),
    }


def write_json(report: DiffReport, path: str | os.PathLike[str]) -> None:
    """Write the JSON report to ``path`` (UTF-8, indented, keys in schema order)."""
    write_atomically(path, json.dumps(report_to_dict(report), indent=2, ensure_ascii=False) + "\n")
