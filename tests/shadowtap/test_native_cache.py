"""scripts/build_native.py's build cache: a build is reused only for the very tree it was made from."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_build_native_under_test", REPO / "scripts" / "build_native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A package laid out as the checkout's: ``shadowtap/`` with a link to a top-level folder."""
    root = tmp_path / "src"
    (root / "proxy").mkdir(parents=True)
    (root / "proxy" / "server.py").write_text("x = 1\n")
    (root / "proxy" / "config.py").write_text("y: int = 2\n")
    (root / "shadowtap").mkdir()
    (root / "shadowtap" / "__init__.py").write_text("")
    (root / "shadowtap" / "proxy").symlink_to(root / "proxy")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return root / "shadowtap"


def test_the_key_covers_every_source_through_the_links_and_the_toolchain(tree: Path) -> None:
    build_native = _script()
    key = build_native._cache_key(tree, "cp311-x86_64", "2.4.1")
    assert key == build_native._cache_key(tree, "cp311-x86_64", "2.4.1")
    # An interpreted module the compiled ones are typed against changes the build too.
    (tree.parent / "proxy" / "config.py").write_text("y: str = '2'\n")
    changed = build_native._cache_key(tree, "cp311-x86_64", "2.4.1")
    assert changed != key
    assert build_native._cache_key(tree, "cp312-x86_64", "2.4.1") != changed
    assert build_native._cache_key(tree, "cp311-x86_64", "2.5.0") != changed
    (tree.parent / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    assert build_native._cache_key(tree, "cp311-x86_64", "2.4.1") != changed
    # Build output and bytecode are not sources.
    before = build_native._cache_key(tree, "cp311-x86_64", "2.4.1")
    (tree / "proxy" / "_compiled").mkdir()
    (tree / "proxy" / "_compiled" / "stub.py").write_text("")
    (tree / "proxy" / "__pycache__").mkdir()
    (tree / "proxy" / "__pycache__" / "server.py").write_text("")
    assert build_native._cache_key(tree, "cp311-x86_64", "2.4.1") == before


def test_a_kept_build_comes_back_whole_and_only_the_newest_are_kept(tmp_path: Path) -> None:
    build_native = _script()
    group = build_native.native.GROUP_PACKAGE
    manifest = build_native.native.MANIFEST
    cache = tmp_path / "cache"
    for n in range(build_native.CACHE_KEEP + 2):
        staged = tmp_path / f"staged{n}"
        (staged / group).mkdir(parents=True)
        (staged / group / manifest).write_text(f'{{"n": {n}}}')
        (staged / "proxy").mkdir()
        (staged / "proxy" / "server.so").write_bytes(bytes([n]) * 8)
        build_native._to_cache(cache, f"key{n}", staged)
        shutil.rmtree(staged)
    kept = sorted(p.name for p in cache.iterdir())
    assert len(kept) == build_native.CACHE_KEEP
    assert "key0" not in kept and f"key{build_native.CACHE_KEEP + 1}" in kept
    out = tmp_path / "out"
    assert build_native._from_cache(cache / f"key{build_native.CACHE_KEEP + 1}", out)
    assert (out / group / manifest).read_text() == f'{{"n": {build_native.CACHE_KEEP + 1}}}'
    assert (out / "proxy" / "server.so").read_bytes() == bytes([build_native.CACHE_KEEP + 1]) * 8
    # An entry without its manifest (a copy cut short) is no build.
    (cache / "key9" / "proxy").mkdir(parents=True)
    assert not build_native._from_cache(cache / "key9", tmp_path / "out2")
    assert not build_native._from_cache(cache / "missing", tmp_path / "out3")
