"""The engine over whole exchanges: which pairs exist, errors, and the secondary's noise."""

from __future__ import annotations

from shadowtap.differ import CompareOptions, DiffEngine
from shadowtap.recorder import Exchange, Failure, FailureKind, Request, Response

OK = Response(200, "OK", ((b"Content-Type", b"application/json"),), b'{"a": 1}')
CHANGED = Response(200, "OK", ((b"Content-Type", b"application/json"),), b'{"a": 2}')


def exchange(primary: Response | Failure | None, **shadows: Response | Failure) -> Exchange:
    return Exchange(id="e", started_at_ns=1, request=Request("GET", "/a"), primary=primary, shadows=shadows)


ENGINE = DiffEngine(CompareOptions(), candidate="v2", secondary="secondary")


def test_equal_pair_without_secondary_answer() -> None:
    result = ENGINE.compare_exchange(exchange(OK, v2=OK))
    assert (result.status, result.differences, result.noise) == ("compared", (), None)


def test_differences_and_noise() -> None:
    result = ENGINE.compare_exchange(exchange(OK, v2=CHANGED, secondary=CHANGED))
    assert result.status == "compared"
    assert [d.path for d in result.differences] == ["body.a"]
    assert result.noise is not None and [d.path for d in result.noise] == ["body.a"]
    assert ENGINE.compare_exchange(exchange(OK, v2=OK, secondary=OK)).noise == ()
    assert ENGINE.compare_exchange(exchange(OK, v2=OK, secondary=Failure(FailureKind.TIMEOUT))).noise is None


def test_not_sent_is_skipped_not_failed() -> None:
    for reason in (FailureKind.SAMPLED_OUT, FailureKind.QUEUE_FULL, FailureKind.BREAKER_OPEN, FailureKind.DISABLED):
        assert ENGINE.compare_exchange(exchange(OK, v2=Failure(reason))).status == "skipped"
    assert ENGINE.compare_exchange(exchange(OK)).status == "skipped"
    assert ENGINE.compare_exchange(exchange(None, v2=OK)).status == "skipped"


def test_failures_are_errors() -> None:
    result = ENGINE.compare_exchange(exchange(OK, v2=Failure(FailureKind.RESET, "peer reset")))
    assert result.status == "error"
    assert [(d.kind, d.transition) for d in result.differences] == [("error", "200->reset")]
    assert ENGINE.compare_exchange(exchange(Failure(FailureKind.TIMEOUT), v2=OK)).status == "error"


def test_any_baseline_name() -> None:
    engine = DiffEngine(CompareOptions(), baseline="recorded", candidate="primary")
    result = engine.compare_exchange(exchange(CHANGED, recorded=OK))
    assert [d.transition for d in result.differences] == ["int->int"]
