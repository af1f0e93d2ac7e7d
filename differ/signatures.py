"""Signatures: what kind of difference, where, and how bad; plus the example sampler.

A signature is (endpoint template, folded path, kind, value-class transition); its id is a stable
hash of those four, so the same regression has the same id in every run and every report. Severity
follows the issue: critical for a status class change or a 5xx, high for a removed field or a type
change, medium for value changes, low for added fields and headers. This module must never count
or store: it only names and ranks.
"""

from __future__ import annotations

import hashlib
from typing import Final

from shadowtap.differ.report_model import SEVERITIES, Severity

__all__ = ["STRUCTURAL_KINDS", "is_structural", "severity", "severity_rank", "signature_id"]

#: Kinds no detector or ignore rule silences: a field that vanished or changed type is a contract
#: change however often the secondary disagrees about its value. Only the secondary showing the same
#: change (same path and transition) at a comparable rate makes one learned noise.
STRUCTURAL_KINDS: Final = frozenset({"removed", "added", "type", "error"})

_HIGH_KINDS: Final = frozenset({"removed", "type"})
_MEDIUM_KINDS: Final = frozenset({"value", "length", "text", "binary", "error"})


#: gRPC statuses that say the server failed, as an HTTP 5xx does (the usual gRPC-to-HTTP mapping);
#: every other status but OK says the call was refused as it was made, as a 4xx does.
_GRPC_SERVER_FAILURES: Final = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "missing"}
)


def _status_class(status: str) -> int | None:
    """An HTTP status's class (2 for 2xx ...); a gRPC status name's the same way (OK 2, refused 4,
    failed 5); None for anything else."""
    if status.isdigit():
        return int(status) // 100
    if status == "OK":
        return 2
    if status in _GRPC_SERVER_FAILURES:
        return 5
    if status.replace("_", "").isalpha() and status.isupper():
        return 4
    return None


def _status_classes(transition: str) -> tuple[int, int] | None:
    before, _, after = transition.partition("->")
    a, b = _status_class(before), _status_class(after)
    return None if a is None or b is None else (a, b)


def is_structural(kind: str, transition: str) -> bool:
    """Whether a difference is structural: never silenced by a detector or an ignore rule, nor by the
    secondary's noise at its field; learned noise only when the secondary shows the same change."""
    if kind in STRUCTURAL_KINDS:
        return True
    if kind == "status":
        classes = _status_classes(transition)
        return classes is None or classes[0] != classes[1]
    return False


def severity(kind: str, transition: str) -> Severity:
    """How bad one signature is. An HTTP status and a gRPC status grade alike: another class of
    answer, or a server failure (5xx, ``INTERNAL``, ``UNAVAILABLE`` ...), is critical; one refusal for
    another (404 -> 400, ``NOT_FOUND`` -> ``INVALID_ARGUMENT``) is medium."""
    if kind == "status":
        classes = _status_classes(transition)
        if classes is None or classes[0] != classes[1] or classes[1] >= 5:
            return "critical"
        return "medium"
    if kind in _HIGH_KINDS:
        return "high"
    if kind in _MEDIUM_KINDS:
        return "medium"
    return "low"


def severity_rank(level: Severity | None) -> int:
    """0 for critical ... 3 for low, 4 for none: sorts most severe first."""
    return len(SEVERITIES) if level is None else SEVERITIES.index(level)


def signature_id(endpoint: str, path: str, kind: str, transition: str) -> str:
    """A stable 16-hex-digit id for one signature."""
    digest = hashlib.sha256("\x00".join((endpoint, path, kind, transition)).encode("utf-8")).hexdigest()
    return digest[:16]
