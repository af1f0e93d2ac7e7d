"""Builds docs/config.md, the reference of every config-file key, from the code that parses them.

Proxy keys come from the config dataclasses themselves (the proxy accepts exactly their fields), with
each key's type, its default in file form, its flag, and a description taken from the flag's help or
the field's own comment. Differ keys come from ``shadowtap.differ.config.CONFIG_KEYS``, the table its parser
validates against. This module must never carry a key list of its own: what it prints is what the
parsers accept, and tests/shadowtap/test_docgen.py feeds every documented key back to them.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from shadowtap.differ.config import CONFIG_KEYS
from shadowtap.proxy import config as proxy_config
from shadowtap.proxy.forward import ForwardSettings
from shadowtap.proxy.rules import RouteRule
from shadowtap.proxy.sampling import SampleKey
from shadowtap.proxy.trips import TripRule

REQUIRED = "(required)"
#: Keys whose default is computed from another key when the file leaves them out.
DERIVED_DEFAULTS = {"mirror.routes[].name": "(its path)"}


@dataclass(frozen=True, slots=True)
class KeyDoc:
    key: str
    type: str
    default: str
    flag: str
    help: str


def _field_comments(cls: type) -> dict[str, str]:
    """``#`` comment lines directly above each field in ``cls``'s source, joined."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#:").strip())
            continue
        match = re.match(r"    (\w+):", line)
        if match and pending:
            comments[match.group(1)] = " ".join(pending)
        pending = []
    return comments


def _type_name(hint: Any) -> str:
    special = {
        proxy_config.ListenAddress: "HOST:PORT",
        SampleKey: "header:NAME, cookie:NAME or query:NAME",
        TripRule: "trip rule (string)",
    }
    if hint in special:
        return special[hint]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin in (tuple, frozenset, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if _is_pairs(hint):
            return "map of string to string"
        return f"list of {_type_name(args[0])}" if args else "list"
    if hint is type(None):
        return "null"
    return {str: "string", int: "integer", float: "number", bool: "bool"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _is_pairs(hint: Any) -> bool:
    """``tuple[tuple[str, str], ...]``: written as a mapping in the file."""
    args = typing.get_args(hint)
    return typing.get_origin(hint) is tuple and bool(args) and typing.get_origin(args[0]) is tuple


def _default(field: dataclasses.Field[Any], hint: Any) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return REQUIRED
    return json.dumps(dict(value) if _is_pairs(hint) else proxy_config.file_value(value))


def _flags() -> dict[str, tuple[str, str]]:
    from shadowtap.commands import proxy as proxy_command

    flags = {path.replace("shadows.*.", "shadows[]."): (flag, text) for flag, path, _, _, text in proxy_command._FLAGS}
    # Flags that fill several keys at once.
    flags["shadows[].name"] = flags["shadows[].url"] = ("--shadow NAME=URL", "")
    for key in ("name", "path", "methods", "mirror", "mirror_methods", "sample_percent", "shadows", "grpc"):
        flags[f"mirror.routes[].{key}"] = ("--route SPEC", "")
    flags["trips"] = ("--trip RULE", "")
    return flags


def _walk(
    cls: type, prefix: str, skip: frozenset[str] = frozenset()
) -> Iterator[tuple[str, Any, dataclasses.Field[Any], str]]:
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    nested: Mapping[str, tuple[type, str]] = {
        "shadows": (proxy_config.ShadowSettings, "shadows[]."),
        "routes": (RouteRule, "routes[]."),
    }
    for field in dataclasses.fields(cls):
        if not field.init or field.name in skip:
            continue
        hint = hints[field.name]
        if field.name == "forward" and cls is proxy_config.ProxyConfig:
            yield from _walk(ForwardSettings, "forward.", frozenset({"primary"}))
        elif field.name in nested and typing.get_origin(hint) is tuple:
            inner, step = nested[field.name]
            yield from _walk(inner, prefix + step)
        elif (
            isinstance(hint, type)
            and dataclasses.is_dataclass(hint)
            and hint not in (proxy_config.ListenAddress, SampleKey)
        ):
            yield from _walk(hint, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", hint, field, comments.get(field.name, "")


def proxy_keys() -> list[KeyDoc]:
    flags = _flags()
    rows = []
    for key, hint, field, comment in _walk(proxy_config.ProxyConfig, ""):
        flag, flag_help = flags.get(key, ("", ""))
        default = DERIVED_DEFAULTS.get(key) or _default(field, hint)
        rows.append(KeyDoc(key, _type_name(hint), default, flag, comment or flag_help))
    return rows


def differ_keys() -> list[KeyDoc]:
    return [KeyDoc(k.key, k.type, json.dumps(k.default), "", k.help) for k in CONFIG_KEYS]


def _table(rows: list[KeyDoc], with_flags: bool) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    head = ["| key | type | default | flag | description |", "|---|---|---|---|---|"]
    if not with_flags:
        head = ["| key | type | default | description |", "|---|---|---|---|"]
    out = list(head)
    for r in rows:
        default = r.default if r.default.startswith("(") else f"`{r.default}`"
        flag = f"`{r.flag}`" if r.flag else "`--set`"
        cells = [f"`{r.key}`", cell(r.type), cell(default)] + ([flag] if with_flags else []) + [cell(r.help)]
        out.append("| " + " | ".join(cells) + " |")
    return out


def render() -> str:
    lines = [
        "# Config file reference",
        "",
        "Generated from the parsers by `python -m shadowtap.docgen` (`make docs`); a test fails when this",
        "file is out of date, and another feeds every key below back to its parser. Config files are YAML",
        "or TOML (by extension). Unknown keys are errors naming the key.",
        "",
        "## `shadowtap proxy --config FILE`",
        "",
        "Keys at the top level of the file. `shadows[]` is a list of shadows and `mirror.routes[]` a list",
        "of route rules. Every key is also a flag: a named one, or `--set KEY=VALUE` (value in YAML;",
        "`--set shadows.NAME.KEY=VALUE` for one shadow). `shadowtap proxy --check-config FILE` validates a",
        "file and prints the effective config. Details and examples: [proxy.md](proxy.md).",
        "",
        *_table(proxy_keys(), with_flags=True),
        "",
        "## `shadowtap diff --config FILE` / `shadowtap report --config FILE`",
        "",
        "Keys of the file's `diff` section (or of the whole file when it has no `diff` key). Path globs,",
        "the noise rule and `--fail-on` are explained in [differ.md](differ.md).",
        "",
        *_table(differ_keys(), with_flags=False),
        "",
    ]
    return "\n".join(lines)
