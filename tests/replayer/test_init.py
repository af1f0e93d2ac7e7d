"""The replayer's public API is pinned, and importing the plan does not pull in asyncio code."""

from __future__ import annotations

import subprocess
import sys

from shadowtap import replayer


def test_every_export_resolves() -> None:
    for name in replayer.__all__:
        assert getattr(replayer, name) is not None
    assert sorted(replayer.__all__) == sorted(replayer._EXPORTS)


def test_the_plan_imports_without_aiohttp_or_the_runner() -> None:
    code = (
        "import sys, shadowtap.replayer.plan, shadowtap.replayer.stats; "
        "bad = [m for m in ('aiohttp', 'shadowtap.replayer.runner', 'uvloop') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
