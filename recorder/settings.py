"""Decoding settings from a parsed config file: the one way every part reads its section.

A config file (YAML or TOML, read by ``shadowtap.config``) or the flags laid over it arrive as plain
mappings. ``typed_value`` is the one decoder of a setting's value against a simple annotation;
``section`` checks a nested mapping, ``reject_unknown`` names an unknown key with the known ones, and
``settings_from_mapping`` validates a flat settings dataclass from its field types. Every error is a
``ConfigError`` whose ``field`` is the dotted key (``diff.noise.relative``, ``shadows[0].url``). The
proxy's and the differ's settings are both decoded here, so a value means the same in either.

It must never read files or the environment: its input is the mapping.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Union, get_args, get_origin

from shadowtap.recorder.errors import ConfigError

__all__ = ["construct", "field_type", "reject_unknown", "section", "settings_from_mapping", "typed_value"]

_T = typing.TypeVar("_T")


def typed_value(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a simple annotation (str/int/float/bool, optional, tuple[str, ...]).

    A list may also be given as one comma-separated string (``"a, b"``), as flags and environment
    variables spell it. Numbers must be finite: every number setting is a timeout, rate, size,
    percent, tolerance or threshold, and infinity or NaN slips past range checks (NaN compares false
    both ways), then stalls the data path or silences every difference.
    """
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        (inner,) = [a for a in options if a is not type(None)]
        return typed_value(value, inner, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, not {value!r}", field=where)
        return tuple(typed_value(v, get_args(annotation)[0], f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, not {value!r}", field=where)
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, not {value!r}", field=where)
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"expected a number, not {value!r}", field=where)
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any double
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"expected a finite number, not {value!r}", field=where)
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, not {value!r}", field=where)
        return value
    raise ConfigError(f"unsupported value {value!r}", field=where)


def section(value: Any, where: str) -> Mapping[str, Any]:
    """A nested section: a mapping, or nothing (``None``: every key at its default)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a mapping, not {value!r}", field=where)
    return value


def reject_unknown(data: Mapping[str, Any], known: Iterable[str], prefix: str) -> None:
    """Refuse a key not in ``known``, naming it (``prefix`` + key) and the known ones."""
    names = set(known)
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown key (known: {', '.join(sorted(names))})", field=f"{prefix}{key}")


def field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def construct(cls: type[_T], values: dict[str, Any], prefix: str) -> _T:
    """``cls(**values)``, its own ``ConfigError`` named ``prefix`` + key, with the value shown."""
    try:
        return cls(**values)
    except ConfigError as exc:
        key = exc.field or ""
        value = values.get(key)
        # Name the value when the message does not already (nested sections name their own).
        shown = ""
        if isinstance(value, str | int | float) and repr(value) not in exc.message and str(value) not in exc.message:
            shown = f" (got {value!r})"
        raise ConfigError(f"{exc.message}{shown}", field=f"{prefix}{key}") from exc


def settings_from_mapping(cls: type[_T], data: Any, where: str) -> _T:
    """Validate ``data`` into the flat settings dataclass ``cls``; errors are named ``where.key``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, not {data!r}", field=where)
    assert dataclasses.is_dataclass(cls)
    reject_unknown(data, (f.name for f in dataclasses.fields(cls)), f"{where}.")
    values = {key: typed_value(value, field_type(cls, key), f"{where}.{key}") for key, value in data.items()}
    return construct(cls, values, f"{where}.")
