"""The layout DESIGN.md draws: import names under ``shadowtap.*`` only, and imports that flow one way.

Read from the sources (every ``import`` statement, lazy ones inside functions included), so a module
imported only on some path cannot hide a wrong-way import.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("proxy", "recorder", "replayer", "differ", "wire")
#: What each part may import of the others (DESIGN.md, "Layout and dependency direction").
ALLOWED: dict[str, set[str]] = {
    "wire": set(),
    "recorder": {"wire"},
    "differ": {"recorder", "wire"},
    "replayer": {"differ", "recorder", "wire"},
    "proxy": {"differ", "recorder", "wire"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(("shadowtap", *path.relative_to(ROOT).parent.parts))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
            else:
                assert node.module is not None
                found.append((node.lineno, node.module))
    return found


def _sources(part: str) -> list[Path]:
    return sorted(p for p in (ROOT / part).rglob("*.py") if "_compiled" not in p.parts)


@pytest.mark.parametrize("part", PARTS)
def test_imports_flow_one_way(part: str) -> None:
    wrong = []
    for path in _sources(part):
        for line, module in _imports(path):
            names = module.split(".")
            if names[0] in PARTS:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {module}, not shadowtap.{module}")
            elif names[0] == "shadowtap" and len(names) > 1:
                other = names[1]
                if other != part and other not in ALLOWED[part]:
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {part} may not import {module}")
    assert wrong == []


def test_nothing_imports_the_folders_by_their_bare_names() -> None:
    wrong = []
    for folder in ("shadowtap", "tests", "bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if any(part in PARTS for part in path.relative_to(ROOT).parts[1:2]) and folder == "shadowtap":
                continue  # the links to the parts: checked above
            for line, module in _imports(path):
                if module.split(".")[0] in PARTS:
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert wrong == []


def test_a_fresh_interpreter_outside_the_tree_finds_only_shadowtap(tmp_path: Path) -> None:
    code = (
        "import importlib.util, json, shadowtap.proxy, shadowtap.wire\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in "
        f"{list(PARTS)!r}}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == dict.fromkeys(PARTS, False)
