"""Results as data: the JSON document, the summary text and the SLO gates."""

from __future__ import annotations

import json

import pytest

from shadowtap.differ.templates import EndpointTemplater
from shadowtap.recorder import ConfigError
from shadowtap.replayer.report import SloGates, results_document, slo_failures, summary_text
from shadowtap.replayer.result import JobResult
from shadowtap.replayer.stats import ReplayStats

MS = 1_000_000
GATES = ("max_error_rate", "max_p99_ms", "max_start_lag_ms")


def result_with(latencies_ms: list[int], errors: int = 0) -> JobResult:
    stats = ReplayStats()
    for i, ms in enumerate(latencies_ms):
        failed = i < errors
        stats.record_done(
            "GET /users/{id}" if i % 2 else "GET /",
            t0_ns=0,
            due_ns=i * MS,
            released_ns=i * MS,
            sent_ns=i * MS,
            done_ns=(i + ms) * MS,
            status=None if failed else 200,
            error="timeout" if failed else None,
        )
    return JobResult(stats, {"read": len(latencies_ms), "planned": len(latencies_ms)}, planned=len(latencies_ms))


def test_gates_pass_and_fail_with_one_sentence_each() -> None:
    result = result_with([10] * 95 + [500] * 5, errors=2)
    assert slo_failures(result, SloGates()) == []
    assert slo_failures(result, SloGates(max_error_rate=0.05, max_p99_ms=1000, max_start_lag_ms=5)) == []
    failures = slo_failures(result, SloGates(max_error_rate=0.01, max_p99_ms=100))
    assert len(failures) == 2
    assert failures[0].startswith("error rate 2.00% is above 1.00%")
    assert "p99 response time" in failures[1]
    with pytest.raises(ConfigError, match="max-error-rate"):
        SloGates(max_error_rate=5)


def test_document_is_json_with_the_documented_fields() -> None:
    result = result_with([1, 2, 3, 4])
    document = json.loads(
        json.dumps(results_document(result, target="http://t", tapes=("a",), workers=1, gates=SloGates()))
    )
    assert document["schema"] == 1 and document["planned"] == 4
    assert document["summary"]["requests"] == 4 and document["summary"]["error_rate"] == 0.0
    assert set(document["latency_ms"]) == {"service", "corrected", "start_lag"}
    assert set(document["latency_ms"]["corrected"]) == {"p50", "p90", "p99", "p99.9", "p100"}
    assert [e["endpoint"] for e in document["endpoints"]] == ["GET /", "GET /users/{id}"]
    assert document["timeline_interval_s"] == 1
    (second,) = document["timeline"]
    latency = second.pop("latency_ms")
    assert second == {
        "second": 0,
        "planned": 0,
        "sent": 4,
        "ok": 4,
        "errors": 0,
        "statuses": {"2xx": 4},
        "failures": {},
    }
    # Per interval from log buckets: at most 1/16 above the exact figure (1, 2, 3, 4 ms).
    assert set(latency) == {"p50", "p90", "p99"}
    assert 2 <= latency["p50"] <= 2 * 1.0625 and 4 <= latency["p99"] <= 4 * 1.0625
    assert document["slo"] == {"passed": True, "failures": [], "gates": dict.fromkeys(GATES)}
    assert document["error"] is None


def test_summary_text_has_the_three_latency_rows_and_endpoints() -> None:
    text = summary_text(result_with([5] * 10, errors=1))
    assert "service time" in text and "response (from intended)" in text and "start lag" in text
    assert "GET /users/{id}" in text and "timeout 1" in text


def failing_result(requests: int, failed: int) -> JobResult:
    from shadowtap.replayer.stats import ErrorExample

    result = result_with([3] * requests, errors=failed)
    for i in range(min(failed, 2)):
        result.stats.record_example(ErrorExample("timeout", i * MS, f"GET /r/{i}", "timeout: no answer in 30 s"))
    result.plan_stats.update(skipped_unsafe_method=4, skipped_filter=2)
    return result


def test_a_summary_leads_with_the_errors_and_their_first_examples() -> None:
    lines = summary_text(failing_result(10, 3)).splitlines()
    assert lines[0] == "ERRORS   3 of 10 requests failed (30.00%): timeout 3"
    assert lines[1] == "  timeout  GET /r/0  timeout: no answer in 30 s  (at 0.00 s)"
    assert "latency (ms, failures included)" in "\n".join(lines)


def test_when_every_request_failed_no_latency_of_failures_is_shown() -> None:
    text = summary_text(failing_result(8, 8))
    assert text.startswith("ERRORS   8 of 8 requests failed (100.00%): timeout 8")
    assert "latency: not shown, no request succeeded" in text and "p99.9" not in text


def test_the_summary_says_what_the_plan_left_out() -> None:
    text = summary_text(failing_result(5, 0))
    assert not text.startswith("ERRORS")
    assert "skipped  4 with unsafe methods (--allow-writes replays them), 2 by filters" in text


def test_json_leads_with_the_errors_and_names_the_gates() -> None:
    result = failing_result(10, 3)
    document = results_document(result, target="http://t", tapes=("a",), workers=1, gates=SloGates(max_error_rate=0.01))
    assert list(document)[:2] == ["schema", "errors"]
    assert document["errors"] == {
        "requests": 10,
        "failed": 3,
        "rate": 0.3,
        "by_kind": {"timeout": 3},
        "examples": [
            {"kind": "timeout", "at_s": 0.0, "request": "GET /r/0", "detail": "timeout: no answer in 30 s"},
            {"kind": "timeout", "at_s": 0.001, "request": "GET /r/1", "detail": "timeout: no answer in 30 s"},
        ],
    }
    assert document["slo"]["gates"] == {"max_error_rate": 0.01, "max_p99_ms": None, "max_start_lag_ms": None}
    assert document["slo"]["passed"] is False


def test_gates_describe_what_they_check() -> None:
    assert SloGates().describe() == []
    assert SloGates(max_error_rate=1.0).describe() == []  # a rate cannot exceed 1: the gate is off
    assert SloGates(max_error_rate=0.01, max_p99_ms=250).describe() == ["error rate <= 1.00%", "p99 <= 250 ms"]


def test_the_endpoint_list_is_the_busiest_templates_then_how_many_more_and_the_overflow() -> None:
    templater = EndpointTemplater(max_templates=8)
    stats = ReplayStats(templater=templater)
    for i in range(40):
        for _ in range(i % 10 + 1):
            stats.record_done(
                templater.observe_template("GET", f"/r{'abcdefghij'[i % 10]}{'abcdefghij'[i // 10]}"),
                t0_ns=0,
                due_ns=i * MS,
                released_ns=i * MS,
                sent_ns=i * MS,
                done_ns=(i + 1) * MS,
                status=200,
                error=None,
            )
    result = JobResult(stats, {}, planned=stats.overall.requests)
    document = results_document(result, target="http://t", tapes=("a",), workers=1, gates=SloGates(), max_endpoints=3)
    assert [e["endpoint"] for e in document["endpoints"]] == ["GET {overflow}", "GET /rha", "GET /rga"]
    assert document["endpoints_more"] == 6
    assert document["endpoints_overflow"] == {"GET": {"distinct_paths": 32, "exact": True}}
    text = summary_text(result, max_endpoints=3)
    assert "... and 6 more templates" in text
    assert "past the template cap: GET {overflow} holds 32 distinct paths" in text
