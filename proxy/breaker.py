"""A circuit breaker for one shadow: stop sending to a shadow that keeps failing, probe it later.

Closed: requests flow; it opens after ``consecutive_failures`` failures in a row, or when the
failure ratio over the last ``window`` outcomes reaches ``failure_ratio`` (once ``min_calls`` are
in). Open: everything is refused for ``open_s``. Half-open: at most ``half_open_probes`` requests
at a time are let through; one success closes it, one failure opens it again. Pure state with the
clock passed in; it must never sleep, do I/O or raise into its caller.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from shadowtap.recorder.errors import ConfigError

__all__ = ["BreakerSettings", "CircuitBreaker"]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half-open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    #: Failures in a row that open the breaker.
    consecutive_failures: int = 5
    #: Share of failures in the recent window that opens the breaker (once ``min_calls`` were made).
    failure_ratio: float = 0.5
    #: How many recent calls the failure ratio is measured over.
    window: int = 50
    #: Calls in the window before the failure ratio is trusted.
    min_calls: int = 20
    #: Seconds the breaker stays open (copies dropped as ``breaker-open``) before probing.
    open_s: float = 5.0
    #: Copies let through while half-open; their success closes the breaker, a failure reopens it.
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ConfigError(f"must be >= 1, not {self.consecutive_failures!r}", field="consecutive_failures")
        if not 0.0 < self.failure_ratio <= 1.0:
            raise ConfigError(f"must be within (0, 1], not {self.failure_ratio!r}", field="failure_ratio")
        if self.window < 1:
            raise ConfigError(f"must be >= 1, not {self.window!r}", field="window")
        if not 1 <= self.min_calls <= self.window:
            raise ConfigError(f"must be within 1..window ({self.window}), not {self.min_calls!r}", field="min_calls")
        if self.open_s <= 0:
            raise ConfigError(f"must be > 0, not {self.open_s!r}", field="open_s")
        if self.half_open_probes < 1:
            raise ConfigError(f"must be >= 1, not {self.half_open_probes!r}", field="half_open_probes")


class CircuitBreaker:
    """Call ``allow(now)`` before sending; then exactly one of ``record_success``, ``record_failure``
    or ``record_cancelled``."""

    __slots__ = (
        "_consecutive",
        "_failures_in_window",
        "_opened_at_s",
        "_outcomes",
        "_probes",
        "settings",
        "state",
        "times_opened",
    )

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self.state = CLOSED
        self.times_opened = 0
        self._consecutive = 0
        # Bounded by the window size: the ratio only ever looks at the last `window` outcomes.
        self._outcomes: deque[bool] = deque(maxlen=settings.window)
        self._failures_in_window = 0
        self._opened_at_s = 0.0
        self._probes = 0

    def allow(self, now_s: float) -> bool:
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if now_s - self._opened_at_s < self.settings.open_s:
                return False
            self.state = HALF_OPEN
            self._probes = 0
        if self._probes < self.settings.half_open_probes:
            self._probes += 1
            return True
        return False

    def refusing(self, now_s: float) -> bool:
        """Open and still within ``open_s``: what ``allow`` would refuse, without taking a probe."""
        return self.state == OPEN and now_s - self._opened_at_s < self.settings.open_s

    def record_cancelled(self) -> None:
        """An allowed request was dropped before it could succeed or fail: free its probe slot."""
        if self.state == HALF_OPEN and self._probes > 0:
            self._probes -= 1

    def record_success(self, now_s: float) -> None:
        if self.state == HALF_OPEN:
            self._close()
            return
        self._consecutive = 0
        self._push(False)

    def record_failure(self, now_s: float) -> None:
        if self.state == HALF_OPEN:
            self._open(now_s)
            return
        if self.state == OPEN:
            return
        self._consecutive += 1
        self._push(True)
        s = self.settings
        if self._consecutive >= s.consecutive_failures or (
            len(self._outcomes) >= s.min_calls and self._failures_in_window >= s.failure_ratio * len(self._outcomes)
        ):
            self._open(now_s)

    def _push(self, failed: bool) -> None:
        if len(self._outcomes) == self._outcomes.maxlen and self._outcomes[0]:
            self._failures_in_window -= 1
        self._outcomes.append(failed)
        if failed:
            self._failures_in_window += 1

    def _open(self, now_s: float) -> None:
        self.state = OPEN
        self.times_opened += 1
        self._opened_at_s = now_s
        self._probes = 0

    def _close(self) -> None:
        self.state = CLOSED
        self._consecutive = 0
        self._outcomes.clear()
        self._failures_in_window = 0
        self._probes = 0
