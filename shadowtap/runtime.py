"""Process start-up shared by the long-running subcommands: the event loop policy.

It must never hide the choice: uvloop is used when importable (it is a dependency on POSIX), and
``SHADOWTAP_LOOP=asyncio`` forces the stdlib loop for debugging.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on uvloop (or asyncio when asked or unavailable)."""
    if os.environ.get("SHADOWTAP_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
