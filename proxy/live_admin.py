"""The admin server's live view: ``GET /diff`` (the JSON report of the live store) and the live page.

``GET /diff?since=5m`` is the report of docs/report-schema.md of a live differ's store
(``shadowtap.proxy.live``) for a window (``since``, ``until``: a duration back from now such as
``90s``, ``5m``, ``2h``, or seconds since the epoch; ``endpoint``; ``shadow`` when several are
compared; ``examples=N`` keeps at most N examples per signature, as the page asks for one). This
module checks the query and relays the bytes: the report is built by the live analysis process
(``shadowtap.proxy.live_view``), never in the proxy's process, and the same query within a second
is answered from its cache, so pages polling every second cost at most one build a second. While
that process is away (restarting after it died, starting) ``/diff`` answers 503 saying so.
``GET /`` and ``GET /live`` serve ``live_page.html``: one self-contained page (its script and style
inline, allowed by their hashes in a strict Content-Security-Policy: nothing else loads, no
request leaves the admin server) that polls ``/diff``, ``/stats`` and ``/flags`` and throws the
kill switch with ``PUT /flags``. With ``--workers N`` the parent's ``/stats`` has the workers'
mirroring state merged in one process's shape (``shadowtap.proxy.worker_stats``): the page shows it
the same way, says how many workers there are, and names one that did not answer. The page itself
holds no data, so it is served without the token; every request it makes carries the token the
reviewer types in (kept in the tab's sessionStorage).
Everything from recorded bodies is set as text, never as markup. This module must never read or
write the store, and never touch the data path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, Final

from aiohttp import web

from shadowtap.proxy.live_view import ViewClient, ViewUnavailable

__all__ = ["LIVE_PAGE_PATHS", "LiveAdmin", "parse_when_ns"]

#: Served without the token: the page is static; what it shows comes from the guarded endpoints.
LIVE_PAGE_PATHS: Final = frozenset({"/", "/live"})
_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_when_ns(text: str, now_ns: int, name: str) -> int:
    """A window bound: a duration back from ``now_ns`` (``5m``) or seconds since the epoch."""
    match = _DURATION_RE.match(text)
    if match:
        return now_ns - int(float(match.group(1)) * _UNIT_S[match.group(2)] * 1e9)
    try:
        return int(float(text) * 1e9)
    except ValueError:
        raise ValueError(
            f"{name}: expected a duration (90s, 5m, 2h) or seconds since the epoch, not {text!r}"
        ) from None


def _page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy (the inline script and style allowed by hash)."""
    text = resources.files("shadowtap.proxy").joinpath("live_page.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.S)
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'" for body in found
        )

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return text.encode(), policy


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data) + "\n", content_type="application/json")


class LiveAdmin:
    """The live routes of one proxy's admin server, over its live stores (or why there are none)."""

    def __init__(
        self,
        databases: tuple[tuple[str, str], ...],
        view: ViewClient | None,
        why_off: str | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        """``view``: the live analysis process that builds the reports (None when live diff is off)."""
        self._databases = dict(databases) if view is not None else {}
        self._view = view
        self._why_off = why_off
        self._clock_ns = clock_ns
        self._page: tuple[bytes, str] | None = None
        self.open_paths = LIVE_PAGE_PATHS

    def register(self, app: web.Application) -> None:
        app.router.add_get("/", self._live_page)
        app.router.add_get("/live", self._live_page)
        app.router.add_get("/diff", self._diff)

    async def _live_page(self, request: web.Request) -> web.Response:
        if self._page is None:
            self._page = await asyncio.to_thread(_page)
        body, policy = self._page
        return web.Response(
            body=body,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": policy,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            },
        )

    async def _diff(self, request: web.Request) -> web.Response:
        if not self._databases:
            return _json({"error": f"live diff is off: {self._why_off or 'not configured'}"}, 404)
        query = request.query
        shadow = query.get("shadow")
        if shadow is None:
            shadow = next(iter(self._databases))
        path = self._databases.get(shadow)
        if path is None:
            return _json({"error": f"no live diff for shadow {shadow!r} (live: {', '.join(self._databases)})"}, 404)
        now_ns = self._clock_ns()
        try:
            since_ns = None if "since" not in query else parse_when_ns(query["since"], now_ns, "since")
            until_ns = None if "until" not in query else parse_when_ns(query["until"], now_ns, "until")
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        endpoint = query.get("endpoint")
        examples: int | None = None
        if "examples" in query:
            try:
                examples = int(query["examples"])
                if examples < 0:
                    raise ValueError
            except ValueError:
                return _json({"error": f"examples: expected a whole number, not {query['examples']!r}"}, 400)
        key = (shadow, query.get("since"), query.get("until"), endpoint, examples)
        assert self._view is not None
        try:
            status, body = await self._view.diff(key, shadow, since_ns, until_ns, endpoint, examples)
        except ViewUnavailable as exc:
            return _json({"error": str(exc)}, 503)
        return web.Response(status=status, body=body, content_type="application/json")
