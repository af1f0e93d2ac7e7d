"""Severity, structural kinds and stable signature ids."""

from __future__ import annotations

import pytest

from shadowtap.differ.signatures import is_structural, severity, severity_rank, signature_id


@pytest.mark.parametrize(
    ("kind", "transition", "level", "structural"),
    [
        ("status", "200->500", "critical", True),
        ("status", "200->404", "critical", True),
        ("status", "500->503", "critical", False),
        ("status", "200->201", "medium", False),
        ("status", "404->400", "medium", False),
        # gRPC statuses grade as HTTP's do: OK to anything, or a server failure, is critical.
        ("status", "OK->NOT_FOUND", "critical", True),
        ("status", "NOT_FOUND->OK", "critical", True),
        ("status", "NOT_FOUND->INTERNAL", "critical", True),
        ("status", "UNAVAILABLE->INTERNAL", "critical", False),
        ("status", "NOT_FOUND->INVALID_ARGUMENT", "medium", False),
        ("status", "OK->missing", "critical", True),
        ("removed", "str->missing", "high", True),
        ("type", "int->str", "high", True),
        ("value", "int->int", "medium", False),
        ("length", "shorter", "medium", False),
        ("text", "text->text", "medium", False),
        ("binary", "same-size", "medium", False),
        ("error", "200->timeout", "medium", True),
        ("added", "missing->int", "low", True),
        ("header", "changed", "low", False),
    ],
)
def test_severity_and_structure(kind: str, transition: str, level: str, structural: bool) -> None:
    assert severity(kind, transition) == level
    assert is_structural(kind, transition) is structural


def test_ids_are_stable_and_distinct() -> None:
    a = signature_id("GET /u/{id}", "body.a", "value", "int->int")
    assert a == signature_id("GET /u/{id}", "body.a", "value", "int->int")
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != signature_id("GET /u/{id}", "body.a", "value", "int->str")
    assert a != signature_id("GET /u/{id}", "body.b", "value", "int->int")
    # Pinned: the same regression must keep its id across runs and releases.
    assert a == "dd5953c561945bc1"


def test_rank_orders_most_severe_first() -> None:
    assert [severity_rank(s) for s in ("critical", "high", "medium", "low", None)] == [0, 1, 2, 3, 4]
