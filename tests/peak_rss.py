"""Run a ``shadowtap`` command in a child process that reports its own peak resident set size.

Not ``getrusage``: Linux carries a process's ``ru_maxrss`` over ``fork`` and ``exec`` (the high-water
mark of the forking process counts as the child's), so a child of a test run that has grown to
300 MiB reports at least that, whatever it used itself. ``VmHWM`` in ``/proc/self/status`` belongs to
the address space the ``exec`` made, so it is the command's own peak.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

# argv: the file to write the peak (KiB) into, then the command's arguments.
_CHILD: Final = """
import runpy, sys
out = sys.argv.pop(1)
sys.argv[0] = "shadowtap"
try:
    runpy.run_module("shadowtap", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(out, "w") as f:
        f.write(peak)
"""


def command(peak_file: Path, *args: str | Path) -> list[str]:
    """The argv that runs ``shadowtap ARGS...`` and writes its peak RSS in KiB to ``peak_file``."""
    return [sys.executable, "-c", _CHILD, str(peak_file), *map(str, args)]


def peak_kib(peak_file: Path) -> int:
    return int(peak_file.read_text())
