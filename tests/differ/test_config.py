"""The differ's config section: defaults, every key, and errors that name the key."""

from __future__ import annotations

from typing import Any

import pytest

from shadowtap.differ import DifferConfig, config_from_mapping
from shadowtap.differ.config import DEFAULT_IGNORED_HEADERS
from shadowtap.recorder.errors import ConfigError


def test_defaults() -> None:
    config = config_from_mapping({})
    assert config == DifferConfig()
    assert config.noise.relative == 0.2 and config.noise.absolute == 0.0003
    assert config.fail_on == "severity>=high" and config.min_samples == 10
    assert config.compare.header_compared("x-version")
    assert not config.compare.header_compared("date")


def test_every_key_is_read_from_the_diff_section() -> None:
    config = config_from_mapping(
        {
            "proxy": {"ignored": "other sections are someone else's"},
            "diff": {
                "headers": {"ignore": ["X-Build"], "compare": ["ETag"]},
                "ignore": ["body.meta", {"endpoint": "GET /users/*", "path": "body.**.seen_at"}],
                "routes": ["GET /users/{id}", "/files/{name}"],
                "unordered_arrays": ["body.tags"],
                "list_keys": {"body.items": "sku"},
                "numeric_tolerance": {"absolute": 0.01, "relative": 1e-6},
                "noise": {"relative": 0.5, "absolute": 0.01},
                "volatile": {"detectors": ["uuid"]},
                "templates": {"max_literal_children": 5},
                "examples_per_signature": 1,
                "fail_on": "critical",
                "min_samples": 0,
            },
        }
    )
    compare = config.compare
    assert compare.header_compared("etag") and not compare.header_compared("x-build")
    assert compare.ignored_headers == (DEFAULT_IGNORED_HEADERS | {"x-build"}) - {"etag"}
    assert compare.unordered_paths == ("body.tags",) and compare.list_keys == (("body.items", "sku"),)
    assert (compare.absolute_tolerance, compare.relative_tolerance) == (0.01, 1e-6)
    assert compare.volatile_detectors == frozenset({"uuid"})
    assert [r.reason for r in config.ignore] == ["rule:body.meta", "rule:GET /users/* body.**.seen_at"]
    assert config.ignore[1].matches("GET /users/{id}", "body.a.b.seen_at")
    assert not config.ignore[1].matches("GET /orders/{id}", "body.seen_at")
    assert config.ignore[0].matches("GET /", "body.meta.generated_at")
    assert config.routes == ("GET /users/{id}", "/files/{name}")
    assert (config.noise.relative, config.noise.absolute) == (0.5, 0.01)
    assert (config.max_literal_children, config.examples_per_signature) == (5, 1)
    assert (config.fail_on, config.min_samples) == ("critical", 0)


def test_whole_file_is_the_section_without_a_diff_key() -> None:
    assert config_from_mapping({"unordered_arrays": True}).compare.unordered_all


def test_detectors_off() -> None:
    assert config_from_mapping({"volatile": {"enabled": False}}).compare.volatile_detectors == frozenset()


def test_header_allowlist() -> None:
    compare = config_from_mapping({"headers": {"only": ["Content-Type"]}}).compare
    assert compare.header_compared("content-type") and not compare.header_compared("x-version")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"nope": 1}, "diff.nope"),
        ({"noise": {"relative": -1}}, "diff.noise.relative"),
        ({"noise": {"absolute": 2}}, "diff.noise.absolute"),
        ({"noise": {"relative": "lots"}}, "diff.noise.relative"),
        ({"noise": {"typo": 1}}, "diff.noise.typo"),
        ({"headers": {"ignore": 3}}, "diff.headers.ignore"),
        ({"headers": {"ignore": ["date", ""]}}, "diff.headers.ignore[1]"),
        ({"ignore": [{"path": "body.a", "where": "x"}]}, "diff.ignore[0].where"),
        ({"ignore": [3]}, "diff.ignore[0]"),
        ({"routes": ["users/{id}"]}, "diff.routes"),
        ({"volatile": {"detectors": ["uuid", "astrology"]}}, "diff.volatile.detectors"),
        ({"volatile": {"enabled": "yes"}}, "diff.volatile.enabled"),
        ({"numeric_tolerance": {"absolute": -0.1}}, "diff.numeric_tolerance.absolute"),
        ({"list_keys": {"body.items": ""}}, "diff.list_keys.body.items"),
        ({"templates": {"max_literal_children": 0}}, "diff.templates.max_literal_children"),
        ({"examples_per_signature": 1000}, "diff.examples_per_signature"),
        ({"min_samples": True}, "diff.min_samples"),
        ({"fail_on": 3}, "diff.fail_on"),
        ({"fail_on": "severity>=apocalyptic"}, "diff.fail_on"),
        ({"diff": [1]}, "diff"),
    ],
)
def test_bad_values_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(raw)
    assert info.value.field == key


def test_values_decode_as_the_proxy_settings_do() -> None:
    # One decoder (shadowtap.recorder.settings) for every part: a list may be one comma-separated
    # string, as in the proxy's config, and the messages are the proxy's.
    spelled = config_from_mapping({"diff": {"headers": {"ignore": "x-trace, x-span"}}})
    listed = config_from_mapping({"diff": {"headers": {"ignore": ["x-trace", "x-span"]}}})
    assert spelled == listed and "x-span" in spelled.compare.ignored_headers
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"diff": {"noise": {"relative": "lots"}}})
    assert str(info.value) == "field 'diff.noise.relative': expected a number, not 'lots'"


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 10**400])
@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("noise", "relative"),
        ("noise", "absolute"),
        ("numeric_tolerance", "absolute"),
        ("numeric_tolerance", "relative"),
    ],
)
def test_numbers_must_be_finite(bad: float, section: str, key: str) -> None:
    with pytest.raises(ConfigError, match="finite") as info:
        config_from_mapping({"diff": {section: {key: bad}}})
    assert info.value.field == f"diff.{section}.{key}"
