"""Compile the proxy's data path with mypyc into proxy/_compiled/ (see proxy/native.py).

Usage: python scripts/build_native.py [--check]

Needs mypy (mypyc ships with it), setuptools, a C compiler and the interpreter's headers. Builds in a
temporary directory and replaces proxy/_compiled/ only when everything compiled, so a failed build
leaves the previous one (or none) in place; ``shadowtap.proxy.native`` then decides whether it matches. With
``--check`` it only says whether the current build matches the sources (exit 0) or not (exit 1).
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

# shadowtap.proxy.native imports nothing of the package, but importing it as shadowtap.proxy.native would run
# proxy/__init__ (and activate an old build): load the file on its own.
_spec = importlib.util.spec_from_file_location("_shadowtap_native", ROOT / "shadowtap" / "proxy" / "native.py")
assert _spec is not None and _spec.loader is not None
native = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(native)

#: The shared library's module name: one library for the whole group, loaded by shadowtap.proxy.native.
GROUP = "shadowtap_proxy"


def build() -> int:
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
    sources = [ROOT / "shadowtap" / "proxy" / f"{name.rpartition('.')[2]}.py" for name in native.COMPILED_MODULES]
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
        staged = work / "staged"
        staged.mkdir()
        library = f"{GROUP}__mypyc{suffix}"
        shutil.copy2(work / "lib" / library, staged / library)
        for name in native.COMPILED_MODULES:
            short = name.rpartition(".")[2]
            shutil.copy2(work / "lib" / "shadowtap" / "proxy" / f"{short}{suffix}", staged / f"{short}{suffix}")
        manifest = {
            "format": native.MANIFEST_FORMAT,
            "interpreter": native.interpreter_tag(),
            "mypyc": mypy.version.__version__,
            "group_module": f"{GROUP}__mypyc",
            "group_library": library,
            "modules": digests,
        }
        (staged / native.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        # Swap in the new build whole: a reader sees the old build or the new one, never a mix.
        target = native.COMPILED_DIR
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        shutil.move(str(staged), target)
        shutil.rmtree(old, ignore_errors=True)
    took = time.monotonic() - started
    print(f"build_native: compiled {len(digests)} modules into {target.relative_to(ROOT)} in {took:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether the build matches the sources")
    args = parser.parse_args()
    if args.check:
        manifest, reason = native.check(native.COMPILED_DIR, native.PACKAGE_DIR)
        print(f"build_native: {reason}")
        return 0 if manifest is not None else 1
    return build()


if __name__ == "__main__":
    sys.exit(main())
