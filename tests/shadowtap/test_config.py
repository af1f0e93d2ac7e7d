"""Config files become mappings, or one error naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from recorder.errors import ConfigError
from shadowtap.config import load_mapping


def test_yaml_and_toml(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("mirror:\n  sample_percent: 5\n")
    (tmp_path / "a.toml").write_text("[mirror]\nsample_percent = 5\n")
    assert load_mapping(tmp_path / "a.yaml") == {"mirror": {"sample_percent": 5}}
    assert load_mapping(tmp_path / "a.toml") == {"mirror": {"sample_percent": 5}}
    (tmp_path / "empty.yaml").write_text("")
    assert load_mapping(tmp_path / "empty.yaml") == {}


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.yaml", "a: [1, 2\n", "line"),
        ("bad.toml", "a = \n", "invalid TOML"),
        ("list.yaml", "- 1\n- 2\n", "mapping"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, name: str, text: str, needle: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_mapping(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_mapping(tmp_path / "nope.yaml")
