"""Value classes and volatile detection."""

from __future__ import annotations

import pytest

from shadowtap.differ.config import VOLATILE_DETECTORS
from shadowtap.differ.volatile import base_class, mask_text, string_class, value_class

ALL = frozenset(VOLATILE_DETECTORS)


@pytest.mark.parametrize(
    ("value", "cls"),
    [
        ("123e4567-e89b-12d3-a456-426614174000", "uuid"),
        ("2024-05-01", "iso-date"),
        ("2024-05-01T10:00:00Z", "iso-date"),
        ("2024-05-01 10:00:00.123456+02:00", "iso-date"),
        ("Wed, 01 May 2024 10:00:00 GMT", "http-date"),
        ("1714557600", "epoch-s"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "jwt"),
        ("9f86d081884c7d659a2feaa0c55ad015", "hex-id"),
        ("0x9f86d081884c7d65", "hex-id"),
        ("deadbeefdeadbeef", "str"),  # hex letters only: a word, not an id
        ("hello world", "str"),
        ("2024-13-45T99", "str"),
        ("123", "str"),
    ],
)
def test_string_classes(value: str, cls: str) -> None:
    assert string_class(value, ALL) == cls


@pytest.mark.parametrize(
    ("value", "cls"),
    [
        (1714557600, "epoch-s"),
        (1714557600.5, "epoch-s"),
        (1714557600123, "epoch-ms"),
        (1714557600123456, "epoch-us"),
        (1714557600123456789, "epoch-ns"),
        (42, "int"),
        (3.5, "float"),
        (True, "bool"),
        (None, "null"),
        ({}, "object"),
        ([], "array"),
    ],
)
def test_value_classes(value: object, cls: str) -> None:
    assert value_class(value, ALL) == cls


def test_disabled_detectors_and_base_class() -> None:
    assert string_class("123e4567-e89b-12d3-a456-426614174000", frozenset()) == "str"
    assert value_class(1714557600, frozenset({"uuid"})) == "int"
    assert base_class(1714557600) == "int" and base_class(True) == "bool" and base_class("x") == "str"


def test_mask_text() -> None:
    text = "id 123e4567-e89b-12d3-a456-426614174000 at 2024-05-01T10:00:00Z token eyJa.eyJb.c"
    masked, found = mask_text(text, ALL)
    assert masked == "id <uuid> at <iso-date> token <jwt>"
    assert set(found) == {"uuid", "iso-date", "jwt"}
    assert mask_text(text, frozenset()) == (text, ())
