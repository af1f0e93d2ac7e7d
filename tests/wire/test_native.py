"""The compiled data path (shadowtap.wire.native): used only when the build matches the sources and this
interpreter, all or nothing across wire and proxy, with the reason told; the interpreted sources otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from shadowtap.wire import native

EXT = sysconfig.get_config_var("EXT_SUFFIX")
ROOT = Path(__file__).resolve().parents[2]
#: Set by `make pytest`, which builds first: then a missing or stale build is a failure here.
EXPECT_COMPILED = os.environ.get("SHADOWTAP_EXPECT_COMPILED") == "1"


def _fake_build(tmp: Path, modules: dict[str, str]) -> tuple[Path, Path]:
    """A ``shadowtap`` directory with the given sources (``part.name``: text) and compiled directories
    whose manifest matches (the group library and manifest in ``wire/_compiled``); returns the root
    and the group's compiled directory."""
    root = tmp / "shadowtap"
    group = root / "wire" / "_compiled"
    group.mkdir(parents=True)
    digests = {}
    for dotted, text in modules.items():
        part, name = dotted.split(".")
        source = root / part / f"{name}.py"
        (root / part / "_compiled").mkdir(parents=True, exist_ok=True)
        source.write_text(text)
        digests[f"shadowtap.{part}.{name}"] = native.source_digest(source)
        (root / part / "_compiled" / f"{name}{EXT}").write_bytes(b"\x7fELF")
    (group / f"group__mypyc{EXT}").write_bytes(b"\x7fELF")
    manifest = {
        "format": native.MANIFEST_FORMAT,
        "interpreter": native.interpreter_tag(),
        "mypyc": "9.9",
        "group_module": "group__mypyc",
        "group_library": f"group__mypyc{EXT}",
        "modules": digests,
    }
    (group / native.MANIFEST).write_text(json.dumps(manifest))
    return root, group


def _names(*dotted: str) -> tuple[str, ...]:
    return tuple(f"shadowtap.{name}" for name in dotted)


def test_a_matching_build_is_accepted(tmp_path: Path) -> None:
    root, _ = _fake_build(tmp_path, {"proxy.server": "x = 1\n", "wire.client": "y = 2\n"})
    manifest, reason = native.check(root, _names("wire.client", "proxy.server"))
    assert manifest is not None and manifest["mypyc"] == "9.9"
    assert reason == "compiled (mypyc 9.9, 2 modules)"


def test_one_edited_source_makes_the_whole_build_stale_and_names_it(tmp_path: Path) -> None:
    root, _ = _fake_build(tmp_path, {"proxy.server": "x = 1\n", "wire.client": "y = 2\n"})
    (root / "wire" / "client.py").write_text("y = 3\n")
    manifest, reason = native.check(root, _names("proxy.server", "wire.client"))
    assert manifest is None
    assert reason == f"stale compiled build: {root / 'wire' / 'client.py'} changed since it was compiled (make native)"


def test_a_build_for_another_interpreter_is_refused(tmp_path: Path) -> None:
    root, group = _fake_build(tmp_path, {"proxy.server": "x = 1\n"})
    manifest = json.loads((group / native.MANIFEST).read_text())
    manifest["interpreter"] = "cpython-312 .cpython-312-x86_64-linux-gnu.so"
    (group / native.MANIFEST).write_text(json.dumps(manifest))
    found, reason = native.check(root, _names("proxy.server"))
    assert found is None
    assert "built for cpython-312 .cpython-312" in reason and native.interpreter_tag() in reason


def test_a_build_in_the_older_single_package_format_is_stale(tmp_path: Path) -> None:
    root, group = _fake_build(tmp_path, {"proxy.server": "x = 1\n"})
    manifest = json.loads((group / native.MANIFEST).read_text())
    manifest["format"] = 1
    (group / native.MANIFEST).write_text(json.dumps(manifest))
    found, reason = native.check(root, _names("proxy.server"))
    assert found is None and reason.endswith(f"manifest format 1, expected {native.MANIFEST_FORMAT}")


def test_missing_or_broken_pieces_are_named(tmp_path: Path) -> None:
    root, _ = _fake_build(tmp_path, {"proxy.server": "x = 1\n"})
    (root / "proxy" / "_compiled" / f"server{EXT}").unlink()
    assert native.check(root, _names("proxy.server")) == (
        None,
        f"{root / 'proxy' / '_compiled'}: the extension of shadowtap.proxy.server is missing",
    )

    root, group = _fake_build(tmp_path / "b", {"proxy.server": "x = 1\n"})
    (group / f"group__mypyc{EXT}").unlink()
    assert native.check(root, _names("proxy.server")) == (None, f"{group}: group__mypyc{EXT} is missing")

    root, group = _fake_build(tmp_path / "c", {"proxy.server": "x = 1\n"})
    (group / native.MANIFEST).write_text("{not json")
    found, reason = native.check(root, _names("proxy.server"))
    assert found is None and reason.startswith(f"{group / native.MANIFEST}: unreadable manifest")

    expected = (None, "no compiled build (make native in a checkout; a pure wheel has none)")
    assert native.check(tmp_path / "none", _names("proxy.server")) == expected


def test_a_build_of_other_modules_than_the_tree_compiles_is_stale(tmp_path: Path) -> None:
    # A module added to COMPILED_MODULES after the build: every source the build has still matches.
    root, _ = _fake_build(tmp_path, {"proxy.server": "x = 1\n"})
    (root / "proxy" / "rewrite.py").write_text("z = 1\n")
    found, reason = native.check(root, _names("proxy.server", "proxy.rewrite"))
    assert found is None
    assert reason == (
        "stale compiled build: it holds shadowtap.proxy.server, not the modules this tree compiles (make native)"
    )


def _import_in_child(tree: Path, env: dict[str, str]) -> dict[str, str]:
    """Import the package from ``tree`` in a fresh interpreter: the status and each module's file."""
    code = (
        "import json, importlib, shadowtap.proxy.config; from shadowtap.wire import native\n"
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
    manifest, reason = native.check(native.ROOT_DIR)
    if manifest is None and EXPECT_COMPILED:
        pytest.fail(f"make pytest builds the data path first, yet: {reason}")
    return manifest is not None


def test_the_process_runs_what_the_build_and_environment_say() -> None:
    compiled = _import_in_child(ROOT, {})
    if _built():
        assert compiled["status"].startswith("compiled (mypyc ")
        for module in native.COMPILED_MODULES:
            # Under its package's compiled directory; mypyc may name the file after the group library's
            # directory (wire's) plus the module's path instead.
            own = native.compiled_dir(native.ROOT_DIR, module.split(".")[1])
            group = native.compiled_dir(native.ROOT_DIR, native.GROUP_PACKAGE)
            assert compiled[module].startswith((str(own), str(group))) and compiled[module].endswith(EXT)
    else:
        assert compiled["status"].startswith("interpreted: ")
        assert all(compiled[m].endswith(".py") for m in native.COMPILED_MODULES)
    assert compiled["shadowtap.proxy.config"] == str(native.ROOT_DIR / "proxy" / "config.py")  # never compiled

    interpreted = _import_in_child(ROOT, {native.PURE_ENV: "1"})
    assert interpreted["status"] == f"interpreted: {native.PURE_ENV} is set"
    for module in native.COMPILED_MODULES:
        assert interpreted[module] == str(native.source_path(native.ROOT_DIR, module))


def test_an_edited_source_runs_interpreted_with_the_reason(tmp_path: Path) -> None:
    if not _built():
        pytest.skip("no compiled build to make stale (make native builds one)")
    # A copy of the tree with the build, then one compiled source edited after the build.
    # The child imports shadowtap.* from the copy: the package with its links to the parts.
    for package in ("shadowtap", "proxy", "recorder", "differ", "wire", "replayer"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / package, tmp_path / package, symlinks=True, ignore=ignore)
    edited = tmp_path / "wire" / "client.py"
    edited.write_text(edited.read_text() + "\nEDITED_AFTER_THE_BUILD = True\n")
    result = _import_in_child(tmp_path, {})
    assert result["status"] == (
        f"interpreted: stale compiled build: {tmp_path / 'shadowtap' / 'wire' / 'client.py'} changed since it was"
        " compiled (make native)"
    )
    # All or nothing: the proxy's modules, unchanged, run interpreted too.
    for module in native.COMPILED_MODULES:
        assert result[module] == str(native.source_path(tmp_path / "shadowtap", module))
