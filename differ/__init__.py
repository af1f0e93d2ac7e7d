"""differ: compares primary vs shadow (or recorded vs replayed) responses and reports what changed.

The engine (``DiffEngine``, ``Comparator``) is pure code over ``recorder.Exchange``; ``DiffSession``
feeds it into a SQLite ``DiffStore``; ``build_report`` turns the store into a ``DiffReport`` that
``differ.reports`` renders. Imports only ``recorder``.
"""

from differ.aggregate import build_report, is_learned_noise
from differ.compare import KINDS, Comparator, Difference
from differ.config import CompareOptions, DifferConfig, IgnoreRule, NoiseThresholds, config_from_mapping
from differ.engine import DiffEngine, PairResult
from differ.pipeline import DiffSession, IngestStats, relearn_endpoints
from differ.signatures import is_structural, severity, signature_id
from differ.store import DiffStore, RunMeta
from differ.templates import EndpointTemplater
from differ.verdict import FailRule, decide, parse_fail_on

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
