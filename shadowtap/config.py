"""Reading config files (YAML or TOML) into plain mappings; each package validates its own section.

This module must never interpret settings: it turns a file into a dict or raises ``ConfigError``
naming the file (and line, where the parser knows it) in one line. Validation into frozen
dataclasses happens in the owning package (``shadowtap.proxy.config``, ``shadowtap.differ.config`` ...), whose errors
name the key. What it does refuse is what the parsers would let through to become a traceback or a
silent surprise later: documents nested deeper than any config goes, YAML keys given twice (the
last would win unseen), and aliases that contain themselves.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from shadowtap.recorder.errors import ConfigError

__all__ = ["MAX_DEPTH", "load_mapping", "parse_yaml_value"]

#: The deepest nesting a config file may have. shadowtap's own keys go four or five levels down
#: (``shadows[0].breaker.open_s``); the parsers recurse per level and a few hundred would exhaust
#: Python's stack, so a bound far from both keeps every file either loaded or refused in one line.
MAX_DEPTH: Final = 64
_TOO_DEEP: Final = f"nested more than {MAX_DEPTH} levels deep"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, self-containing aliases and deep nesting.

    Depth counts what the document expands to, not only what is written: an alias adds the depth of
    the node it names, so a chain of shallow anchors cannot build a deep value.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        # id(node) -> levels from that node down; a node composed but not finished has none yet.
        self._heights: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
        mark = event.start_mark
        if self.check_event(yaml.AliasEvent):
            anchor = event.anchor
            node = super().compose_node(parent, index)
            height = self._heights.get(id(node))
            if height is None:
                raise ComposerError(None, None, f"alias *{anchor} is inside the node it names", mark)
        else:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, _TOO_DEEP, mark)
            try:
                node = super().compose_node(parent, index)
            finally:
                self._depth -= 1
            height = 1 + max((self._heights[id(child)] for child in _children(node)), default=0)
            self._heights[id(node)] = height
        if self._depth + height > MAX_DEPTH:
            raise ComposerError(None, None, _TOO_DEEP, mark)
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            # PyYAML lets a scalar its resolver matched but cannot build escape raw: `2024-13-45`.
            kind = node.tag.removeprefix("tag:yaml.org,2002:")
            what = repr(node.value) if isinstance(node, ScalarNode) else "this node"
            raise ConstructorError(None, None, f"cannot read {what} as {kind}: {exc}", node.start_mark) from exc

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_marks: dict[Any, Mark] = {}
        for key_node, _value in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<: *base` keys are meant to be overridden
            key = self.construct_object(key_node, deep=deep)
            try:
                first = first_marks.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # unhashable: the base class says so, with its position
            if first is not key_node.start_mark:
                first_at = f"line {first.line + 1}, column {first.column + 1}"
                raise ConstructorError(None, None, f"duplicate key {key!r} (first at {first_at})", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _children(node: Node | None) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[str, str]:
    """Where (`` (line L, column C)`` or ``""``) and what, each on one line, from any PyYAML error."""
    where, problem = "", ""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = exc.problem or exc.context or ""
        if exc.problem and exc.context:
            context_mark = exc.context_mark
            at = "" if context_mark is None else f" from line {context_mark.line + 1}, column {context_mark.column + 1}"
            problem = f"{problem} ({exc.context}{at})"
    elif isinstance(exc, yaml.reader.ReaderError):
        position = exc.position
        line_start = text.rfind("\n", 0, position) + 1
        where = f" (line {text.count(chr(10), 0, position) + 1}, column {position - line_start + 1})"
        character = exc.character
        problem = (
            f"unacceptable character #x{character:04x}: {exc.reason}"
            if isinstance(character, int)
            else f"cannot decode: {exc.reason}"
        )
    return where, " ".join((problem or str(exc)).split())


def _load_yaml(text: str) -> Any:
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_yaml_value(text: str, *, field: str) -> Any:
    """One YAML value (a ``--set KEY=VALUE``'s value), read by the same rules as a config file."""
    try:
        return _load_yaml(text)
    except yaml.YAMLError as exc:
        where, problem = _yaml_problem(exc, text)
        raise ConfigError(f"value is not YAML{where}: {problem}", field=field) from exc


def _depth(data: Any) -> int:
    """How deep ``data`` (a tree of dicts and lists, no cycles) goes, without recursing."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:
            stack.extend((child, level + 1) for child in children)
    return deepest


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Parse ``path`` as TOML (``.toml``) or YAML (anything else) into a dict."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", path=str(p)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("config file is not UTF-8", path=str(p), offset=exc.start) from exc
    data: Any
    if p.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {' '.join(str(exc).split())}", path=str(p)) from exc
        except RecursionError:
            # tomllib recurses per nested array or inline table; the stack ran out first.
            raise ConfigError(f"invalid TOML: {_TOO_DEEP}", path=str(p)) from None
        if _depth(data) > MAX_DEPTH:
            raise ConfigError(f"invalid TOML: {_TOO_DEEP}", path=str(p))
    else:
        try:
            data = _load_yaml(text)
        except yaml.YAMLError as exc:
            where, problem = _yaml_problem(exc, text)
            raise ConfigError(f"invalid YAML{where}: {problem}", path=str(p)) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file must hold a mapping at the top, not {type(data).__name__}", path=str(p))
    return data
