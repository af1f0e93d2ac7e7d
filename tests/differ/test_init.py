"""The differ's public API is what __all__ says, and it imports nothing but recorder."""

from __future__ import annotations

import subprocess
import sys

import differ


def test_public_api_is_pinned() -> None:
    assert sorted(differ.__all__) == sorted(
        [
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
    )
    for name in differ.__all__:
        assert getattr(differ, name) is not None


def test_imports_flow_one_way() -> None:
    others = "{'proxy', 'replayer', 'shadowtap'}"
    code = f"import sys, differ; print(sorted(m for m in sys.modules if m.split('.')[0] in {others}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
