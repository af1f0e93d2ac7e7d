"""Per-route mirroring rules: which requests a route matches and what it changes for them.

A rule matches by method and path pattern (``/api/orders/*``: ``*`` is one path segment or part
of one, ``**`` any number of segments); the first matching rule wins. A rule can turn mirroring
off for its route, opt unsafe methods in (``mirror_methods: [POST]``), set its own sample percent
and limit which shadows get its traffic. Pure code: it must never do I/O, and it must never let a
request reach a shadow that no rule and no default allowed.

gRPC calls are all POSTs, so none is mirrored by default: a route with a ``grpc`` pattern
(``/shop.Catalog/GetProduct``, ``/shop.Catalog/*``, ``/shop.*/*``, ``/**``) matches gRPC calls
(HTTP/2 requests with ``content-type: application/grpc*``) by their ``/package.Service/Method`` path and
opts them in (POST is mirrored on it unless ``mirror_methods`` says otherwise). A ``grpc`` route
never matches anything but gRPC calls; path routes match gRPC calls too, by their path, and mirror
them only where ``mirror_methods`` names POST.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from shadowtap.recorder.errors import ConfigError
from shadowtap.wire import http1

__all__ = [
    "DEFAULT_MIRROR_METHODS",
    "DEFAULT_RULE",
    "GRPC_MIRROR_METHODS",
    "RouteRule",
    "RouteTable",
    "compile_grpc_pattern",
    "compile_path_pattern",
    "parse_methods",
]

#: Mirrored unless a route opts others in: the RFC 9110 safe methods but TRACE, which echoes the
#: request back (headers included) and is never worth mirroring.
DEFAULT_MIRROR_METHODS: Final = http1.SAFE_METHODS - {"TRACE"}
#: Mirrored on a ``grpc`` route unless it names others: every gRPC call is a POST.
GRPC_MIRROR_METHODS: Final = frozenset({"POST"})
_TOKEN_RE: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: ``/package.Service/Method`` with globs: two segments (or ``**`` across them).
_GRPC_PATTERN_RE: Final = re.compile(r"^/[A-Za-z0-9_.*]+/[A-Za-z0-9_*]+$|^/(?:[A-Za-z0-9_.*]+/)?\*\*$")


def compile_path_pattern(pattern: str, *, field: str) -> re.Pattern[str]:
    """Glob to regex: ``**`` crosses ``/``, ``*`` stays within one segment, the rest is literal."""
    if not pattern.startswith("/"):
        raise ConfigError(f"path pattern must start with '/', not {pattern!r}", field=field)
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z")


def compile_grpc_pattern(pattern: str, *, field: str) -> re.Pattern[str]:
    """A gRPC method pattern (``/shop.Catalog/GetProduct``, ``/shop.Catalog/*``, ``/shop.*/*``,
    ``/**``) to regex, by the path glob rules."""
    if not _GRPC_PATTERN_RE.match(pattern):
        raise ConfigError(
            f"a gRPC method pattern is /package.Service/Method (globs: *, **), not {pattern!r}", field=field
        )
    return compile_path_pattern(pattern, field=field)


def parse_methods(value: Any, *, field: str) -> frozenset[str]:
    """A list of HTTP method names (upper-cased), validated as tokens."""
    if isinstance(value, str):
        value = [m for m in value.replace(",", " ").split() if m]
    if not isinstance(value, list | tuple | set | frozenset):
        raise ConfigError(f"expected a list of HTTP methods, not {value!r}", field=field)
    methods: set[str] = set()
    for index, method in enumerate(value):
        if not isinstance(method, str) or not _TOKEN_RE.match(method):
            raise ConfigError(f"not an HTTP method: {method!r}", field=f"{field}[{index}]")
        methods.add(method.upper())
    return frozenset(methods)


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One route. ``methods`` / ``path`` select requests (``None`` = any); the rest applies to them.

    ``mirror=False`` never mirrors the route. ``mirror_methods`` replaces the safe-method default for
    the route (the opt-in for POST and friends). ``sample_percent`` overrides the shadow's percent.
    ``shadows`` limits the route to those shadow names (``None`` = all). ``grpc`` makes it a route
    for gRPC calls (module docstring).
    """

    #: Shown in logs and stats (default: the path pattern).
    name: str
    #: Path pattern: ``*`` matches within a segment, ``**`` across segments (``None``: any path).
    path: str | None = None
    #: Methods the route applies to (``None``: any).
    methods: frozenset[str] | None = None
    #: ``false`` never mirrors requests on this route.
    mirror: bool = True
    #: Methods mirrored on this route, replacing the safe-method default (the opt-in for POST ...).
    mirror_methods: frozenset[str] | None = None
    #: Percent mirrored on this route, overriding each shadow's ``sample_percent``.
    sample_percent: float | None = None
    #: Shadow names this route mirrors to (``None``: all shadows).
    shadows: tuple[str, ...] | None = None
    #: gRPC method pattern (``/shop.Catalog/*``): the route matches gRPC calls only and mirrors them.
    grpc: str | None = None
    path_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    grpc_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.sample_percent is not None and not 0.0 <= self.sample_percent <= 100.0:
            raise ConfigError(f"must be within 0..100, not {self.sample_percent!r}", field="sample_percent")
        if self.path is not None and self.path_re is None:
            object.__setattr__(self, "path_re", compile_path_pattern(self.path, field="path"))
        if self.grpc is not None and self.grpc_re is None:
            object.__setattr__(self, "grpc_re", compile_grpc_pattern(self.grpc, field="grpc"))

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.path_re is None or self.path_re.match(path) is not None

    def matches_grpc(self, method: str, path: str) -> bool:
        """Whether the route applies to a gRPC call: its ``grpc`` pattern, or its path rules."""
        if self.methods is not None and method not in self.methods:
            return False
        if self.path_re is not None and self.path_re.match(path) is None:
            return False
        return self.grpc_re is None or self.grpc_re.match(path) is not None

    def allows_method(self, method: str) -> bool:
        allowed = self.mirror_methods
        if allowed is None:
            allowed = DEFAULT_MIRROR_METHODS if self.grpc is None else GRPC_MIRROR_METHODS
        return method in allowed

    @classmethod
    def from_mapping(cls, data: Any, *, field: str, shadow_names: Iterable[str]) -> RouteRule:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a route must be a mapping, not {data!r}", field=field)
        known = {"name", "path", "methods", "mirror", "mirror_methods", "sample_percent", "shadows", "grpc"}
        for key in data:
            if key not in known:
                raise ConfigError(f"unknown key (known: {', '.join(sorted(known))})", field=f"{field}.{key}")
        path = data.get("path")
        if path is not None and not isinstance(path, str):
            raise ConfigError(f"expected a path pattern string, not {path!r}", field=f"{field}.path")
        grpc = data.get("grpc")
        if grpc is not None and not isinstance(grpc, str):
            raise ConfigError(f"expected a gRPC method pattern string, not {grpc!r}", field=f"{field}.grpc")
        mirror = data.get("mirror", True)
        if not isinstance(mirror, bool):
            raise ConfigError(f"expected true or false, not {mirror!r}", field=f"{field}.mirror")
        percent = data.get("sample_percent")
        if percent is not None and (isinstance(percent, bool) or not isinstance(percent, int | float)):
            raise ConfigError(f"expected a number, not {percent!r}", field=f"{field}.sample_percent")
        shadows: tuple[str, ...] | None = None
        if data.get("shadows") is not None:
            raw = data["shadows"]
            if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
                raise ConfigError(f"expected a list of shadow names, not {raw!r}", field=f"{field}.shadows")
            known_shadows = set(shadow_names)
            for index, shadow in enumerate(raw):
                if shadow not in known_shadows:
                    raise ConfigError(f"no shadow named {shadow!r}", field=f"{field}.shadows[{index}]")
            shadows = tuple(raw)
        try:
            return cls(
                name=str(data.get("name", path or grpc or field)),
                path=path,
                methods=None
                if data.get("methods") is None
                else parse_methods(data["methods"], field=f"{field}.methods"),
                mirror=mirror,
                mirror_methods=None
                if data.get("mirror_methods") is None
                else parse_methods(data["mirror_methods"], field=f"{field}.mirror_methods"),
                sample_percent=None if percent is None else float(percent),
                shadows=shadows,
                grpc=grpc,
            )
        except ConfigError as exc:
            if exc.field is not None and not exc.field.startswith(field):
                raise ConfigError(f"{exc.message}", field=f"{field}.{exc.field}") from exc
            raise


#: The rule for requests no route matched: mirror safe methods at the shadow's own percent.
DEFAULT_RULE: Final = RouteRule(name="default")


class RouteTable:
    """Ordered rules; ``match`` returns the first that matches, else the default rule. ``rules``
    holds the routes for any request (``grpc`` routes left out: they never match one that is not a
    gRPC call), ``grpc_rules`` every route, for gRPC calls (``match_grpc``)."""

    __slots__ = ("grpc_rules", "rules")

    def __init__(self, rules: Sequence[RouteRule]) -> None:
        self.grpc_rules = tuple(rules)
        self.rules = tuple(rule for rule in rules if rule.grpc is None)

    def match_grpc(self, method: str, target: str) -> RouteRule:
        """The first route for a gRPC call to ``target`` (``/package.Service/Method``), else the
        default rule (which mirrors no gRPC call: they are POSTs)."""
        path = target.split("?", 1)[0]
        for rule in self.grpc_rules:
            if rule.matches_grpc(method, path):
                return rule
        return DEFAULT_RULE

    def match(self, method: str, path: str) -> RouteRule:
        for rule in self.rules:
            if rule.matches(method, path):
                return rule
        return DEFAULT_RULE

    def match_target(self, method: str, target: str) -> RouteRule:
        """``match`` for a request target (path and query). With no rules, the default rule without
        cutting the path out of the target: the mirror asks this for every request."""
        if not self.rules:
            return DEFAULT_RULE
        return self.match(method, target.split("?", 1)[0])
