"""Differences the proxy made itself: an answer that echoes what the proxy changed in a shadow's copy.

The proxy sends each shadow a copy of the request the primary got, changed in documented ways only:
its own Host, credentials stripped or swapped, secret query parameters hashed, the marker and the
correlation id added. The tape keeps those changes per shadow (``shadowtap.recorder.model.RequestDelta``). An
echo service shows them in its answers (a ``headers`` object, an absolute URL, a redirect's
``Location``, a ``cookies`` object), and without this module every one of them reads as a regression.

``Rewrites`` holds one copy's delta against the exchange's request and says, for one difference the
comparator found, whether the two values differ *exactly* by that delta, and names the reason:
``rewrite:host`` (the primary's Host where the copy's is), ``rewrite:marker`` (an ``X-Shadowtap-*``
field the copy got), ``rewrite:<header>`` (a header the copy lost, got replaced or gained:
``rewrite:authorization``, ``rewrite:cookie``) and ``rewrite:query`` (a parameter the copy got
hashed, swapped or not at all). Anything else is left alone. Pure code: no I/O, no state beyond what
one exchange gives it.
"""

from __future__ import annotations

import re
from typing import Any, Final

from shadowtap.recorder.model import UNRECORDED, Request, RequestDelta

__all__ = ["REWRITE_PREFIX", "Rewrites"]

REWRITE_PREFIX: Final = "rewrite:"
_HOST: Final = "rewrite:host"
_MARKER: Final = "rewrite:marker"
_QUERY: Final = "rewrite:query"
_COOKIE: Final = "cookie"
#: A recorded secret inside a header value (``Bearer redacted:hmac:...``, a cookie's value).
_RECORDED_SECRET: Final = re.compile(r"redacted:[A-Za-z0-9:._-]*")


def _key(name: str) -> str:
    """A header name as an echo may spell it, compared: ``X-Api-Key``, ``x_api_key``, ``HTTP_X_API_KEY``."""
    key = name.lower().replace("_", "-")
    return key[5:] if key.startswith("http-") else key


def _reason(header: str) -> str:
    return _MARKER if header.startswith("x-shadowtap-") else f"{REWRITE_PREFIX}{header}"


def _shape(recorded: str) -> re.Pattern[str]:
    """A pattern a raw value matches when the tape recorded it as ``recorded``: every recorded
    secret stands for one value that runs to the next ``;`` or ``,`` (cookie and list separators)."""
    parts = _RECORDED_SECRET.split(recorded)
    return re.compile("[^;,]*".join(re.escape(part) for part in parts))


def _cookie_pairs(header_value: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in header_value.split(";"):
        name, sep, value = item.strip().partition("=")
        if sep and name:
            pairs.setdefault(name, value)
    return pairs


class Rewrites:
    """One copy's request delta, ready to explain differences between the baseline's answer (to the
    primary's request) and that copy's answer. Built per exchange; indexes are made on first use."""

    __slots__ = ("_added", "_cookies", "_delta", "_hosts", "_query", "_ready", "_removed", "_replaced", "_request")

    def __init__(self, request: Request, delta: RequestDelta) -> None:
        self._request = request
        self._delta = delta
        self._ready = False
        self._hosts: tuple[str, str] | None = None
        self._removed: dict[str, list[str]] = {}
        self._cookies: dict[str, str] = {}
        self._added: dict[str, str | None] = {}
        self._replaced: dict[str, str | None] = {}
        self._query: dict[str, str | None] = {}

    def _index(self) -> None:
        self._ready = True
        delta = self._delta
        if delta.authority is not None and delta.authority[0] and delta.authority[0] != delta.authority[1]:
            self._hosts = delta.authority
        removed = {_key(name.decode("latin-1")) for name in delta.removed}
        for name, raw in self._request.headers:
            key = _key(name.decode("latin-1"))
            if key in removed:
                text = raw.decode("latin-1")
                self._removed.setdefault(key, []).append(text)
                if key == _COOKIE:
                    for cookie, recorded in _cookie_pairs(text).items():
                        self._cookies.setdefault(cookie, recorded)
        for key in removed:
            self._removed.setdefault(key, [])
        for pairs, out in ((delta.added, self._added), (delta.replaced, self._replaced)):
            for name, sent in pairs:
                value = sent.decode("latin-1")
                out[_key(name.decode("latin-1"))] = None if value == UNRECORDED else value
        for param, query_value in delta.query:
            self._query[param] = query_value

    # --- what the comparator asks --------------------------------------------------------------

    def removed(self, key: str, baseline: Any) -> str | None:
        """Why a field ``key`` that only the baseline's answer has is the proxy's doing, or None."""
        if not self._ready:
            self._index()
        if type(baseline) is not str:
            return None
        header = _key(key)
        recorded = self._removed.get(header)
        if recorded is not None and (not recorded or any(_shape(r).fullmatch(baseline) for r in recorded)):
            return _reason(header)
        cookie = self._cookies.get(key)
        if cookie is not None and _shape(cookie).fullmatch(baseline):
            return f"{REWRITE_PREFIX}{_COOKIE}"
        if key in self._query and self._query[key] is None:
            return _QUERY
        return None

    def added(self, key: str, candidate: Any) -> str | None:
        """Why a field ``key`` that only the copy's answer has is the proxy's doing, or None."""
        if not self._ready:
            self._index()
        if type(candidate) is not str:
            return None
        header = _key(key)
        if header in self._added:
            value = self._added[header]
            if value is None or value == candidate:
                return _reason(header)
        return None

    def changed(self, key: str | None, baseline: str, candidate: str) -> str | None:
        """Why two strings at field ``key`` (None: not under a key) differ by the proxy's doing, or None."""
        if not self._ready:
            self._index()
        hosts = self._hosts
        if hosts is not None and hosts[0] in baseline and baseline.replace(hosts[0], hosts[1]) == candidate:
            return _HOST
        if key is None:
            return None
        header = _key(key)
        if header in self._replaced:
            value = self._replaced[header]
            if value is None or value == candidate:
                return _reason(header)
        if key in self._query:
            value = self._query[key]
            if value is not None and value in (candidate, UNRECORDED):
                return _QUERY
        return None

    def header(self, name: str, baseline: tuple[str, ...] | None, candidate: tuple[str, ...] | None) -> str | None:
        """Why a response header differs by the proxy's doing (an echoed request header, a Location
        built from the Host), or None. ``name`` is lower-case; a side without the header is None."""
        if baseline is None and candidate is not None:
            return self.added(name, candidate[0]) if len(candidate) == 1 else None
        if candidate is None and baseline is not None:
            return self.removed(name, baseline[0]) if len(baseline) == 1 else None
        if baseline is None or candidate is None or len(baseline) != len(candidate):
            return None
        reason: str | None = None
        for a, b in zip(baseline, candidate, strict=True):
            if a == b:
                continue
            reason = self.changed(name, a, b)
            if reason is None:
                return None
        return reason

    def text(self, baseline: str, candidate: str) -> str | None:
        """Why two texts differ by the proxy's doing (an HTML redirect page naming the Host), or None."""
        if not self._ready:
            self._index()
        hosts = self._hosts
        if hosts is not None and hosts[0] in baseline and baseline.replace(hosts[0], hosts[1]) == candidate:
            return _HOST
        return None
