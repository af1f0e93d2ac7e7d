"""Compile the data path (wire's framing and client, the proxy's hot modules, the replayer's request
path, the tape's record decoder) with mypyc into each package's _compiled/ (see wire/native.py).

Usage: python scripts/build_native.py [--check] [--into PACKAGE_DIR]

Needs mypy (mypyc ships with it), setuptools, a C compiler and the interpreter's headers. Builds in a
temporary directory and replaces the ``_compiled/`` directories only when everything compiled, so a
failed build leaves the previous one (or none) in place; ``shadowtap.wire.native`` then decides
whether it matches. With ``--check`` it only says whether the current build matches the sources
(exit 0) or not (exit 1). ``--into`` puts the build beside a copy of the ``shadowtap`` package (a
wheel's build directory, ``setup.py``) instead of the checkout's, and checks it matches that copy.
"""

from __future__ import annotations

import argparse
import contextlib
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
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shadowtap-native-") as tmp:
        work = Path(tmp)
        os.chdir(ROOT)  # mypyc reads the project's mypy settings from pyproject.toml here
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                extensions = mypycify(
                    [str(path.relative_to(ROOT)) for path in sources],
                    opt_level="3",
                    group_name=GROUP,
                    target_dir=str(work / "c"),
                )
                dist = Distribution({"name": "shadowtap-native", "ext_modules": extensions})
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
        parts = sorted({name.split(".")[1] for name in native.COMPILED_MODULES} | {native.GROUP_PACKAGE})
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
            "mypyc": mypy.version.__version__,
            "group_module": f"{GROUP}__mypyc",
            "group_library": library,
            "modules": digests,
        }
        # The manifest goes in last: until it is there, no build is seen (a reader sees the old build,
        # none, or the new one, never a mix: the old manifest goes first).
        (native.compiled_dir(package_root, native.GROUP_PACKAGE) / native.MANIFEST).unlink(missing_ok=True)
        for part in parts:
            target = native.compiled_dir(package_root, part)
            old = target.with_name(target.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                target.rename(old)
            shutil.move(str(staged[part]), target)
            shutil.rmtree(old, ignore_errors=True)
        (native.compiled_dir(package_root, native.GROUP_PACKAGE) / native.MANIFEST).write_text(
            json.dumps(manifest, indent=2) + "\n"
        )
    if package_root != PACKAGE_ROOT:
        # A copy of the package (a wheel's): its sources must be the ones compiled, byte for byte.
        found, reason = native.check(package_root)
        if found is None:
            print(f"build_native: the build does not match {package_root}: {reason}", file=sys.stderr)
            return 1
    took = time.monotonic() - started
    where = ", ".join(f"{part}/_compiled" for part in parts)
    print(f"build_native: compiled {len(digests)} modules into {where} in {took:.0f} s")
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
