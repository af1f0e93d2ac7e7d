"""Compiled data path: loads the mypyc build of the hot modules when it matches these sources.

The data path's modules (``COMPILED_MODULES``: the wire layer's framing and client, the proxy's
hot modules, the replayer's request path and the tape's decode path) are plain, strictly typed
Python. ``scripts/build_native.py`` compiles them with mypyc as one group (one shared library, so
they call each other directly) and puts each package's extensions in its own ``_compiled/``
directory (``wire/_compiled/``, ``proxy/_compiled/``, ``recorder/_compiled/``,
``replayer/_compiled/``); the group library and a manifest (the interpreter it was built for and a
SHA-256 of each source) sit in ``wire/_compiled/``.
Each package's ``__init__`` calls ``activate`` first: when the manifest matches this interpreter and
every source byte for byte, the group library is loaded (once) and the package's compiled directory
goes first on its ``__path__``, so ``import shadowtap.proxy.server`` finds the extension; in every
other case nothing changes and the sources run as they are.

All or nothing, across packages: compiled modules call each other directly, so one stale module
would run old code from inside the others. An edited source makes the whole build stale until it is
rebuilt (``make native``), and the reason is in ``STATUS`` (``/stats`` and the benches' header).
``SHADOWTAP_PURE=1`` in the environment runs the sources even when the build matches.

This module must stay importable as plain Python and import nothing of the project.
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

__all__ = [
    "COMPILED_MODULES",
    "GROUP_PACKAGE",
    "MANIFEST",
    "ROOT_DIR",
    "STATUS",
    "activate",
    "check",
    "compiled_dir",
    "source_digest",
    "source_path",
]

#: The modules mypyc compiles: the ones every proxied request runs through, and the wire layer
#: under them (which the replayer runs compiled too). Modules whose dataclasses
#: ``shadowtap.proxy.config`` reads field types from (forward, breaker, rules, sampling) stay
#: interpreted: mypyc keeps no union annotations on the classes it compiles (not even with
#: ``native_class=False``), and the config docs read their field comments from the source.
COMPILED_MODULES: Final = (
    "shadowtap.wire.http1",
    "shadowtap.wire.client",
    "shadowtap.wire.hpack",
    "shadowtap.wire.h2fields",
    "shadowtap.wire.h2conn",
    "shadowtap.wire.h2",
    "shadowtap.proxy.context",
    "shadowtap.proxy.server",
    "shadowtap.proxy.h2server",
    "shadowtap.proxy.stages",
    "shadowtap.proxy.mirror",
    "shadowtap.proxy.record",
    "shadowtap.proxy.metrics",
    "shadowtap.proxy.rewrite",
    "shadowtap.proxy.join",
    # The replayer's request path: scheduling, sending, recording (the Locust edge stays out: gevent).
    "shadowtap.replayer.runner",
    "shadowtap.replayer.pacer",
    "shadowtap.replayer.transport",
    "shadowtap.replayer.h2transport",
    "shadowtap.replayer.sending",
    "shadowtap.replayer.stats",
    "shadowtap.replayer.plan",
    "shadowtap.replayer.result",
    # The tape's decode path: every exchange a replay, a diff or tape cat reads is decoded here.
    "shadowtap.recorder._decode",
    "shadowtap.recorder._segment",
    # The endpoint templater: every replayed request, every diffed pair and the proxy's metrics
    # template their path here.
    "shadowtap.differ.templates",
)
#: The ``shadowtap`` package directory (as imported: links are not resolved, so paths in messages
#: are the ones a user sees).
ROOT_DIR: Final = Path(os.path.abspath(__file__)).parent.parent
#: The package whose ``_compiled/`` holds the group library and the manifest: the ground level,
#: imported before any other part.
GROUP_PACKAGE: Final = "wire"
MANIFEST: Final = "manifest.json"
#: Bumped when the manifest's shape changes; an older build is then stale.
MANIFEST_FORMAT: Final = 2
PURE_ENV: Final = "SHADOWTAP_PURE"

#: How the data path runs in this process: "compiled (...)" or "interpreted: <why>".
STATUS = "interpreted: not activated"
#: The outcome of the one check and load per process: the manifest (None: interpreted) and why.
_decided: tuple[dict[str, Any] | None, str] | None = None


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def interpreter_tag() -> str:
    """What a build must match: the same interpreter (implementation and minor version) and
    extension ABI, as a wheel's ``cp311`` tag says; any 3.11.x runs a 3.11 build."""
    return f"{sys.implementation.cache_tag} {sysconfig.get_config_var('EXT_SUFFIX')}"


def _part_and_short(module: str) -> tuple[str, str]:
    """``shadowtap.proxy.server`` -> (``proxy``, ``server``)."""
    _, part, short = module.split(".")
    return part, short


def source_path(root: Path, module: str) -> Path:
    part, short = _part_and_short(module)
    return root / part / f"{short}.py"


def compiled_dir(root: Path, part: str) -> Path:
    return root / part / "_compiled"


def check(root: Path, expected: tuple[str, ...] = COMPILED_MODULES) -> tuple[dict[str, Any] | None, str]:
    """The manifest when the build under ``root`` (the ``shadowtap`` directory) holds the ``expected``
    modules and matches their sources and this interpreter, else None; and a one-line reason."""
    group_dir = compiled_dir(root, GROUP_PACKAGE)
    manifest_path = group_dir / MANIFEST
    if not manifest_path.exists():
        return None, "no compiled build (make native in a checkout; a pure wheel has none)"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
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
            source = source_path(root, name)
            if not source.exists() or source_digest(source) != digest:
                return None, f"stale compiled build: {source} changed since it was compiled (make native)"
            part, short = _part_and_short(name)
            where = compiled_dir(root, part)
            if not (where / f"{short}{suffix}").exists():
                return None, f"{where}: the extension of {name} is missing"
        if not (group_dir / manifest["group_library"]).exists():
            return None, f"{group_dir}: {manifest['group_library']} is missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"{manifest_path}: unreadable manifest ({exc})"
    return manifest, f"compiled (mypyc {manifest.get('mypyc', '?')}, {len(modules)} modules)"


def _decide() -> tuple[dict[str, Any] | None, str]:
    """Check the build and load its group library, once per process."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None, f"interpreted: {PURE_ENV} is set"
    manifest, reason = check(ROOT_DIR)
    if manifest is None:
        return None, f"interpreted: {reason}"
    group = manifest["group_module"]
    library_path = compiled_dir(ROOT_DIR, GROUP_PACKAGE) / manifest["group_library"]
    if group not in sys.modules:
        try:
            spec = importlib.util.spec_from_file_location(group, library_path)
            if spec is None or spec.loader is None:
                raise ImportError(f"no loader for {manifest['group_library']}")
            library = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(library)
        except ImportError as exc:
            return None, f"interpreted: cannot load {library_path} ({exc})"
        sys.modules[group] = library
    return manifest, reason


def activate(package_path: MutableSequence[str], part: str) -> str:
    """Put ``part``'s compiled modules (``wire``, ``proxy``) first on ``package_path`` (the package's
    ``__path__``) when the whole build matches; return and record the status. Never raises: the
    sources are always there to run."""
    global STATUS, _decided
    if _decided is None:
        _decided = _decide()
    manifest, STATUS = _decided
    if manifest is not None:
        package_path.insert(0, str(compiled_dir(ROOT_DIR, part)))
    return STATUS
