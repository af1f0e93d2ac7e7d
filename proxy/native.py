"""Compiled data path: loads the mypyc build of the hot modules when it matches these sources.

The data path's modules (``COMPILED_MODULES``) are plain, strictly typed Python. ``scripts/
build_native.py`` compiles them with mypyc into ``proxy/_compiled/`` (C extensions, one shared
library for the group) and writes a manifest there: the interpreter they were built for and a
SHA-256 of each source. ``activate`` runs first in ``proxy/__init__``: when the manifest matches
this interpreter and every source byte for byte, it loads the shared library and puts the compiled
directory first on the package's ``__path__``, so ``import shadowtap.proxy.server`` finds the extension; in
every other case nothing changes and the sources run as they are.

All or nothing: compiled modules call each other directly, so one stale module would run old code
from inside the others. An edited source makes the whole build stale until it is rebuilt
(``make native``), and the reason is in ``STATUS`` (``/stats`` and the benches' header).
``SHADOWTAP_PURE=1`` in the environment runs the sources even when the build matches.

This module must stay importable as plain Python and import nothing of the package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import sysconfig
from collections.abc import MutableSequence
from pathlib import Path
from typing import Any, Final

__all__ = ["COMPILED_DIR", "COMPILED_MODULES", "MANIFEST", "STATUS", "activate", "check", "source_digest"]

#: The modules mypyc compiles: the ones every proxied request runs through. Modules whose
#: dataclasses ``shadowtap.proxy.config`` reads field types from (forward, breaker, rules, sampling) stay
#: interpreted: mypyc keeps no union annotations on the classes it compiles (not even with
#: ``native_class=False``), and the config docs read their field comments from the source.
COMPILED_MODULES: Final = (
    "shadowtap.proxy.http1",
    "shadowtap.proxy.upstream",
    "shadowtap.proxy.server",
    "shadowtap.proxy.stages",
    "shadowtap.proxy.mirror",
    "shadowtap.proxy.record",
    "shadowtap.proxy.metrics",
    "shadowtap.proxy.rewrite",
)
PACKAGE_DIR: Final = Path(os.path.abspath(__file__)).parent
COMPILED_DIR: Final = PACKAGE_DIR / "_compiled"
MANIFEST: Final = "manifest.json"
#: Bumped when the manifest's shape changes; an older build is then stale.
MANIFEST_FORMAT: Final = 1
PURE_ENV: Final = "SHADOWTAP_PURE"

#: How the data path runs in this process: "compiled (...)" or "interpreted: <why>".
STATUS = "interpreted: not activated"


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def interpreter_tag() -> str:
    """What a build must match: the same interpreter version and extension ABI."""
    return f"{sys.implementation.cache_tag} {sys.version.split()[0]} {sysconfig.get_config_var('EXT_SUFFIX')}"


def check(
    compiled_dir: Path, package_dir: Path, expected: tuple[str, ...] = COMPILED_MODULES
) -> tuple[dict[str, Any] | None, str]:
    """The manifest when the build in ``compiled_dir`` holds the ``expected`` modules and matches
    their sources in ``package_dir`` and this interpreter, else None; and a one-line reason."""
    manifest_path = compiled_dir / MANIFEST
    if not manifest_path.exists():
        return None, "no compiled build (make native)"
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != MANIFEST_FORMAT:
            return None, f"{manifest_path}: manifest format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}"
        if manifest["interpreter"] != interpreter_tag():
            return None, f"{manifest_path}: built for {manifest['interpreter']}, running {interpreter_tag()}"
        modules: dict[str, str] = manifest["modules"]
        if sorted(modules) != sorted(expected):
            held = ", ".join(sorted(modules))
            return None, f"stale compiled build: it holds {held}, not the modules this tree compiles (make native)"
        for name, digest in modules.items():
            source = package_dir / f"{name.rpartition('.')[2]}.py"
            if not source.exists() or source_digest(source) != digest:
                return None, f"stale compiled build: {source} changed since it was compiled (make native)"
            if not (compiled_dir / f"{name.rpartition('.')[2]}{sysconfig.get_config_var('EXT_SUFFIX')}").exists():
                return None, f"{compiled_dir}: the extension of {name} is missing"
        if not (compiled_dir / manifest["group_library"]).exists():
            return None, f"{compiled_dir}: {manifest['group_library']} is missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"{manifest_path}: unreadable manifest ({exc})"
    return manifest, f"compiled (mypyc {manifest.get('mypyc', '?')}, {len(modules)} modules)"


def activate(package_path: MutableSequence[str]) -> str:
    """Put the compiled modules first on ``package_path`` (the package's ``__path__``) when they
    match; return and record the status. Never raises: the sources are always there to run."""
    global STATUS
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        STATUS = f"interpreted: {PURE_ENV} is set"
        return STATUS
    manifest, reason = check(COMPILED_DIR, PACKAGE_DIR)
    if manifest is None:
        STATUS = f"interpreted: {reason}"
        return STATUS
    group = manifest["group_module"]
    if group not in sys.modules:
        try:
            spec = importlib.util.spec_from_file_location(group, COMPILED_DIR / manifest["group_library"])
            if spec is None or spec.loader is None:
                raise ImportError(f"no loader for {manifest['group_library']}")
            library = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(library)
        except ImportError as exc:
            STATUS = f"interpreted: cannot load {COMPILED_DIR / manifest['group_library']} ({exc})"
            return STATUS
        sys.modules[group] = library
    package_path.insert(0, str(COMPILED_DIR))
    STATUS = reason
    return STATUS
