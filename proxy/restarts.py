"""Restart with a growing back-off: the supervision the proxy's helper processes share.

``Restarting`` is the part of ``shadowtap.proxy.live.LiveDiff`` (the live differ) and
``shadowtap.proxy.live_view.LiveView`` (the live analysis process) that decides when a child that
ended or could not start runs again: the first restart after ``RESTART_FIRST_S``, doubling up to
``RESTART_MAX_S``; a child that ran ``STABLE_S`` without dying starts the back-off over. The
subclass starts its child (``_spawn``), says what it is (``what``, for the log) and calls
``_exited`` when it ends; ``close`` sets ``_closing`` and cancels ``_restart``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import ClassVar, Final

__all__ = ["RESTART_FIRST_S", "RESTART_MAX_S", "STABLE_S", "Restarting"]

log = logging.getLogger(__name__)

RESTART_FIRST_S: Final = 0.5
RESTART_MAX_S: Final = 30.0
STABLE_S: Final = 60.0


class Restarting:
    """A supervised child's restarts (module docstring)."""

    #: What the child is, for the log ("the live differ").
    what: ClassVar[str] = "the child process"

    def __init__(self) -> None:
        self._restarts = 0
        self._backoff_s = RESTART_FIRST_S
        self._last_exit = ""
        self._restart: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    async def _spawn(self) -> None:
        raise NotImplementedError

    def _exited(self, pid: int, code: int, ready: bool, started_s: float) -> None:
        """The child ``pid`` ended with ``code`` (``ready``: it had said so); run it again later."""
        started = "" if ready else " before it was ready (its error is above)"
        self._last_exit = f"exited with code {code}{started}"
        if time.monotonic() - started_s >= STABLE_S:
            self._backoff_s = RESTART_FIRST_S
        log.error("%s %d %s; restarting in %g s", self.what, pid, self._last_exit, self._backoff_s)
        self._restart_after_backoff()

    def _restart_after_backoff(self) -> None:
        self._restart = asyncio.get_running_loop().create_task(self._restart_later(self._backoff_s))
        self._backoff_s = min(self._backoff_s * 2, RESTART_MAX_S)

    def _spawn_failed(self, exc: OSError) -> None:
        self._last_exit = f"could not start: {exc.strerror or exc}"
        log.error("%s could not start: %s; retrying in %g s", self.what, exc.strerror or exc, self._backoff_s)
        self._restart_after_backoff()

    async def _restart_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if self._closing:
            return
        try:
            await self._spawn()
        except OSError as exc:
            self._spawn_failed(exc)
            return
        self._restarts += 1
        log.warning("%s restarted (pid %d)", self.what, self.pid or 0)
