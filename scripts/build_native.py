"""Compile the data path (wire's framing and client, the proxy's hot modules, the replayer's request
path, the tape's decode path) with mypyc into each package's _compiled/ (see wire/native.py).

Usage: python scripts/build_native.py [--check] [--into PACKAGE_DIR]

Needs mypy (mypyc ships with it), setuptools, a C compiler and the interpreter's headers. Builds in a
temporary directory and replaces the ``_compiled/`` directories only when everything compiled, so a
failed build leaves the previous one (or none) in place; ``shadowtap.wire.native`` then decides
whether it matches. With ``--check`` it only says whether the current build matches the sources
(exit 0) or not (exit 1). ``--into`` puts the build beside a copy of the ``shadowtap`` package (a
wheel's build directory, ``setup.py``) instead of the checkout's, and checks it matches that copy.

With ``SHADOWTAP_NATIVE_CACHE=DIR`` in the environment (``make native`` sets it to ``.venv/native-cache``)
a build is also kept in ``DIR`` under a key made of every source of the ``shadowtap`` package (compiled
or not: the compiled code is typed against the rest), ``pyproject.toml``, this script, the
interpreter and mypyc's version; a later build of the same tree (a wheel built from a copy of the
checkout, as the packaging test does) takes it from there instead of compiling again, and checks it
against its sources like any build. Without the variable nothing is cached (an image build compiles).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# shadowtap.wire.native imports nothing of the project, but importing it as shadowtap.wire.native would run
# wire/__init__ (and activate an old build): load the file on its own.
_spec = importlib.util.spec_from_file_location("_shadowtap_native", ROOT / "shadowtap" / "wire" / "native.py")
assert _spec is not None and _spec.loader is not None
native = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(native)

#: The shared library's module name: one library for the whole group, loaded by shadowtap.wire.native.
GROUP = "shadowtap_native"
#: Where the sources are, as the package imports them (``shadowtap/proxy`` links to ``proxy/``).
PACKAGE_ROOT = ROOT / "shadowtap"


#: Builds kept in the cache; the oldest go first.
CACHE_KEEP = 4


def _cache_key(package_root: Path, interpreter: str, mypyc_version: str) -> str:
    """What a build depends on, as one digest: every Python source of the package as imported (the
    links into the top-level folders followed), the project's settings, this script, the
    interpreter and mypyc."""
    digest = hashlib.sha256()
    for value in (interpreter, mypyc_version, GROUP):
        digest.update(value.encode() + b"\0")
    sources = sorted(
        Path(top, name)
        for top, dirs, files in os.walk(package_root, followlinks=True)
        if "_compiled" not in Path(top).parts and "__pycache__" not in Path(top).parts
        for name in files
        if name.endswith(".py")
    )
    for path in [*sources, package_root.parent / "pyproject.toml", Path(__file__).resolve()]:
        name = path.relative_to(package_root.parent) if path.is_relative_to(package_root.parent) else Path(path.name)
        digest.update(str(name).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest() if path.exists() else b"-")
    return digest.hexdigest()[:32]


def _from_cache(entry: Path, staged: Path) -> bool:
    """Copy a cached build into ``staged`` (one directory per package part, the manifest in the
    group's); False when there is none or it is incomplete."""
    if not (entry / native.GROUP_PACKAGE / native.MANIFEST).is_file():
        return False
    shutil.copytree(entry, staged)
    os.utime(entry)  # the most recently used are the ones kept
    return True


def _to_cache(cache: Path, key: str, staged: Path) -> None:
    """Keep a finished build (``staged``, manifest included) under ``key``; a failure to cache is only
    said, never fatal."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
        shutil.copytree(staged, tmp / "build")
        target = cache / key
        shutil.rmtree(target, ignore_errors=True)
        (tmp / "build").rename(target)
        os.utime(target)
        shutil.rmtree(tmp, ignore_errors=True)
        entries = sorted((p for p in cache.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
        for old in entries[:-CACHE_KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        print(f"build_native: could not keep the build in {cache}: {exc}", file=sys.stderr)


def _parallel_build_ext() -> type:
    """setuptools' ``build_ext`` compiling each extension's C files on every core available (it
    compiles them one after the other; ``--parallel`` only runs whole extensions side by side, and
    the group library is one extension of many files). Where the compiler lacks the internals this
    leans on, it compiles as setuptools does."""
    from setuptools.command.build_ext import build_ext

    class ParallelBuildExt(build_ext):
        def build_extensions(self) -> None:
            compiler = self.compiler
            jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            needed = ("_setup_compile", "_get_cc_args", "_compile")
            if jobs > 1 and all(hasattr(compiler, name) for name in needed):
                compiler.compile = functools.partial(_compile_in_parallel, compiler, jobs)
            super().build_extensions()

    return ParallelBuildExt


def _compile_in_parallel(
    compiler: Any,
    jobs: int,
    sources: list[str],
    output_dir: str | None = None,
    macros: Any = None,
    include_dirs: Any = None,
    debug: bool = False,
    extra_preargs: list[str] | None = None,
    extra_postargs: list[str] | None = None,
    depends: Any = None,
) -> list[str]:
    """``CCompiler.compile`` with its per-file loop on ``jobs`` threads (each runs a gcc process),
    the largest files first."""
    macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
        output_dir, macros, include_dirs, sources, depends, extra_postargs
    )
    cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)
    todo = sorted((obj for obj in objects if obj in build), key=lambda obj: -Path(build[obj][0]).stat().st_size)

    def one(obj: str) -> None:
        src, ext = build[obj]
        compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for future in [pool.submit(one, obj) for obj in todo]:
            future.result()  # the first failure (a CompileError) is raised, as setuptools would
    return list(objects)


def _compile(
    work: Path,
    sources: list[Path],
    digests: dict[str, str],
    parts: list[str],
    mypyc_version: str,
    mypycify: Any,
    distribution: Any,
) -> int:
    """Compile the group in ``work`` and stage it in ``work/staged``: one directory per package part,
    the group library and the manifest in the group's. 0, or the exit code of a failure (said)."""
    os.chdir(ROOT)  # mypyc reads the project's mypy settings from pyproject.toml here
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            # One C file per module, not one for the whole group: gcc compiles them in 72 s of CPU
            # rather than 128 s (its optimiser is superlinear in a file's size), and they compile in
            # parallel; the code runs the same (callgrind: within 1 % instructions per request).
            extensions = mypycify(
                [str(path.relative_to(ROOT)) for path in sources],
                opt_level="3",
                group_name=GROUP,
                target_dir=str(work / "c"),
                multi_file=True,
            )
            cmdclass = {"build_ext": _parallel_build_ext()}
            dist = distribution({"name": "shadowtap-native", "ext_modules": extensions, "cmdclass": cmdclass})
            build_dirs = ["--build-lib", str(work / "lib"), "--build-temp", str(work / "o")]
            dist.script_args = ["-q", "build_ext", *build_dirs]
            dist.parse_command_line()
            dist.run_commands()
    except (SystemExit, Exception) as exc:  # mypyc reports type errors by exiting
        print(log.getvalue(), file=sys.stderr)
        print(f"build_native: compiling failed: {exc}", file=sys.stderr)
        return 1
    after = {name: native.source_digest(path) for name, path in zip(native.COMPILED_MODULES, sources, strict=True)}
    if after != digests:
        print("build_native: a source changed while compiling; run it again", file=sys.stderr)
        return 1
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    staged = {part: work / "staged" / part for part in parts}
    for where in staged.values():
        where.mkdir(parents=True)
    group_dir = staged[native.GROUP_PACKAGE]
    library = f"{GROUP}__mypyc{suffix}"
    shutil.copy2(work / "lib" / library, group_dir / library)
    for name in native.COMPILED_MODULES:
        _, part, short = name.split(".")
        shutil.copy2(work / "lib" / "shadowtap" / part / f"{short}{suffix}", staged[part] / f"{short}{suffix}")
    manifest = {
        "format": native.MANIFEST_FORMAT,
        "interpreter": native.interpreter_tag(),
        "mypyc": mypyc_version,
        "group_module": f"{GROUP}__mypyc",
        "group_library": library,
        "modules": digests,
    }
    (group_dir / native.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


def build(package_root: Path = PACKAGE_ROOT) -> int:
    try:
        import mypy.version
        from mypyc.build import mypycify
        from setuptools import Distribution
    except ImportError as exc:
        print(f"build_native: cannot compile, {exc.name} is missing (pip install mypy setuptools)", file=sys.stderr)
        return 2
    if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        print(f"build_native: no Python.h in {sysconfig.get_paths()['include']} (install python3-dev)", file=sys.stderr)
        return 2
    sources = [native.source_path(PACKAGE_ROOT, name) for name in native.COMPILED_MODULES]
    digests = {name: native.source_digest(path) for name, path in zip(native.COMPILED_MODULES, sources, strict=True)}
    parts = sorted({name.split(".")[1] for name in native.COMPILED_MODULES} | {native.GROUP_PACKAGE})
    started = time.monotonic()
    cache_dir = os.environ.get("SHADOWTAP_NATIVE_CACHE", "")
    cache = Path(cache_dir).resolve() if cache_dir else None
    key = _cache_key(PACKAGE_ROOT, native.interpreter_tag(), mypy.version.__version__) if cache else ""
    with tempfile.TemporaryDirectory(prefix="shadowtap-native-") as tmp:
        work = Path(tmp)
        staged_root = work / "staged"
        cached = cache is not None and _from_cache(cache / key, staged_root)
        if not cached:
            code = _compile(work, sources, digests, parts, mypy.version.__version__, mypycify, Distribution)
            if code:
                return code
            if cache is not None:
                _to_cache(cache, key, staged_root)
        manifest_text = (staged_root / native.GROUP_PACKAGE / native.MANIFEST).read_text()
        (staged_root / native.GROUP_PACKAGE / native.MANIFEST).unlink()
        # The manifest goes in last: until it is there, no build is seen (a reader sees the old build,
        # none, or the new one, never a mix: the old manifest goes first).
        (native.compiled_dir(package_root, native.GROUP_PACKAGE) / native.MANIFEST).unlink(missing_ok=True)
        for part in parts:
            target = native.compiled_dir(package_root, part)
            old = target.with_name(target.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                target.rename(old)
            shutil.move(str(staged_root / part), target)
            shutil.rmtree(old, ignore_errors=True)
        (native.compiled_dir(package_root, native.GROUP_PACKAGE) / native.MANIFEST).write_text(manifest_text)
    if package_root != PACKAGE_ROOT:
        # A copy of the package (a wheel's): its sources must be the ones compiled, byte for byte.
        found, reason = native.check(package_root)
        if found is None:
            print(f"build_native: the build does not match {package_root}: {reason}", file=sys.stderr)
            return 1
    took = time.monotonic() - started
    where = ", ".join(f"{part}/_compiled" for part in parts)
    how = f"took the build of {len(digests)} modules from {cache}" if cached else f"compiled {len(digests)} modules"
    print(f"build_native: {how} into {where} in {took:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether the build matches the sources")
    parser.add_argument("--into", type=Path, default=PACKAGE_ROOT, help="the shadowtap package directory to build for")
    args = parser.parse_args()
    if args.check:
        manifest, reason = native.check(args.into)
        print(f"build_native: {reason}")
        return 0 if manifest is not None else 1
    return build(args.into.resolve() if args.into != PACKAGE_ROOT else PACKAGE_ROOT)


if __name__ == "__main__":
    sys.exit(main())
