"""The compiled data path (shadowtap.proxy.native): used only when the build matches the sources and this
interpreter, all or nothing, with the reason told; the interpreted sources otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from shadowtap.proxy import native

EXT = sysconfig.get_config_var("EXT_SUFFIX")
ROOT = Path(__file__).resolve().parents[2]
#: Set by `make pytest`, which builds first: then a missing or stale build is a failure here.
EXPECT_COMPILED = os.environ.get("SHADOWTAP_EXPECT_COMPILED") == "1"


def _fake_build(tmp: Path, modules: dict[str, str]) -> tuple[Path, Path]:
    """A package directory with the given sources and a compiled directory whose manifest matches
    (its modules are ``shadowtap.proxy.<name>``, as ``_names`` spells them)."""
    package = tmp / "pkg"
    compiled = package / "_compiled"
    compiled.mkdir(parents=True)
    digests = {}
    for name, text in modules.items():
        source = package / f"{name}.py"
        source.write_text(text)
        digests[f"shadowtap.proxy.{name}"] = native.source_digest(source)
        (compiled / f"{name}{EXT}").write_bytes(b"\x7fELF")
    (compiled / f"group__mypyc{EXT}").write_bytes(b"\x7fELF")
    manifest = {
        "format": native.MANIFEST_FORMAT,
        "interpreter": native.interpreter_tag(),
        "mypyc": "9.9",
        "group_module": "group__mypyc",
        "group_library": f"group__mypyc{EXT}",
        "modules": digests,
    }
    (compiled / native.MANIFEST).write_text(json.dumps(manifest))
    return compiled, package


def _names(*short: str) -> tuple[str, ...]:
    return tuple(f"shadowtap.proxy.{name}" for name in short)


def test_a_matching_build_is_accepted(tmp_path: Path) -> None:
    compiled, package = _fake_build(tmp_path, {"server": "x = 1\n", "upstream": "y = 2\n"})
    manifest, reason = native.check(compiled, package, _names("upstream", "server"))
    assert manifest is not None and manifest["mypyc"] == "9.9"
    assert reason == "compiled (mypyc 9.9, 2 modules)"


def test_one_edited_source_makes_the_whole_build_stale_and_names_it(tmp_path: Path) -> None:
    compiled, package = _fake_build(tmp_path, {"server": "x = 1\n", "upstream": "y = 2\n"})
    (package / "upstream.py").write_text("y = 3\n")
    manifest, reason = native.check(compiled, package, _names("server", "upstream"))
    assert manifest is None
    assert reason == f"stale compiled build: {package / 'upstream.py'} changed since it was compiled (make native)"


def test_a_build_for_another_interpreter_is_refused(tmp_path: Path) -> None:
    compiled, package = _fake_build(tmp_path, {"server": "x = 1\n"})
    manifest = json.loads((compiled / native.MANIFEST).read_text())
    manifest["interpreter"] = "cpython-312 3.12.1 .cpython-312-x86_64-linux-gnu.so"
    (compiled / native.MANIFEST).write_text(json.dumps(manifest))
    found, reason = native.check(compiled, package, _names("server"))
    assert found is None
    assert "built for cpython-312 3.12.1" in reason and native.interpreter_tag() in reason


def test_missing_or_broken_pieces_are_named(tmp_path: Path) -> None:
    compiled, package = _fake_build(tmp_path, {"server": "x = 1\n"})
    (compiled / f"server{EXT}").unlink()
    assert native.check(compiled, package, _names("server")) == (
        None,
        f"{compiled}: the extension of shadowtap.proxy.server is missing",
    )

    compiled, package = _fake_build(tmp_path / "b", {"server": "x = 1\n"})
    (compiled / f"group__mypyc{EXT}").unlink()
    assert native.check(compiled, package, _names("server")) == (None, f"{compiled}: group__mypyc{EXT} is missing")

    compiled, package = _fake_build(tmp_path / "c", {"server": "x = 1\n"})
    (compiled / native.MANIFEST).write_text("{not json")
    found, reason = native.check(compiled, package, _names("server"))
    assert found is None and reason.startswith(f"{compiled / native.MANIFEST}: unreadable manifest")

    assert native.check(tmp_path / "none", package, _names("server")) == (None, "no compiled build (make native)")


def test_a_build_of_other_modules_than_the_tree_compiles_is_stale(tmp_path: Path) -> None:
    # A module added to COMPILED_MODULES after the build: every source the build has still matches.
    compiled, package = _fake_build(tmp_path, {"server": "x = 1\n"})
    (package / "rewrite.py").write_text("z = 1\n")
    found, reason = native.check(compiled, package, _names("server", "rewrite"))
    assert found is None
    assert reason == (
        "stale compiled build: it holds shadowtap.proxy.server, not the modules this tree compiles (make native)"
    )


def _import_in_child(tree: Path, env: dict[str, str]) -> dict[str, str]:
    """Import the package from ``tree`` in a fresh interpreter: the status and each module's file."""
    code = (
        "import json, importlib, shadowtap.proxy.config; from shadowtap.proxy import native\n"
        "names = native.COMPILED_MODULES + ('shadowtap.proxy.config',)\n"
        "files = {m: importlib.import_module(m).__file__ for m in names}\n"
        "print(json.dumps({'status': native.STATUS, **files}))\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in (native.PURE_ENV, "PYTHONPATH")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, str] = json.loads(out.stdout)
    return result


def _built() -> bool:
    manifest, reason = native.check(native.COMPILED_DIR, native.PACKAGE_DIR)
    if manifest is None and EXPECT_COMPILED:
        pytest.fail(f"make pytest builds the data path first, yet: {reason}")
    return manifest is not None


def test_the_process_runs_what_the_build_and_environment_say() -> None:
    compiled = _import_in_child(ROOT, {})
    if _built():
        assert compiled["status"].startswith("compiled (mypyc ")
        for module in native.COMPILED_MODULES:
            # mypyc names the file after the group library's directory plus the module's path.
            assert compiled[module].startswith(str(native.COMPILED_DIR)) and compiled[module].endswith(EXT)
    else:
        assert compiled["status"].startswith("interpreted: ")
        assert all(compiled[m].endswith(".py") for m in native.COMPILED_MODULES)
    assert compiled["shadowtap.proxy.config"] == str(native.PACKAGE_DIR / "config.py")  # never compiled

    interpreted = _import_in_child(ROOT, {native.PURE_ENV: "1"})
    assert interpreted["status"] == f"interpreted: {native.PURE_ENV} is set"
    for module in native.COMPILED_MODULES:
        assert interpreted[module] == str(native.PACKAGE_DIR / f"{module.rpartition('.')[2]}.py")


def test_an_edited_source_runs_interpreted_with_the_reason(tmp_path: Path) -> None:
    if not _built():
        pytest.skip("no compiled build to make stale (make native builds one)")
    # A copy of the tree with the build, then one compiled source edited after the build.
    # The child imports shadowtap.* from the copy: the package with its links to the parts.
    for package in ("shadowtap", "proxy", "recorder", "differ", "wire"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / package, tmp_path / package, symlinks=True, ignore=ignore)
    edited = tmp_path / "proxy" / "mirror.py"
    edited.write_text(edited.read_text() + "\nEDITED_AFTER_THE_BUILD = True\n")
    result = _import_in_child(tmp_path, {})
    assert result["status"] == (
        f"interpreted: stale compiled build: {tmp_path / 'shadowtap' / 'proxy' / 'mirror.py'} changed since it was"
        " compiled (make native)"
    )
    for module in native.COMPILED_MODULES:
        assert result[module] == str(tmp_path / "shadowtap" / "proxy" / f"{module.rpartition('.')[2]}.py")
