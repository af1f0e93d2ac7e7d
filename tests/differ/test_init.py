"""The differ's public API is what __all__ says, and it imports nothing but recorder."""

from __future__ import annotations

from shadowtap import differ


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
