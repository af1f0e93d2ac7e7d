"""Build hook: a wheel that carries the compiled data path, when asked (everything else is in pyproject.toml).

``SHADOWTAP_NATIVE=1 python -m build --no-isolation`` (``make wheel``) compiles the data path with
mypyc (``scripts/build_native.py --into``) beside the wheel's copy of the sources, checks the build
matches them byte for byte, and tags the wheel for this platform and interpreter, the way mypy ships
its own compiled wheels. mypyc type-checks what it compiles against the installed dependencies, so
the build runs in an environment that has them (``--no-isolation`` in the dev venv).

Without ``SHADOWTAP_NATIVE=1`` (``pip install`` of the sdist, ``python -m build``) the wheel is pure
(``py3-none-any``): it runs the sources and says so (``/stats``, the proxy's start-up line). An
editable install never compiles here: ``make native`` builds in place for a checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parent
NATIVE = os.environ.get("SHADOWTAP_NATIVE", "0") not in ("", "0")


class BuildPyNative(build_py):
    def run(self) -> None:
        super().run()
        if not NATIVE or self.editable_mode:
            return
        package = Path(self.build_lib).resolve() / "shadowtap"
        script = ROOT / "scripts" / "build_native.py"
        result = subprocess.run([sys.executable, str(script), "--into", str(package)], check=False)
        if result.returncode != 0:
            raise SystemExit("setup.py: compiling the data path failed (see above); SHADOWTAP_NATIVE=0: a pure wheel")


class NativeDistribution(Distribution):
    def has_ext_modules(self) -> bool:
        # The compiled modules are built by build_py, not declared as ext_modules: this makes the
        # wheel platform-specific when they are in it.
        return NATIVE


setup(cmdclass={"build_py": BuildPyNative}, distclass=NativeDistribution)
