"""differ: compares primary vs shadow (or recorded vs replayed) responses and reports what changed.

The engine (``DiffEngine``, ``Comparator``) is pure code over ``recorder.Exchange``; ``DiffSession``
feeds it into a SQLite ``DiffStore``; ``build_report`` turns the store into a ``DiffReport`` that
``shadowtap.differ.reports`` renders. Imports only ``recorder``.
"""

from shadowtap.differ.aggregate import build_report, is_learned_noise
from shadowtap.differ.compare import KINDS, Comparator, Difference
from shadowtap.differ.config import CompareOptions, DifferConfig, IgnoreRule, NoiseThresholds, config_from_mapping
from shadowtap.differ.engine import DiffEngine, PairResult
from shadowtap.differ.pipeline import DiffSession, IngestStats, relearn_endpoints
from shadowtap.differ.signatures import is_structural, severity, signature_id
from shadowtap.differ.store import DiffStore, RunMeta
from shadowtap.differ.templates import EndpointTemplater
from shadowtap.differ.verdict import FailRule, decide, parse_fail_on

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
