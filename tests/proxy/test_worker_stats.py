"""The workers' ``/stats`` merged into one process's shape (``shadowtap.proxy.worker_stats``): on
stats documents written by hand, as two workers and the parent's flags would give them."""

from __future__ import annotations

from typing import Any

from shadowtap.proxy.worker_stats import merge_workers_stats


def _shadow(breaker: str, outcomes: dict[str, int], opened: int = 0) -> dict[str, Any]:
    return {
        "queue_depth": 1,
        "queue_size": 100,
        "in_flight": 2,
        "breaker": breaker,
        "breaker_opened": opened,
        "outcomes": outcomes,
    }


def _flags(tripped: str | None = None) -> dict[str, Any]:
    return {
        "mirroring": True,
        "recording": True,
        "record_sample_percent": 100.0,
        "shadows": {
            "v2": {"mirroring": tripped is None, "sample_percent": 25.0, "recording": True, "tripped": tripped}
        },
    }


def _trip(state: str, trips: int = 0, **seen: Any) -> dict[str, Any]:
    return {"rule": "shadow.errors>20%/1m", "shadow": "v2", "window_s": 60.0, "state": state, "trips": trips, **seen}


WORKER_0: dict[str, Any] = {
    "worker": 0,
    "admin": "http://127.0.0.1:1",
    "stats": {
        "requests_by_status": {"200": 7, "502": 1},
        "mirror": {"v2": _shadow("closed", {"mirrored": 6, "ok": 5, "sampled-out": 2, "timeout": 1})},
        "trips": [_trip("armed", observed=1.0, unit="%")],
    },
}
WORKER_1: dict[str, Any] = {
    "worker": 1,
    "admin": "http://127.0.0.1:2",
    "stats": {
        "requests_by_status": {"200": 3},
        "mirror": {"v2": _shadow("open", {"mirrored": 3, "ok": 1, "breaker-open": 4}, opened=2)},
        "trips": [_trip("tripped", trips=1, observed=40.0, unit="%")],
    },
}


def test_counters_add_up_and_the_breaker_says_open_when_any_worker_has_it_open() -> None:
    merged = merge_workers_stats([WORKER_0, WORKER_1], _flags())
    v2 = merged["mirror"]["v2"]
    assert v2["outcomes"] == {"mirrored": 9, "ok": 6, "sampled-out": 2, "timeout": 1, "breaker-open": 4}
    assert (v2["queue_depth"], v2["queue_size"], v2["in_flight"], v2["breaker_opened"]) == (2, 200, 4, 2)
    assert v2["breaker"] == "open" and v2["breakers"] == {"0": "closed", "1": "open"}
    assert merged["requests_by_status"] == {"200": 10, "502": 1}
    assert merged["flags"]["shadows"]["v2"]["sample_percent"] == 25.0  # sampling: the shared flag
    assert merged["merged"] == {"workers": 2, "answered": [0, 1], "unanswered": []}
    # One process's keys, each of the same type: what reads one process's stats reads these.
    one = WORKER_0["stats"]["mirror"]["v2"]
    assert {k: type(v) for k, v in v2.items() if k in one} == {k: type(v) for k, v in one.items()}


def test_half_open_is_shown_over_closed() -> None:
    half = {**WORKER_1, "stats": {"mirror": {"v2": _shadow("half-open", {})}}}
    assert merge_workers_stats([WORKER_0, half], _flags())["mirror"]["v2"]["breaker"] == "half-open"


def test_a_rule_tripped_in_one_worker_is_tripped_with_that_workers_figures_and_trips_summed() -> None:
    [rule] = merge_workers_stats([WORKER_0, WORKER_1], _flags("shadow.errors>20%/1m"))["trips"]
    assert rule["state"] == "tripped" and rule["tripped_in"] == [1] and rule["trips"] == 1
    assert rule["observed"] == 40.0  # what the tripping worker saw, not the armed one's


def test_the_shared_flag_says_tripped_when_the_tripping_worker_did_not_answer() -> None:
    silent = {"worker": 1, "admin": "http://127.0.0.1:2", "error": "TimeoutError"}
    merged = merge_workers_stats([WORKER_0, silent], _flags("shadow.errors>20%/1m"))
    [rule] = merged["trips"]
    assert rule["state"] == "tripped" and rule["tripped_in"] == []
    assert merged["merged"] == {
        "workers": 2,
        "answered": [0],
        "unanswered": [{"worker": 1, "error": "TimeoutError"}],
    }
    # The silent worker's figures are left out, not guessed.
    assert merged["mirror"]["v2"]["outcomes"] == WORKER_0["stats"]["mirror"]["v2"]["outcomes"]
    assert merged["mirror"]["v2"]["breakers"] == {"0": "closed"}


def test_waiting_beats_armed_and_the_waiting_workers_reason_goes_with_it() -> None:
    waiting = {
        "worker": 1,
        "stats": {"trips": [_trip("waiting for live diff", waiting="no results from the live differ yet")]},
    }
    [rule] = merge_workers_stats([WORKER_0, waiting], _flags())["trips"]
    assert rule["state"] == "waiting for live diff" and rule["waiting"] == "no results from the live differ yet"
    assert "observed" not in rule and rule["tripped_in"] == [] and rule["trips"] == 0


def test_without_shadows_or_trip_rules_there_are_no_such_sections() -> None:
    plain = [{"worker": 0, "stats": {"requests_by_status": {"200": 1}}}]
    merged = merge_workers_stats(plain, {"mirroring": True, "shadows": {}})
    assert "mirror" not in merged and "trips" not in merged
    nobody = merge_workers_stats([{"worker": 0, "error": "ConnectionRefusedError"}], _flags())
    assert nobody["merged"]["answered"] == [] and "mirror" not in nobody and nobody["requests_by_status"] == {}
