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


def _statuses(transition: str) -> tuple[int, int] | None:
    before, _, after = transition.partition("->")
    if before.isdigit() and after.isdigit():
        return int(before), int(after)
    return None


def is_structural(kind: str, transition: str) -> bool:
    """Whether a difference is structural: never silenced by a detector or an ignore rule, nor by the
    secondary's noise at its field; learned noise only when the secondary shows the same change."""
    if kind in STRUCTURAL_KINDS:
        return True
    if kind == "status":
        statuses = _statuses(transition)
        return statuses is None or statuses[0] // 100 != statuses[1] // 100
    return False


def severity(kind: str, transition: str) -> Severity:
    """How bad one signature is."""
    if kind == "status":
        statuses = _statuses(transition)
        if statuses is None or statuses[0] // 100 != statuses[1] // 100 or statuses[1] >= 500:
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
