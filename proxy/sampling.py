"""Sampling decisions for mirroring and recording: percentages, consistent keys, rate caps.

Pure code with the clock and the random source passed in, so every decision is testable without a
socket. A consistent decision hashes the key with a stable hash (CRC-32, the same in every worker
process and every run, unlike ``hash()``), so all requests with one key are in or out together.
This module must never do I/O and never keep per-key state (memory would grow with the key space).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Final
from urllib.parse import parse_qsl

from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.model import Headers, header_value

__all__ = ["SampleKey", "TokenBucket", "in_sample", "key_in_sample"]

#: Percentages are resolved to hundredths of a percent (0.01% granularity).
_SCALE: Final = 10_000
_KEY_SOURCES: Final = ("header", "cookie", "query")


@dataclass(frozen=True, slots=True)
class SampleKey:
    """Where the consistent-sampling key comes from: a header, a cookie or a query parameter."""

    source: str
    name: str

    def __post_init__(self) -> None:
        if self.source not in _KEY_SOURCES:
            raise ConfigError(f"must be one of {', '.join(_KEY_SOURCES)}, not {self.source!r}", field="source")
        if not self.name:
            raise ConfigError("must not be empty", field="name")

    @classmethod
    def parse(cls, spec: str, *, field: str) -> SampleKey:
        """``header:X-User``, ``cookie:session`` or ``query:user_id``."""
        source, sep, name = spec.partition(":")
        if not sep:
            raise ConfigError(f"expected SOURCE:NAME (header:X-User, cookie:sid, query:uid), not {spec!r}", field=field)
        try:
            return cls(source.strip().lower(), name.strip())
        except ConfigError as exc:
            raise ConfigError(f"{exc.message} (in {spec!r})", field=field) from exc

    def extract(self, target: str, headers: Headers) -> bytes | None:
        """The key's value in this request, or ``None`` when the request does not carry it."""
        if self.source == "header":
            return header_value(headers, self.name.encode("latin-1"))
        if self.source == "query":
            _, sep, query = target.partition("?")
            if not sep:
                return None
            for key, value in parse_qsl(query, keep_blank_values=True):
                if key == self.name:
                    return value.encode("utf-8")
            return None
        raw = header_value(headers, b"cookie")
        if raw is None:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw.decode("latin-1"))
        except CookieError:
            return None
        morsel = jar.get(self.name)
        return None if morsel is None else morsel.value.encode("utf-8")


def _threshold(percent: float) -> int:
    return round(percent * (_SCALE // 100))


def key_in_sample(key: bytes, percent: float) -> bool:
    """Whether ``key`` is inside a ``percent`` sample: stable across processes, runs and shadows."""
    if percent >= 100.0:
        return True
    if percent <= 0.0:
        return False
    return zlib.crc32(key) % _SCALE < _threshold(percent)


def in_sample(percent: float, rand: Callable[[], float] = random.random) -> bool:
    """An independent ``percent`` coin flip."""
    if percent >= 100.0:
        return True
    if percent <= 0.0:
        return False
    return rand() * 100.0 < percent


class TokenBucket:
    """A rate cap: ``rate_per_s`` tokens a second, at most ``burst`` saved up. ``now`` is in seconds."""

    __slots__ = ("_last_s", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float, now_s: float) -> None:
        if rate_per_s <= 0:
            raise ConfigError(f"must be > 0, not {rate_per_s!r}", field="rate_per_s")
        if burst < 1:
            raise ConfigError(f"must be >= 1, not {burst!r}", field="burst")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._last_s = now_s

    def try_take(self, now_s: float) -> bool:
        """Take one token if there is one; never waits."""
        elapsed_s = now_s - self._last_s
        if elapsed_s > 0:
            self._tokens = min(self.burst, self._tokens + elapsed_s * self.rate_per_s)
            self._last_s = now_s
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
