"""Path strings that name a place in a response, and the glob syntax that selects them.

A path is ``status``, ``header.<name>``, ``body`` or ``body`` followed by JSON steps: ``.key`` for
identifier-like keys and whole numbers, ``["odd key"]`` otherwise, ``[3]`` for an array index; the folded form writes
every index as ``[*]`` and every key of a map keyed by ids (an ``IdKey``, chosen by the comparator) as
``.{key}``, so ``{"users": {"u123": {...}}}`` counts under ``body.users.{key}.name`` while examples keep
``body.users.u123.name``. This module must never compare values: it only spells and matches paths.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Final

__all__ = ["KEY", "IdKey", "both_paths", "compile_glob", "folded_path", "full_path", "key_step"]

#: What every key of a map keyed by ids reads as in a folded path.
KEY: Final = "{key}"
# Whole numbers too: a protobuf field without a schema is keyed by its number (``body.3[*].2``).
_IDENTIFIER: Final = re.compile(r"(?:[A-Za-z_$@][\w$@-]*|\d+)\Z")


class IdKey(str):
    """An object key that is an id: ``.{key}`` in folded paths, itself in full paths."""

    __slots__ = ()


@functools.lru_cache(maxsize=16_384)  # keys repeat across documents; maps keyed by ids cycle through
def key_step(key: str) -> str:
    """The path step for object key ``key``."""
    return "." + key if _IDENTIFIER.match(key) else "[" + json.dumps(key, ensure_ascii=False) + "]"


def both_paths(root: str, steps: Sequence[str | int]) -> tuple[str, str]:
    """``(folded_path(root, steps), full_path(root, steps))`` in one pass."""
    folded = [root]
    full = [root]
    for s in steps:
        if type(s) is int:
            folded.append("[*]")
            full.append(f"[{s}]")
        else:
            step = key_step(str(s))
            full.append(step)
            folded.append("." + KEY if type(s) is IdKey else step)
    return "".join(folded), "".join(full)


def full_path(root: str, steps: Sequence[str | int]) -> str:
    """``root`` followed by ``steps`` (keys and array indexes), indexes kept."""
    return root + "".join(f"[{s}]" if type(s) is int else key_step(str(s)) for s in steps)


def folded_path(root: str, steps: Sequence[str | int]) -> str:
    """``root`` followed by ``steps`` with every array index folded to ``[*]`` and every ``IdKey`` to
    ``.{key}``."""
    return root + "".join(
        "[*]" if type(s) is int else ("." + KEY if type(s) is IdKey else key_step(str(s))) for s in steps
    )


def compile_glob(glob: str) -> re.Pattern[str]:
    """Compile a path glob: ``*`` is part of one step, ``**`` any depth, ``[*]`` any index.

    A glob selects the paths it spells and everything beneath them (``body.meta`` also selects
    ``body.meta.generated_at``), so a rule on an object silences its fields.
    """
    out: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("[*]", i):
            out.append(r"\[\*\]")
            i += 3
        elif glob.startswith(".**.", i):
            out.append(r"\.(?:.*[.\]])?")
            i += 4
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append(r"[^.\[]*")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"(?:[.\[].*)?\Z")
