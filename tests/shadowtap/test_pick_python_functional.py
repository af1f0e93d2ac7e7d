"""scripts/pick-python: the interpreter the Makefile builds .venv on.

It must name a CPython >= 3.11 that can make a venv, and prefer one whose libpython is linked into
the executable (an optimized distribution build) over a shared-libpython build; with none of those
on PATH it falls back to plain ``python3``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pick-python"

_PROBE = "import sys, venv; print(sys.version_info >= (3, 11), '/libpython3' in open('/proc/self/maps').read())"


def pick(path: str) -> str:
    result = subprocess.run(
        [str(SCRIPT)], capture_output=True, text=True, timeout=60, check=True, env={**os.environ, "PATH": path}
    )
    return result.stdout.strip()


def probe(python: str) -> tuple[bool, bool]:
    out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True).stdout
    recent, shared = out.split()
    return recent == "True", shared == "True"


def test_picks_a_recent_python_and_prefers_libpython_linked_in() -> None:
    chosen = pick(os.environ["PATH"])
    assert chosen, "pick-python printed nothing"
    resolved = shutil.which(chosen)
    assert resolved is not None, f"pick-python printed {chosen!r}, which is not runnable"
    recent, shared = probe(resolved)
    assert recent
    if chosen != "python3":
        # Only the fallback may be a shared-libpython build.
        assert not shared, f"{chosen} links libpython as a shared library"


def _shared_libpython_python() -> str | None:
    """A CPython >= 3.11 on this machine built with a shared libpython (pyenv's default), if any."""
    candidates = [sys.executable, *sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.1*/bin/python3"))]
    for candidate in candidates:
        if probe(candidate) == (True, True):
            return candidate
    return None


def test_skips_a_first_python3_that_is_a_shared_libpython_build(tmp_path: Path) -> None:
    """The first python3 on PATH is refused: a shared-libpython build where the machine has one,
    else a stand-in that fails the check the way an old or venv-less Python does."""
    first = tmp_path / "first"
    first.mkdir()
    shared = _shared_libpython_python()
    if shared is not None:
        (first / "python3").symlink_to(shared)
    else:
        (first / "python3").write_text("#!/bin/sh\nexit 1\n")
        (first / "python3").chmod(0o755)
    chosen = pick(f"{first}:/usr/local/bin:/usr/bin:/bin")
    assert chosen != str(first / "python3")
    if chosen != "python3":
        assert probe(chosen) == (True, False)
