"""Value classes and the built-in volatile detectors (UUIDs, timestamps, epochs, JWTs, hex ids).

``value_class`` names what a JSON value is (``int``, ``str``, ``null`` ... or, for values that look
volatile, ``uuid``, ``iso-date``, ``epoch-ms`` ...); a difference whose two sides share a volatile
class is noise by construction. ``mask_text`` hides the same shapes inside free text. This module must
never decide what to report: it only classifies.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, Final

__all__ = ["VOLATILE_FAMILY", "base_class", "is_schemaless_timestamp", "mask_text", "string_class", "value_class"]

_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_ISO_DATE: Final = re.compile(
    r"\d{4}-[01]\d-[0-3]\d(?:[T ][0-2]\d:[0-5]\d(?::[0-6]\d(?:[.,]\d{1,9})?)?(?:Z|[+-][0-2]\d(?::?[0-5]\d)?)?)?\Z"
)
_HTTP_DATE: Final = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3]\d (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
    r"[0-2]\d:[0-5]\d:[0-6]\d GMT\Z"
)
_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\Z")
_HEX_ID: Final = re.compile(r"(?:0x)?(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{16,}\Z")
_DIGITS: Final = re.compile(r"\d{9,19}(?:\.\d+)?\Z")

# Text masking: the same shapes, unanchored, most specific first.
_TEXT_PATTERNS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("jwt", re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")),
    ("uuid", re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")),
    (
        "iso-date",
        re.compile(r"\b\d{4}-[01]\d-[0-3]\dT[0-2]\d:[0-5]\d(?::[0-6]\d(?:[.,]\d{1,9})?)?(?:Z|[+-][0-2]\d:?[0-5]\d)?"),
    ),
    ("http-date", re.compile(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3]\d \w{3} \d{4} [0-2]\d:[0-5]\d:[0-6]\d GMT")),
    ("hex-id", re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{16,}\b")),
)

#: The detector (and suppression reason suffix) each volatile class belongs to.
VOLATILE_FAMILY: Final[dict[str, str]] = {
    "uuid": "uuid",
    "iso-date": "iso-date",
    "http-date": "http-date",
    "jwt": "jwt",
    "hex-id": "hex-id",
    "epoch-s": "epoch",
    "epoch-ms": "epoch",
    "epoch-us": "epoch",
    "epoch-ns": "epoch",
}

# Plausible epochs: 2000-01-01 to 2100-01-01, in each unit. Outside this a number is just a number.
_EPOCH_S_MIN: Final = 946_684_800
_EPOCH_S_MAX: Final = 4_102_444_800
_EPOCH_UNITS: Final = (("epoch-s", 1), ("epoch-ms", 1_000), ("epoch-us", 1_000_000), ("epoch-ns", 1_000_000_000))


def _epoch_class(number: float, detectors: Collection[str]) -> str | None:
    if "epoch" not in detectors:
        return None
    for name, scale in _EPOCH_UNITS:
        if _EPOCH_S_MIN * scale <= number <= _EPOCH_S_MAX * scale:
            return name
    return None


_NANOS_PER_SECOND: Final = 1_000_000_000


def is_schemaless_timestamp(value: dict[str, Any]) -> bool:
    """Whether a protobuf message read without its schema is a ``google.protobuf.Timestamp``: field 1
    (seconds) a plausible epoch, and at most field 2 (nanos) beside it, below one second. An
    instant's two numbers, compared as one: its nanos alone would be a field of random values."""
    n = len(value)
    if n == 0 or n > 2:
        return False
    seconds = value.get("1")
    if type(seconds) is not int or not _EPOCH_S_MIN <= seconds <= _EPOCH_S_MAX:
        return False
    if n == 1:
        return True
    nanos = value.get("2")
    return type(nanos) is int and 0 <= nanos < _NANOS_PER_SECOND


def string_class(value: str, detectors: Collection[str]) -> str:
    """``str`` or the volatile class of ``value`` among the enabled ``detectors``."""
    n = len(value)
    if n < 9 or n > 4096:
        return "str"
    first = value[0]
    if n == 36 and "uuid" in detectors and _UUID.match(value):
        return "uuid"
    if first.isdigit():
        if "iso-date" in detectors and value[4:5] == "-" and _ISO_DATE.match(value):
            return "iso-date"
        if "epoch" in detectors and _DIGITS.match(value):
            return _epoch_class(float(value), detectors) or "str"
    if first == "e" and "jwt" in detectors and _JWT.match(value):
        return "jwt"
    if n >= 16 and "hex-id" in detectors and _HEX_ID.match(value):
        return "hex-id"
    if n == 29 and "http-date" in detectors and _HTTP_DATE.match(value):
        return "http-date"
    return "str"


def value_class(value: Any, detectors: Collection[str]) -> str:
    """The class of a parsed JSON value: null, bool, int, float, str, object, array, or volatile."""
    kind = type(value)
    if kind is str:
        return string_class(value, detectors)
    if kind is int or kind is float:
        return _epoch_class(value, detectors) or base_class(value)
    return base_class(value)


def base_class(value: Any) -> str:
    """The JSON type of ``value`` without volatile refinement (for type-change detection)."""
    kind = type(value)
    if kind is str:
        return "str"
    if kind is int:
        return "int"
    if kind is float:
        return "float"
    if value is None:
        return "null"
    if kind is bool:
        return "bool"
    if kind is dict:
        return "object"
    if kind is list:
        return "array"
    return kind.__name__


def mask_text(text: str, detectors: Collection[str]) -> tuple[str, tuple[str, ...]]:
    """``text`` with each volatile token replaced by ``<class>``, and the classes that were found."""
    found: list[str] = []
    for name, pattern in _TEXT_PATTERNS:
        if name not in detectors:
            continue
        text, count = pattern.subn(f"<{name}>", text)
        if count:
            found.append(name)
    return text, tuple(found)
