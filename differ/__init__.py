"""differ: compares primary vs shadow (or recorded vs replayed) responses and reports what changed.

The engine (``DiffEngine``, ``Comparator``) is pure code over ``recorder.Exchange``; ``DiffSession``
feeds it into a SQLite ``DiffStore``; ``build_report`` turns the store into a ``DiffReport`` that
``shadowtap.differ.reports`` renders. Imports only ``recorder``.

The public names load on first use, so importing one module (``shadowtap.differ.templates``, which
the replayer and the proxy use) does not import the engine, the store and the reports. The
templater runs compiled when a build matching these sources is present (``shadowtap.wire.native``);
activation has to come before any of its modules is imported.
"""

# ruff: noqa: E402  (the compiled modules are chosen before any of them is imported)
from __future__ import annotations

from shadowtap.wire import native

native.activate(__path__, "differ")

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shadowtap.differ.aggregate import build_report, is_learned_noise
    from shadowtap.differ.compare import KINDS, Comparator, Difference
    from shadowtap.differ.config import CompareOptions, DifferConfig, IgnoreRule, NoiseThresholds, config_from_mapping
    from shadowtap.differ.engine import DiffEngine, PairResult
    from shadowtap.differ.pipeline import DiffSession, IngestStats, relearn_endpoints
    from shadowtap.differ.signatures import is_structural, severity, signature_id
    from shadowtap.differ.store import DiffStore, RunMeta
    from shadowtap.differ.templates import EndpointTemplater
    from shadowtap.differ.verdict import FailRule, decide, parse_fail_on

_EXPORTS: dict[str, str] = {
    "Comparator": "shadowtap.differ.compare",
    "CompareOptions": "shadowtap.differ.config",
    "DiffEngine": "shadowtap.differ.engine",
    "DiffSession": "shadowtap.differ.pipeline",
    "DiffStore": "shadowtap.differ.store",
    "DifferConfig": "shadowtap.differ.config",
    "Difference": "shadowtap.differ.compare",
    "EndpointTemplater": "shadowtap.differ.templates",
    "FailRule": "shadowtap.differ.verdict",
    "IgnoreRule": "shadowtap.differ.config",
    "IngestStats": "shadowtap.differ.pipeline",
    "KINDS": "shadowtap.differ.compare",
    "NoiseThresholds": "shadowtap.differ.config",
    "PairResult": "shadowtap.differ.engine",
    "RunMeta": "shadowtap.differ.store",
    "build_report": "shadowtap.differ.aggregate",
    "config_from_mapping": "shadowtap.differ.config",
    "decide": "shadowtap.differ.verdict",
    "is_learned_noise": "shadowtap.differ.aggregate",
    "is_structural": "shadowtap.differ.signatures",
    "parse_fail_on": "shadowtap.differ.verdict",
    "relearn_endpoints": "shadowtap.differ.pipeline",
    "severity": "shadowtap.differ.signatures",
    "signature_id": "shadowtap.differ.signatures",
}

__all__ = [
    "KINDS",
    "Comparator",
    "CompareOptions",
    "DiffEngine",
    "DiffSession",
    "DiffStore",
    "DifferConfig",
    "Difference",
    "EndpointTemplater",
    "FailRule",
    "IgnoreRule",
    "IngestStats",
    "NoiseThresholds",
    "PairResult",
    "RunMeta",
    "build_report",
    "config_from_mapping",
    "decide",
    "is_learned_noise",
    "is_structural",
    "parse_fail_on",
    "relearn_endpoints",
    "severity",
    "signature_id",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shadowtap.differ' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
