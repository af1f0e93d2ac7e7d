"""Reading config files (YAML or TOML) into plain mappings; each package validates its own section.

This module must never interpret settings: it turns a file into a dict or raises ``ConfigError``
naming the file (and line, where the parser knows it). Validation into frozen dataclasses happens
in the owning package (``proxy.config``, ``differ.config`` ...), whose errors name the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from recorder.errors import ConfigError


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
            raise ConfigError(f"invalid TOML: {exc}", path=str(p)) from exc
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"invalid YAML{where}: {problem}", path=str(p)) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file must hold a mapping at the top, not {type(data).__name__}", path=str(p))
    return data
