"""Config files become mappings, or one error naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowtap.config import load_mapping
from shadowtap.recorder.errors import ConfigError


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


def _error(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_mapping(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.yaml", "[" * 10_000 + "]" * 10_000 + "\n"),
        ("deep-map.yaml", "a: {" * 10_000 + "}" * 10_000 + "\n"),
        ("deep.toml", "a = " + "[" * 10_000 + "]" * 10_000 + "\n"),
        ("deep-table.toml", "a = " + "{b = " * 10_000 + "1" + "}" * 10_000 + "\n"),
        ("deep-but-parsable.toml", "a = " + "[" * 200 + "]" * 200 + "\n"),
    ],
)
def test_deep_nesting_is_one_error(tmp_path: Path, name: str, text: str) -> None:
    assert "nested more than" in _error(tmp_path, name, text)


def test_deep_nesting_through_aliases_is_one_error(tmp_path: Path) -> None:
    # Each anchor is shallow, but each alias adds the depth of the one before.
    lines = ["a0: &a0 " + "[" * 30 + "]" * 30]
    lines += [f"a{i}: &a{i} " + "[" * 30 + f"*a{i - 1}" + "]" * 30 for i in range(1, 40)]
    assert "nested more than" in _error(tmp_path, "alias.yaml", "\n".join(lines) + "\n")


def test_nesting_a_config_needs_is_fine(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text("a: " + "{b: " * 20 + "1" + "}" * 20 + "\n")
    (tmp_path / "ok.toml").write_text("a = " + "[" * 20 + "]" * 20 + "\n")
    assert load_mapping(tmp_path / "ok.yaml")["a"]["b"]["b"]
    assert load_mapping(tmp_path / "ok.toml")["a"] == [[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]


def test_duplicate_yaml_keys_name_the_key_and_lines(tmp_path: Path) -> None:
    message = _error(tmp_path, "dup.yaml", "primary: http://a\nrecord:\n  tape: t\n  tape: u\n")
    assert "duplicate key 'tape'" in message and "line 4" in message and "line 3" in message
    message = _error(tmp_path, "dup-top.yaml", "primary: http://a\nadmin: {}\nprimary: http://b\n")
    assert "duplicate key 'primary'" in message and "line 3" in message


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {a: 1, b: 2}\nv2:\n  <<: *base\n  b: 3\n")
    assert load_mapping(path)["v2"] == {"a": 1, "b": 3}


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("control.yaml", 'primary: "http://x\x01"\n', "unacceptable character #x0001"),
        ("flow.yaml", "a: [1, 2\nb: 3\n", "expected ',' or ']'"),
        ("key.yaml", "a: 1\nb\nc: 2\n", "could not find expected ':'"),
        ("tag.yaml", "a: !!python/object:os.system x\n", "could not determine a constructor"),
    ],
)
def test_yaml_errors_are_one_line_with_a_position(tmp_path: Path, name: str, text: str, needle: str) -> None:
    message = _error(tmp_path, name, text)
    assert needle in message and "line " in message
    assert "<unicode string>" not in message


def test_yaml_values_parse_with_the_same_rules() -> None:
    from shadowtap.config import parse_yaml_value

    assert parse_yaml_value("[1, 2]", field="--set a") == [1, 2]
    with pytest.raises(ConfigError) as info:
        parse_yaml_value("[1", field="--set a")
    assert "\n" not in str(info.value) and info.value.field == "--set a"
    with pytest.raises(ConfigError, match="duplicate key 'x'"):
        parse_yaml_value("{x: 1, x: 2}", field="--set a")
