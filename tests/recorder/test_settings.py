"""shadowtap.recorder.settings: the one decoder of setting values, for the proxy and the differ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.settings import reject_unknown, section, settings_from_mapping, typed_value


@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        (True, bool, True),
        (3, int, 3),
        (3, float, 3.0),
        (2.5, float, 2.5),
        ("x", str, "x"),
        (None, int | None, None),
        (4, int | None, 4),
        (["a", "b"], tuple[str, ...], ("a", "b")),
        ("a, b,,", tuple[str, ...], ("a", "b")),
    ],
)
def test_good_values_decode(value: Any, annotation: Any, expected: Any) -> None:
    assert typed_value(value, annotation, "k") == expected
    assert type(typed_value(value, annotation, "k")) is type(expected)


@pytest.mark.parametrize(
    ("value", "annotation", "message"),
    [
        ("yes", bool, "expected true or false, not 'yes'"),
        (1, bool, "expected true or false, not 1"),
        (True, int, "expected an integer, not True"),
        (1.5, int, "expected an integer, not 1.5"),
        (True, float, "expected a number, not True"),
        ("1", float, "expected a number, not '1'"),
        (float("inf"), float, "expected a finite number, not inf"),
        (float("nan"), float, "expected a finite number, not nan"),
        (10**400, float, "expected a finite number"),
        (3, str, "expected a string, not 3"),
        (3, tuple[str, ...], "expected a list, not 3"),
    ],
)
def test_bad_values_name_the_key_and_the_value(value: Any, annotation: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        typed_value(value, annotation, "a.b")
    assert info.value.field == "a.b" and info.value.message.startswith(message)


def test_a_bad_list_item_is_named_by_its_index() -> None:
    with pytest.raises(ConfigError) as info:
        typed_value(["ok", 7], tuple[str, ...], "headers")
    assert info.value.field == "headers[1]"


@dataclass(frozen=True)
class _Limits:
    timeout_s: float = 1.0
    retries: int = 0
    name: str | None = None

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ConfigError("must be > 0", field="timeout_s")


def test_settings_from_mapping_types_every_field_and_names_its_errors() -> None:
    assert settings_from_mapping(_Limits, {"timeout_s": 2, "name": "x"}, "s") == _Limits(2.0, 0, "x")
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(_Limits, {"timeout_s": 0}, "s")
    assert str(info.value) == "field 's.timeout_s': must be > 0 (got 0.0)"
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(_Limits, {"timeout": 1}, "s")
    assert str(info.value) == "field 's.timeout': unknown key (known: name, retries, timeout_s)"
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(_Limits, [1], "s")
    assert info.value.field == "s"


def test_sections_and_unknown_keys() -> None:
    assert section(None, "x") == {} and section({"a": 1}, "x") == {"a": 1}
    with pytest.raises(ConfigError) as info:
        section([1], "diff.noise")
    assert info.value.field == "diff.noise"
    reject_unknown({"a": 1}, ["a", "b"], "p.")
    with pytest.raises(ConfigError) as info:
        reject_unknown({"c": 1}, ["a", "b"], "p.")
    assert str(info.value) == "field 'p.c': unknown key (known: a, b)"
