"""The circuit breaker opens on failure runs or ratios, cools down, then probes."""

from __future__ import annotations

import pytest

from shadowtap.proxy.breaker import BreakerSettings, CircuitBreaker
from shadowtap.recorder.errors import ConfigError


def test_opens_after_consecutive_failures_then_half_open_probe_closes() -> None:
    b = CircuitBreaker(BreakerSettings(consecutive_failures=3, open_s=2.0))
    for _ in range(3):
        assert b.allow(0.0)
        b.record_failure(0.0)
    assert b.state == "open" and b.times_opened == 1
    assert not b.allow(1.9)
    assert b.allow(2.0)  # the one half-open probe
    assert b.state == "half-open"
    assert not b.allow(2.0)
    b.record_success(2.1)
    assert b.state == "closed" and b.allow(2.1)


def test_failed_probe_reopens() -> None:
    b = CircuitBreaker(BreakerSettings(consecutive_failures=1, open_s=1.0))
    b.record_failure(0.0)
    assert b.allow(1.0)
    b.record_failure(1.0)
    assert b.state == "open" and not b.allow(1.5) and b.allow(2.0)


def test_cancelled_probe_frees_its_slot() -> None:
    b = CircuitBreaker(BreakerSettings(consecutive_failures=1, open_s=1.0))
    b.record_failure(0.0)
    assert b.allow(1.0) and not b.allow(1.0)
    b.record_cancelled()  # the probe was dropped (shutdown, kill switch) before it could tell
    assert b.state == "half-open" and b.allow(1.0)
    b.record_success(1.1)
    assert b.state == "closed"
    b.record_cancelled()
    assert b.state == "closed"


def test_failure_ratio_opens_without_a_run() -> None:
    b = CircuitBreaker(BreakerSettings(consecutive_failures=100, failure_ratio=0.5, window=10, min_calls=10))
    for i in range(9):
        (b.record_failure if i % 2 else b.record_success)(0.0)
    assert b.state == "closed"
    b.record_failure(0.0)  # 5 failures in 10
    assert b.state == "open"


def test_successes_keep_it_closed() -> None:
    b = CircuitBreaker(BreakerSettings(consecutive_failures=2, window=4, min_calls=4, failure_ratio=0.75))
    for _ in range(100):
        b.record_failure(0.0)
        b.record_success(0.0)
    assert b.state == "closed"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"consecutive_failures": 0}, "consecutive_failures"),
        ({"failure_ratio": 0}, "failure_ratio"),
        ({"min_calls": 60}, "min_calls"),
        ({"open_s": 0}, "open_s"),
    ],
)
def test_settings_validated(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        BreakerSettings(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_refusing_reports_open_without_taking_a_probe() -> None:
    b = CircuitBreaker(BreakerSettings(consecutive_failures=1, open_s=1.0))
    assert not b.refusing(0.0)
    b.record_failure(0.0)
    assert b.refusing(0.5)
    assert not b.refusing(1.0)  # cooled down: the next allow() may probe
    assert b.state == "open"
    assert b.allow(1.0) and b.state == "half-open"
    assert not b.refusing(1.0)
