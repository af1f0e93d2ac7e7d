"""The --fail-on SPEC and the exit-code rules."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shadowtap.differ.report_model import SignatureReport
from shadowtap.differ.verdict import decide, parse_fail_on
from shadowtap.recorder.errors import ConfigError

SIG = SignatureReport(
    id="s1",
    endpoint="GET /x",
    path="body.a",
    kind="value",
    transition="int->int",
    severity="medium",
    count=5,
    rate=0.05,
    first_seen_ns=0,
    last_seen_ns=1,
    suppressed=False,
    suppression_reason=None,
    noise_rate=None,
    examples=(),
)


@pytest.mark.parametrize(
    ("spec", "fails"),
    [
        ("high", False),
        ("medium", True),
        ("severity>=medium", True),
        ("severity>medium", False),
        ("severity=medium", True),
        ("severity<high", True),
        ("rate>0.01", True),
        ("rate>0.1", False),
        ("count>=5", True),
        ("count>5", False),
        ("kind=value", True),
        ("kind!=value", False),
        ("high,rate>0.01", True),
        ("medium&rate>0.1", False),
        ("medium & rate>0.01 & kind=value", True),
        ("any", True),
        ("never", False),
    ],
)
def test_spec(spec: str, fails: bool) -> None:
    assert parse_fail_on(spec).fails(SIG) is fails


@pytest.mark.parametrize("spec", ["", "sometimes", "severity>=awful", "rate>lots", "kind>value", "high,,low"])
def test_bad_spec_names_the_flag(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_fail_on(spec)
    assert info.value.field == "--fail-on"


def test_exit_codes() -> None:
    high = replace(SIG, id="h", severity="high")
    rule = parse_fail_on("severity>=high")
    assert decide([SIG], rule=rule, pairs=100, compared=100, errors=0, min_samples=10).exit_code == 0
    failing = decide([SIG, high], rule=rule, pairs=100, compared=100, errors=0, min_samples=10)
    assert (failing.exit_code, failing.failing_signatures) == (1, ("h",))
    suppressed = replace(high, suppressed=True, suppression_reason="learned-noise")
    assert decide([suppressed], rule=rule, pairs=100, compared=100, errors=0, min_samples=10).exit_code == 0
    few = decide([high], rule=rule, pairs=5, compared=5, errors=0, min_samples=10)
    assert few.exit_code == 2 and few.failing_signatures == ("h",)
    broken = decide([], rule=rule, pairs=100, compared=40, errors=60, min_samples=10)
    assert broken.exit_code == 2 and "60 of 100" in broken.reason
