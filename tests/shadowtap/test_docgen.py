"""docs/cli.md and docs/config.md are generated, current, and tell the truth about the parsers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shadowtap import configdoc, docgen
from shadowtap.differ.config import CONFIG_KEYS, config_from_mapping
from shadowtap.proxy import ProxyConfig, build_forward_settings

SHADOW = {"name": "v2", "url": "http://127.0.0.1:9001"}
BASE: dict[str, Any] = {"primary": "http://127.0.0.1:9000", "shadows": [SHADOW]}


def test_generated_docs_are_current() -> None:
    for path, text in docgen.generated().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is out of date: run `make docs`"


def test_cli_doc_covers_every_subcommand() -> None:
    from shadowtap.cli import discover_commands

    text = docgen.CLI_DOC.read_text(encoding="utf-8")
    for module in discover_commands():
        assert f"## shadowtap {module.NAME}\n" in text


def with_key(key: str, value: Any) -> dict[str, Any]:
    """A proxy config holding ``key`` (dotted, with ``[]`` for list items) set to ``value``."""
    config = json.loads(json.dumps(BASE))
    parts = key.split(".")
    if parts[0] == "shadows[]":
        target = config["shadows"][0]
        parts = parts[1:]
    elif parts[:2] == ["mirror", "routes[]"]:
        route: dict[str, Any] = {"path": "/x/**"}
        config["mirror"] = {"routes": [route]}
        target, parts = route, parts[2:]
    else:
        target = config
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value
    return config


def without(key: str) -> dict[str, Any]:
    """``with_key`` for a list item's key, then that key left out again."""
    config = with_key(key, None)
    item = config["shadows"][0] if key.startswith("shadows[]") else config["mirror"]["routes"][0]
    item.pop(key.rsplit(".", 1)[1])
    return config


@pytest.mark.parametrize("row", configdoc.proxy_keys(), ids=lambda r: r.key)
def test_every_documented_proxy_key_has_its_real_default(row: configdoc.KeyDoc) -> None:
    assert row.help, f"{row.key} has no description"
    if row.default == configdoc.REQUIRED:
        assert row.key in {"primary", "shadows[].name", "shadows[].url"}
        return
    if row.key in configdoc.DERIVED_DEFAULTS:
        return
    written = ProxyConfig.from_mapping(with_key(row.key, json.loads(row.default)))
    if row.key.startswith("forward."):
        # The forward section is judged by the data path's own settings.
        assert build_forward_settings(written) == build_forward_settings(ProxyConfig.from_mapping(BASE))
    elif row.key.startswith("mirror.routes[]"):
        # A route written with the documented default is the same rule as one that leaves it out.
        assert written == ProxyConfig.from_mapping(without(row.key))
    else:
        assert written == ProxyConfig.from_mapping(BASE)


def test_an_undocumented_proxy_key_is_refused() -> None:
    from shadowtap.recorder.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        ProxyConfig.from_mapping(with_key("record.no_such_key", 1))


@pytest.mark.parametrize("key", CONFIG_KEYS, ids=lambda k: k.key)
def test_every_documented_differ_key_has_its_real_default(key: Any) -> None:
    mapping: dict[str, Any] = {}
    target = mapping
    *sections, last = key.key.split(".")
    for section in sections:
        target = target.setdefault(section, {})
    target[last] = key.default
    assert config_from_mapping({"diff": mapping}) == config_from_mapping({})
    assert key.help and key.type
