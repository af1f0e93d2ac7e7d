"""The mitmproxy addon's settings without mitmdump: the redaction rules it records with."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowtap.recorder import ConfigError, RedactionRules
from shadowtap.recorder.mitm_addon import RecorderSettings, load_redaction_rules


def test_defaults_without_a_file() -> None:
    assert load_redaction_rules(None) == RedactionRules() == RecorderSettings().rules


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("rules.yaml", "redaction:\n  json_fields: [user.pin]\n  headers: {X-Debug: remove}\n"),
        ("proxy.yaml", "primary: http://127.0.0.1:9000\nrecord:\n  redaction:\n    json_fields: [user.pin]\n"
         "    headers: {X-Debug: remove}\n"),
        ("rules.toml", '[redaction]\njson_fields = ["user.pin"]\nheaders = {X-Debug = "remove"}\n'),
    ],
)  # fmt: skip
def test_rules_from_a_redaction_section_or_a_proxy_config(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    rules = load_redaction_rules(str(path))
    assert ("user.pin", "hash") in rules.json_fields and ("x-debug", "remove") in rules.headers
    assert ("authorization", "hash") in rules.headers  # the defaults stay


@pytest.mark.parametrize(
    ("name", "text", "field", "message"),
    [
        ("none.yaml", None, "shadowtap_redaction_config", "cannot read"),
        ("bad.yaml", "redaction: [", "shadowtap_redaction_config", "not YAML"),
        ("bad.toml", "redaction = [", "shadowtap_redaction_config", "not TOML"),
        ("empty.yaml", "primary: x\n", "shadowtap_redaction_config", "no 'redaction'"),
        ("wrong.yaml", "redaction:\n  json_fields: [a, 'b[1]']\n", "redaction.json_fields[1]", "JSON field path"),
    ],
)
def test_bad_files_name_the_option_or_key(
    tmp_path: Path, name: str, text: str | None, field: str, message: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_redaction_rules(str(path))
    assert info.value.field == field
