"""Endpoint templates: ``GET /users/123`` becomes ``GET /users/{id}``, so counts group by endpoint.

User route patterns from the config win (first match). Otherwise a segment is an id when its shape
says so (digits, UUID, hex, long random tokens) or when, under the same templated prefix, more than
``max_literal_children`` distinct values were seen at that position. This module must never look at
responses; it learns from request paths only, and its memory is bounded per position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

from shadowtap.recorder.errors import ConfigError

__all__ = ["ID", "EndpointTemplater", "segment_is_id"]

ID: Final = "{id}"

_DIGITS: Final = re.compile(r"\d+\Z")
_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\Z")
_HEX: Final = re.compile(r"(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\Z")
_TOKEN: Final = re.compile(r"(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{16,}\Z")
_PLACEHOLDER: Final = re.compile(r"\{[^{}/]*\}\Z")


def segment_is_id(segment: str) -> bool:
    """Whether one path segment looks like an identifier by its shape alone."""
    return bool(_DIGITS.match(segment) or _UUID.match(segment) or _HEX.match(segment) or _TOKEN.match(segment))


class _Route:
    __slots__ = ("method", "path", "segments")

    def __init__(self, spec: str) -> None:
        method, _, path = spec.strip().rpartition(" ")
        self.method = method.strip().upper() or "*"
        if not path.startswith("/"):
            raise ConfigError(f"route {spec!r} must start with '/'", field="diff.routes")
        self.path = path
        self.segments: tuple[str | None, ...] = tuple(None if _PLACEHOLDER.match(s) else s for s in path.split("/")[1:])

    def matches(self, method: str, segments: Sequence[str]) -> bool:
        if self.method != "*" and self.method != method:
            return False
        if len(segments) != len(self.segments):
            return False
        return all(want is None or want == got for want, got in zip(self.segments, segments, strict=True))


class EndpointTemplater:
    """Learns endpoint templates from observed (method, path) pairs; ``template`` gives the current view."""

    __slots__ = ("_max_children", "_routes", "_seen")

    def __init__(self, routes: Iterable[str] = (), *, max_literal_children: int = 20) -> None:
        self._routes = tuple(_Route(r) for r in routes)
        self._max_children = max_literal_children
        # (method, templated prefix) -> distinct literal segments seen next; capped at max + 1, the
        # point where the position is known to be an id, so memory stays bounded per position.
        self._seen: dict[tuple[str, tuple[str, ...]], set[str]] = {}

    @staticmethod
    def _segments(path: str) -> list[str]:
        return path.split("?", 1)[0].split("/")[1:] if path.startswith("/") else [path]

    def _route(self, method: str, segments: Sequence[str]) -> _Route | None:
        for route in self._routes:
            if route.matches(method, segments):
                return route
        return None

    def observe(self, method: str, path: str) -> None:
        segments = self._segments(path)
        if self._route(method, segments) is not None:
            return
        prefix: tuple[str, ...] = ()
        limit = self._max_children
        for segment in segments:
            if segment_is_id(segment):
                prefix = (*prefix, ID)
                continue
            seen = self._seen.setdefault((method, prefix), set())
            if len(seen) <= limit:
                seen.add(segment)
            prefix = (*prefix, ID if len(seen) > limit else segment)

    def template(self, method: str, path: str) -> str:
        """``METHOD /templated/path`` for one request."""
        segments = self._segments(path)
        route = self._route(method, segments)
        if route is not None:
            return f"{method} {route.path}"
        prefix: tuple[str, ...] = ()
        limit = self._max_children
        for segment in segments:
            if segment_is_id(segment):
                prefix = (*prefix, ID)
                continue
            seen = self._seen.get((method, prefix))
            prefix = (*prefix, ID if seen is not None and len(seen) > limit else segment)
        return f"{method} /" + "/".join(prefix)

    def learn(self, requests: Sequence[tuple[str, str]]) -> None:
        """Observe every request twice: the second pass counts deeper positions under prefixes that
        the first pass found to be ids, so the result does not depend on the order seen."""
        for method, path in requests:
            self.observe(method, path)
        for method, path in requests:
            self.observe(method, path)
