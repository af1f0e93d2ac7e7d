"""The replay plan: tapes -> sessions -> a time-ordered stream of scheduled, rewritten requests.

Pure code over Exchanges (no I/O, no clock, no asyncio), so it is shared by the asyncio runner, the
``--workers`` processes and the Locust workers, and tested without sockets. It must never read a
tape itself (the caller passes a source), never sleep, and never hold a whole tape in memory.

What it holds in memory, and the bound:

- per session key: the previous request's recorded time and its sequence number, for at most
  ``MAX_SESSIONS`` keys (the least recently seen is forgotten: its next request, if one ever
  comes, starts the session afresh, counted in ``PlanStats.sessions_forgotten``); an exchange
  that is a session of its own is not remembered at all;
- the endpoint templater (``differ.templates``), bounded by its caps;
- clones: copies of a request wait in a heap until their offset slot comes up, bounded by the
  requests recorded within ``(clones - 1) * clone_offset_s`` times the clone count;
- nothing else: requests stream through in recorded order.

Slots are nanoseconds relative to the replay's t0. Inside a session the runner sends a request at
``max(slot, previous done + gap_ns)`` (DESIGN.md); ``gap_ns`` is the recorded think time over speed:
from the previous response's recorded end (its start when no timing was recorded) to this start.
``Scaling.max_gap_s`` caps both, after the speed factor: a stretch of the schedule with nothing to
send (two recordings a day apart) and a session's think time last at most that long.
"""

from __future__ import annotations

import fnmatch
import hashlib
import heapq
import itertools
import json
import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode

from shadowtap.differ.templates import EndpointTemplater, shape_template
from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.model import PRIMARY, Exchange, Headers
from shadowtap.wire import http1

__all__ = [
    "MAX_SESSIONS",
    "SAFE_METHODS",
    "Filters",
    "PlanOptions",
    "PlanStats",
    "PlannedRequest",
    "Rewrites",
    "Scaling",
    "SchedulePreview",
    "SessionKey",
    "check_header_name",
    "check_header_text",
    "merge_by_time",
    "plan_requests",
    "preview_schedule",
    "session_shard",
]

#: Methods replayed by default (RFC 9110 safe methods); anything else may change state on the target
#: (``--allow-writes``).
SAFE_METHODS: Final = http1.SAFE_METHODS

# Hop-by-hop, framing and routing fields, and Expect: the client sets them for the new connection
# and body (``http1.REGENERATED``).
_DROPPED_HEADERS: Final = http1.REGENERATED
_SESSION_KINDS: Final = ("auto", "recorded", "connection", "client", "header", "cookie", "query", "none")
_CLONE_FIELD_KINDS: Final = ("header", "cookie", "query", "json")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: RFC 9110 token characters: all a header name may hold.
_TOKEN_RE: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_NS_PER_S: Final = 1_000_000_000
#: Session keys whose last request the plan remembers (about 200 bytes each: 20 MB at most).
MAX_SESSIONS: Final = 100_000


def _stable_hash(text: str) -> int:
    # blake2b, not hash(): the same key must land on the same shard in every process and machine.
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big")


def session_shard(session: str, count: int) -> int:
    """The worker index (0..count-1) that replays ``session``; stable across processes and hosts."""
    return _stable_hash(session) % count


def _cookie_value(headers: Headers, name: str) -> str | None:
    for key, value in headers:
        if key.lower() != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            cname, sep, cvalue = part.strip().partition("=")
            if sep and cname == name:
                return cvalue
    return None


@dataclass(frozen=True, slots=True)
class SessionKey:
    """How exchanges are grouped into sessions.

    ``auto``: the recorded session, else the connection id, else the client address, else each
    exchange alone. ``header:NAME``, ``cookie:NAME``, ``query:NAME`` read a value from the request;
    ``recorded``, ``connection``, ``client`` read the Exchange fields; ``none`` makes every exchange
    its own session. An exchange without a value for the key is its own session.
    """

    kind: str = "auto"
    name: str = ""

    def __reduce__(self) -> tuple[type[SessionKey], tuple[Any, ...]]:
        # Pickled by its constructor (a --workers process gets it): compiled, a frozen dataclass
        # cannot be restored field by field.
        return SessionKey, tuple(getattr(self, f.name) for f in fields(self))

    def __post_init__(self) -> None:
        if self.kind not in _SESSION_KINDS:
            raise ConfigError(
                f"unknown session key kind {self.kind!r} (one of {', '.join(_SESSION_KINDS)})", field="session-key"
            )
        if self.kind in ("header", "cookie", "query") and not self.name:
            raise ConfigError(f"session key {self.kind!r} needs a name ({self.kind}:NAME)", field="session-key")

    @classmethod
    def parse(cls, spec: str) -> SessionKey:
        kind, _, name = spec.partition(":")
        return cls(kind.strip().lower(), name.strip())

    def of(self, ex: Exchange) -> str:
        """The session key of ``ex`` (never empty)."""
        value: str | None = None
        if self.kind == "auto":
            value = ex.session or ex.connection_id or ex.client_addr
        elif self.kind == "recorded":
            value = ex.session
        elif self.kind == "connection":
            value = ex.connection_id
        elif self.kind == "client":
            value = ex.client_addr
        elif self.kind == "header":
            raw = ex.request.header(self.name.encode("latin-1"))
            value = None if raw is None else raw.decode("latin-1")
        elif self.kind == "cookie":
            value = _cookie_value(ex.request.headers, self.name)
        elif self.kind == "query":
            value = next((v for k, v in ex.request.query_params() if k == self.name), None)
        return f"{self.kind}={value}" if value else f"exchange={ex.id}"


@dataclass(frozen=True, slots=True)
class Filters:
    """Which recorded exchanges are replayed. Empty collections mean "all".

    ``since_s``/``until_s`` are seconds from the first exchange in the (merged) tape;
    ``endpoints`` are shell-style globs over ``METHOD /path`` or ``/path``; ``sample_percent`` keeps
    whole sessions, chosen by a stable hash of the session key.
    """

    methods: frozenset[str] = frozenset()
    path_regex: str | None = None
    endpoints: tuple[str, ...] = ()
    since_s: float | None = None
    until_s: float | None = None
    sample_percent: float = 100.0
    allow_writes: bool = False

    def __reduce__(self) -> tuple[type[Filters], tuple[Any, ...]]:
        # Pickled by its constructor (a --workers process gets it): compiled, a frozen dataclass
        # cannot be restored field by field.
        return Filters, tuple(getattr(self, f.name) for f in fields(self))

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_percent <= 100.0:
            raise ConfigError(f"must be within 0..100, got {self.sample_percent}", field="sample-percent")
        if self.path_regex is not None:
            _compile(self.path_regex, "path-regex")
        if self.since_s is not None and self.until_s is not None and self.until_s < self.since_s:
            raise ConfigError("the window ends before it starts", field="until")
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))


@dataclass(frozen=True, slots=True)
class Rewrites:
    """How a recorded request is changed before it is sent.

    ``set_headers`` values and ``host`` may hold ``${VAR}``, taken from the environment when the
    plan is built (fresh credentials instead of the tape's redacted ones). ``path_subs`` are
    ``(regex, replacement)`` applied in order to the request target (path and query).
    ``clone_id_fields`` (``header:NAME``, ``cookie:NAME``, ``query:NAME``, ``json:a.b.c``) are
    rewritten in clones 1..N-1 with ``clone_id_template`` (``{value}``, ``{clone}``, ``{iteration}``)
    so cloned sessions do not collide; clone 0 is sent as recorded.
    """

    host: str | None = None
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    path_subs: tuple[tuple[str, str], ...] = ()
    clone_id_fields: tuple[str, ...] = ()
    clone_id_template: str = "{value}-{clone}"

    def __reduce__(self) -> tuple[type[Rewrites], tuple[Any, ...]]:
        # Pickled by its constructor (a --workers process gets it): compiled, a frozen dataclass
        # cannot be restored field by field.
        return Rewrites, tuple(getattr(self, f.name) for f in fields(self))

    def __post_init__(self) -> None:
        for pattern, _ in self.path_subs:
            _compile(pattern, "rewrite-path")
        for spec in self.clone_id_fields:
            kind, sep, name = spec.partition(":")
            if not sep or kind not in _CLONE_FIELD_KINDS or not name:
                raise ConfigError(
                    f"{spec!r} is not KIND:NAME with KIND one of {', '.join(_CLONE_FIELD_KINDS)}", field="clone-id"
                )
        try:
            self.clone_id_template.format(value="v", clone=1, iteration=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"bad template {self.clone_id_template!r}: use {{value}}, {{clone}}, {{iteration}}",
                field="clone-id-template",
            ) from exc
        for name, _ in self.set_headers:
            if not name or ":" in name:
                raise ConfigError(f"bad header name {name!r}", field="header")


@dataclass(frozen=True, slots=True)
class Scaling:
    """How the recorded schedule is stretched, squeezed and multiplied.

    ``speed``: 2.0 replays twice as fast; 0 sends as fast as possible (order inside a session is
    still kept). ``rate_per_s``: fixed arrivals per second in recorded order, instead of the recorded
    timing. ``clones``: copies of every session, clone c starting ``c * clone_offset_s`` later.
    ``duration_s``: stop planning at that offset; ``loop``: replay the tape again until the duration.
    ``ramp_s``: the arrival rate grows linearly from zero to full over the first ``ramp_s`` seconds.
    ``max_gap_s``: no recorded gap lasts longer than this in the replay (measured after ``speed``):
    longer stretches with nothing to send are cut to it, and so is a session's think time.
    """

    speed: float = 1.0
    rate_per_s: float | None = None
    clones: int = 1
    clone_offset_s: float = 0.5
    duration_s: float | None = None
    loop: bool = False
    ramp_s: float = 0.0
    max_gap_s: float | None = None

    def __reduce__(self) -> tuple[type[Scaling], tuple[Any, ...]]:
        # Pickled by its constructor (a --workers process gets it): compiled, a frozen dataclass
        # cannot be restored field by field.
        return Scaling, tuple(getattr(self, f.name) for f in fields(self))

    def __post_init__(self) -> None:
        if not (self.speed >= 0.0 and math.isfinite(self.speed)):
            raise ConfigError(f"must be a finite number >= 0, got {self.speed}", field="speed")
        if self.rate_per_s is not None and not (self.rate_per_s > 0.0 and math.isfinite(self.rate_per_s)):
            raise ConfigError(f"must be > 0, got {self.rate_per_s}", field="rate")
        if self.clones < 1:
            raise ConfigError(f"must be >= 1, got {self.clones}", field="clones")
        if self.clone_offset_s < 0.0:
            raise ConfigError(f"must be >= 0, got {self.clone_offset_s}", field="clone-offset")
        if self.duration_s is not None and self.duration_s <= 0.0:
            raise ConfigError(f"must be > 0, got {self.duration_s}", field="duration")
        if self.loop and self.duration_s is None:
            raise ConfigError("--loop needs --duration (an endless replay is never the default)", field="loop")
        if self.ramp_s < 0.0:
            raise ConfigError(f"must be >= 0, got {self.ramp_s}", field="ramp")
        if self.loop and self.speed == 0.0 and self.rate_per_s is None:
            raise ConfigError("--loop with --speed 0 has no schedule to end at --duration; use --rate", field="loop")
        if self.max_gap_s is not None:
            if not self.max_gap_s > 0.0:
                raise ConfigError(f"must be > 0, got {self.max_gap_s}", field="max-gap")
            if self.rate_per_s is not None:
                raise ConfigError("a replay at a fixed --rate has no recorded gaps to cap", field="max-gap")
            if self.speed == 0.0:
                raise ConfigError("a replay at --speed 0 has no recorded gaps to cap", field="max-gap")


@dataclass(frozen=True, slots=True)
class PlanOptions:
    """Everything the plan needs. ``shard`` = (index, count) keeps only that worker's sessions."""

    session_key: SessionKey = field(default_factory=SessionKey)
    filters: Filters = field(default_factory=Filters)
    rewrites: Rewrites = field(default_factory=Rewrites)
    scaling: Scaling = field(default_factory=Scaling)
    shard: tuple[int, int] | None = None

    def __reduce__(self) -> tuple[type[PlanOptions], tuple[Any, ...]]:
        # Pickled by its constructor (a --workers process gets it): compiled, a frozen dataclass
        # cannot be restored field by field.
        return PlanOptions, tuple(getattr(self, f.name) for f in fields(self))

    def __post_init__(self) -> None:
        if self.shard is not None:
            index, count = self.shard
            if count < 1 or not 0 <= index < count:
                raise ConfigError(f"shard {index} of {count} is out of range", field="workers")


@dataclass(slots=True)
class PlanStats:
    """What the plan read and why it left exchanges out (filled while the plan streams)."""

    read: int = 0
    planned: int = 0
    skipped_unsafe_method: int = 0
    skipped_filter: int = 0
    skipped_window: int = 0
    skipped_sample: int = 0
    skipped_other_shard: int = 0
    iterations: int = 0
    sessions_forgotten: int = 0

    def as_dict(self) -> dict[str, int]:
        # From the fields: compiled (mypyc), the class has no ``__slots__`` to walk.
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Not frozen, though never changed: compiled (mypyc), a frozen dataclass is built field by field in
# Python (1.3 us for this one, against 0.2), and one is built for every request.
@dataclass(slots=True)
class PlannedRequest:
    """One request to send: when (``slot_ns`` after t0), in which session and order, and what."""

    slot_ns: int
    gap_ns: int
    session: str
    seq: int
    clone: int
    iteration: int
    method: str
    target: str
    headers: Headers
    body: bytes
    endpoint: str
    source: Exchange

    @property
    def replay_id(self) -> str:
        """The id of this request in a results tape: unique across clones and loop iterations."""
        if self.clone == 0 and self.iteration == 0:
            return self.source.id
        return f"{self.source.id}~c{self.clone}i{self.iteration}"


def merge_by_time(sources: Iterable[Iterable[Exchange]]) -> Iterator[Exchange]:
    """Merge several time-ordered exchange streams into one, by wall-clock start (streaming)."""
    return heapq.merge(*sources, key=lambda ex: ex.started_at_ns)


def _compile(pattern: str, field_name: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"regular expression {pattern!r} does not compile: {exc}", field=field_name) from exc


def check_header_name(name: str, field: str) -> None:
    """Refuse a header name that is not an RFC 9110 token (it would not parse, or split the head)."""
    if not _TOKEN_RE.match(name):
        raise ConfigError(f"not a valid header name: {name!r}", field=field)


def _bad_header_char(text: str, latin1: bool) -> int | None:
    """Where ``text`` holds what would split a request head (CR, LF, other controls) or, with
    ``latin1``, not encode in it; None when it may go into one."""
    for index, char in enumerate(text):
        if (char < " " and char != "\t") or char == "\x7f" or (latin1 and char > "\xff"):
            return index
    return None


def check_header_text(text: str, field: str, *, latin1: bool = True) -> None:
    """Refuse header text (a value, a Host) that would split the request head or not encode in it."""
    index = _bad_header_char(text, latin1)
    if index is not None:
        raise ConfigError(
            f"must not contain control characters or characters beyond Latin-1 ({text[index]!r} at {index}): {text!r}",
            field=field,
        )


def _expand_env(text: str, environ: Mapping[str, str], field_name: str) -> str:
    """``${VAR}`` from ``environ``; each value checked as header text (it goes into the request head)."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(f"environment variable {name} is not set", field=field_name)
        value = environ[name]
        index = _bad_header_char(value, latin1=True)
        if index is not None:
            # Named, never shown: the value is usually a credential.
            raise ConfigError(
                f"environment variable {name} holds a control character or a character beyond Latin-1 "
                f"(at {index} of its value), which cannot go into a request head",
                field=field_name,
            )
        return value

    return _ENV_REF.sub(sub, text)


class _CompiledRewrites:
    """Rewrites with regexes compiled and environment values resolved once, at plan start."""

    __slots__ = ("clone_fields", "host", "path_subs", "remove", "set_headers", "template")

    def __init__(self, rewrites: Rewrites, environ: Mapping[str, str]) -> None:
        self.path_subs = [(_compile(p, "rewrite-path"), r) for p, r in rewrites.path_subs]
        self.remove = frozenset(n.lower().encode("latin-1") for n in rewrites.remove_headers)
        self.set_headers = [
            (n.encode("latin-1"), _expand_env(v, environ, f"header {n}").encode("latin-1"))
            for n, v in rewrites.set_headers
        ]
        self.host = None if rewrites.host is None else _expand_env(rewrites.host, environ, "host").encode("latin-1")
        self.clone_fields = [tuple(spec.split(":", 1)) for spec in rewrites.clone_id_fields]
        self.template = rewrites.clone_id_template

    def apply(self, ex: Exchange, clone: int, iteration: int) -> tuple[str, Headers, bytes]:
        target = ex.request.target
        for pattern, replacement in self.path_subs:
            target = pattern.sub(replacement, target)
        set_names = {n.lower() for n, _ in self.set_headers}
        headers = [
            (k, v)
            for k, v in ex.request.headers
            if (lk := k.lower()) not in _DROPPED_HEADERS and lk not in self.remove and lk not in set_names
        ]
        if self.host is not None:
            headers.insert(0, (b"Host", self.host))
        headers.extend(self.set_headers)
        body = ex.request.body
        if clone > 0 and self.clone_fields:
            target, headers, body = self._rewrite_ids(target, headers, body, clone, iteration)
        return target, tuple(headers), body

    def _new_id(self, value: str, clone: int, iteration: int) -> str:
        return self.template.format(value=value, clone=clone, iteration=iteration)

    def _rewrite_ids(
        self, target: str, headers: list[tuple[bytes, bytes]], body: bytes, clone: int, iteration: int
    ) -> tuple[str, list[tuple[bytes, bytes]], bytes]:
        for kind, name in self.clone_fields:
            if kind == "header":
                wanted = name.lower().encode("latin-1")
                headers = [
                    (k, self._new_id(v.decode("latin-1"), clone, iteration).encode("latin-1"))
                    if k.lower() == wanted
                    else (k, v)
                    for k, v in headers
                ]
            elif kind == "cookie":
                headers = [
                    (k, self._rewrite_cookie(v, name, clone, iteration)) if k.lower() == b"cookie" else (k, v)
                    for k, v in headers
                ]
            elif kind == "query":
                path, sep, query = target.partition("?")
                if sep:
                    pairs = [
                        (k, self._new_id(v, clone, iteration) if k == name else v)
                        for k, v in parse_qsl(query, keep_blank_values=True)
                    ]
                    target = f"{path}?{urlencode(pairs, quote_via=quote, safe='/:')}"
            else:
                body = self._rewrite_json(body, name.split("."), clone, iteration)
        return target, headers, body

    def _rewrite_cookie(self, value: bytes, name: str, clone: int, iteration: int) -> bytes:
        parts = []
        for part in value.decode("latin-1").split(";"):
            cname, sep, cvalue = part.strip().partition("=")
            parts.append(f"{cname}={self._new_id(cvalue, clone, iteration)}" if sep and cname == name else part.strip())
        return "; ".join(parts).encode("latin-1")

    def _rewrite_json(self, body: bytes, path: list[str], clone: int, iteration: int) -> bytes:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body  # not JSON: nothing to rewrite, the body goes out as recorded
        node: Any = doc
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        leaf = path[-1]
        if not isinstance(node, dict) or leaf not in node:
            return body
        old = node[leaf]
        new = self._new_id(str(old), clone, iteration)
        # Keep numbers numeric when the template produced a number, so the target's schema holds.
        node[leaf] = int(new) if isinstance(old, int) and new.lstrip("-").isdigit() else new
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")


class _Ramp:
    """Maps full-rate schedule time to ramped time: the rate grows linearly over ``ramp_ns``.

    With rate factor r(T) = T / ramp for T < ramp, full-rate time t = T^2 / (2 ramp), so
    T = sqrt(2 ramp t) until t = ramp / 2, and T = t + ramp / 2 after.
    """

    __slots__ = ("ramp_ns",)

    def __init__(self, ramp_s: float) -> None:
        self.ramp_ns = ramp_s * _NS_PER_S

    def __call__(self, t_ns: int) -> int:
        if self.ramp_ns <= 0:
            return t_ns
        if t_ns < self.ramp_ns / 2:
            return int(math.sqrt(2.0 * self.ramp_ns * t_ns))
        return int(t_ns + self.ramp_ns / 2)


def plan_requests(
    source: Callable[[], Iterable[Exchange]],
    options: PlanOptions,
    stats: PlanStats | None = None,
    environ: Mapping[str, str] | None = None,
    templater: EndpointTemplater | None = None,
    *,
    max_sessions: int = MAX_SESSIONS,
) -> Iterator[PlannedRequest]:
    """Stream the planned requests in slot order.

    ``source`` returns a fresh, time-ordered iterable of exchanges each time it is called (it is
    called once per loop iteration). Configuration errors (a regex that does not compile, a missing
    environment variable) raise ``ConfigError`` when the generator is created, before any request.
    ``templater`` learns endpoint templates from every planned request (each request's
    ``endpoint`` is its template when planned; the stats that share it fold later ones); without
    one, a plan of its own learns. ``max_sessions`` bounds the session keys remembered (module
    docstring).
    """
    rewrites = _CompiledRewrites(options.rewrites, os.environ if environ is None else environ)
    learner = templater if templater is not None else EndpointTemplater()
    return _plan(source, options, rewrites, stats if stats is not None else PlanStats(), learner, max_sessions)


def _plan(
    source: Callable[[], Iterable[Exchange]],
    options: PlanOptions,
    rewrites: _CompiledRewrites,
    stats: PlanStats,
    templater: EndpointTemplater | None,
    max_sessions: int = MAX_SESSIONS,
) -> Iterator[PlannedRequest]:
    scaling = options.scaling
    ramp = _Ramp(scaling.ramp_s)
    duration_ns = None if scaling.duration_s is None else int(scaling.duration_s * _NS_PER_S)
    clone_offset_ns = int(scaling.clone_offset_s * _NS_PER_S)
    recorded_timing = scaling.rate_per_s is None and scaling.speed > 0.0
    shard = options.shard

    def mine(planned: PlannedRequest) -> bool:
        if shard is None or session_shard(planned.session, shard[1]) == shard[0]:
            stats.planned += 1
            return True
        stats.skipped_other_shard += 1
        return False

    def within(slot_ns: int) -> bool:
        return duration_ns is None or slot_ns < duration_ns

    iteration_offset_ns = 0
    rate_index = 0
    iteration = 0

    def slot_of(clone: int, recorded_ns: int) -> int:
        """The slot of ``clone`` of a request recorded ``recorded_ns`` into its pass."""
        nonlocal rate_index
        if scaling.rate_per_s is not None:
            slot = ramp(int(rate_index * _NS_PER_S / scaling.rate_per_s))
            rate_index += 1
            return slot
        if not recorded_timing:
            return 0
        return ramp(iteration_offset_ns + recorded_ns + clone * clone_offset_ns)

    while True:
        stats.iterations = iteration + 1
        # Clone copies waiting for their (later) slot, ordered by slot then arrival (a unique
        # counter, so two copies due at the same nanosecond never compare as requests).
        pending: list[tuple[int, int, PlannedRequest]] = []
        arrival = itertools.count()
        last_base_ns = -1
        base_count = 0
        stream = _base_stream(source(), options, rewrites, stats, iteration, templater, max_sessions, slot_of)
        for base, recorded_ns, ex, session in stream:
            base_count += 1
            last_base_ns = recorded_ns
            for clone in range(scaling.clones):
                if clone == 0:
                    planned = base  # built with its slot: one object a request
                else:
                    planned = _clone(base, ex, session, clone, iteration, rewrites, slot_of(clone, recorded_ns))
                slot = planned.slot_ns
                if not within(slot):
                    if clone == 0 or not recorded_timing:
                        # Slots only grow from here: finish the clones still due, then stop.
                        while pending:
                            late = heapq.heappop(pending)[2]
                            if within(late.slot_ns) and mine(late):
                                yield late
                        return
                    continue
                if clone > 0 and recorded_timing:
                    heapq.heappush(pending, (slot, next(arrival), planned))
                    continue
                while pending and pending[0][0] <= slot:
                    waiting = heapq.heappop(pending)[2]
                    if mine(waiting):
                        yield waiting
                if mine(planned):
                    yield planned
        while pending:
            waiting = heapq.heappop(pending)[2]
            if mine(waiting):
                yield waiting
        if not scaling.loop or base_count == 0:
            return
        iteration += 1
        if recorded_timing:
            # The next pass starts one mean inter-arrival after this pass's last recorded request.
            mean_gap_ns = max(1, last_base_ns // max(1, base_count - 1))
            iteration_offset_ns += last_base_ns + mean_gap_ns


@dataclass(frozen=True, slots=True)
class SchedulePreview:
    """The shape of a plan's schedule, known before it starts: how many requests, over how long,
    and its longest stretch with nothing to send (``longest_gap_at_ns``: when it begins)."""

    requests: int = 0
    span_ns: int = 0
    longest_gap_ns: int = 0
    longest_gap_at_ns: int = 0


def preview_schedule(
    source: Callable[[], Iterable[Exchange]], options: PlanOptions, environ: Mapping[str, str] | None = None
) -> SchedulePreview:
    """Walk the plan ``options`` describe once (every shard's requests, one pass of ``--loop``) and
    say how long it runs and where it idles. It reads the tapes once more: the plan streams, so its
    span is known only at its end."""
    whole = replace(options, shard=None, scaling=replace(options.scaling, loop=False))
    requests = span_ns = longest_ns = longest_at_ns = 0
    latest_ns: int | None = None
    rewrites = _CompiledRewrites(whole.rewrites, os.environ if environ is None else environ)
    # No templater: the preview needs no endpoints, and learning would cost a walk per request.
    for planned in _plan(source, whole, rewrites, PlanStats(), None):
        requests += 1
        slot_ns = planned.slot_ns
        if latest_ns is not None and slot_ns - latest_ns > longest_ns:
            longest_ns, longest_at_ns = slot_ns - latest_ns, latest_ns
        latest_ns = slot_ns if latest_ns is None else max(latest_ns, slot_ns)
        span_ns = max(span_ns, slot_ns)
    return SchedulePreview(requests, span_ns, longest_ns, longest_at_ns)


def _clone(
    base: PlannedRequest,
    ex: Exchange,
    session: str,
    clone: int,
    iteration: int,
    rewrites: _CompiledRewrites,
    slot_ns: int,
) -> PlannedRequest:
    target, headers, body = rewrites.apply(ex, clone, iteration)
    return replace(
        base,
        slot_ns=slot_ns,
        session=f"{session}#c{clone}i{iteration}",
        clone=clone,
        target=target,
        headers=headers,
        body=body,
    )


def _base_stream(
    exchanges: Iterable[Exchange],
    options: PlanOptions,
    rewrites: _CompiledRewrites,
    stats: PlanStats,
    iteration: int,
    templater: EndpointTemplater | None,
    max_sessions: int,
    slot_of: Callable[[int, int], int],
) -> Iterator[tuple[PlannedRequest, int, Exchange, str]]:
    """Clone 0 of every kept exchange with its slot (``slot_of(0, recorded)``), and its recorded-time
    slot (speed applied, no offset)."""
    filters = options.filters
    speed = options.scaling.speed
    max_gap_s = options.scaling.max_gap_s
    max_gap_ns = None if max_gap_s is None else int(max_gap_s * _NS_PER_S)
    # Replay time cut out of gaps longer than max_gap_ns so far, and the latest uncut time.
    cut_ns = 0
    latest_ns: int | None = None
    path_re = None if filters.path_regex is None else re.compile(filters.path_regex)
    sample_bound = int(filters.sample_percent / 100.0 * 2**64)
    tape_start_ns: int | None = None
    first_kept_ns: int | None = None
    # Per session key: previous recorded end (or start) and the next sequence number, least
    # recently seen first (module doc).
    sessions: OrderedDict[str, tuple[int, int]] = OrderedDict()
    for ex in exchanges:
        stats.read += 1
        if tape_start_ns is None:
            tape_start_ns = ex.started_at_ns
        offset_s = (ex.started_at_ns - tape_start_ns) / _NS_PER_S
        if (filters.since_s is not None and offset_s < filters.since_s) or (
            filters.until_s is not None and offset_s >= filters.until_s
        ):
            stats.skipped_window += 1
            continue
        req = ex.request
        # Request.path, inline: a property of an interpreted class is a Python frame per request.
        path = req.target.split("?", 1)[0]
        method = req.method.upper()
        if not filters.allow_writes and method not in SAFE_METHODS:
            stats.skipped_unsafe_method += 1
            continue
        if (filters.methods and method not in filters.methods) or (path_re is not None and not path_re.search(path)):
            stats.skipped_filter += 1
            continue
        # Filters match the template by shape alone: a learned one would change their meaning mid-run.
        if filters.endpoints:
            shape = shape_template(method, path)
            if not any(
                fnmatch.fnmatchcase(shape, pattern) or fnmatch.fnmatchcase(path, pattern)
                for pattern in filters.endpoints
            ):
                stats.skipped_filter += 1
                continue
        key = options.session_key.of(ex)
        if sample_bound < 2**64 and _stable_hash(key) >= sample_bound:
            stats.skipped_sample += 1
            continue
        if first_kept_ns is None:
            first_kept_ns = ex.started_at_ns
        previous = sessions.pop(key, None)
        seq = 0 if previous is None else previous[1]
        gap_ns = 0
        if previous is not None and speed > 0.0 and options.scaling.rate_per_s is None:
            gap_ns = max(0, int((ex.started_at_ns - previous[0]) / speed))
            if max_gap_ns is not None:
                gap_ns = min(gap_ns, max_gap_ns)
        # The gap is think time: from the previous response's end (when recorded) to this start,
        # so a slow replayed response delays the session once, not once per later request.
        timing = ex.timings.get(PRIMARY)
        done_ns = None if timing is None else timing.done_ns
        if not key.startswith("exchange="):  # a session of one exchange has no next request
            sessions[key] = (ex.started_at_ns + (done_ns or 0), seq + 1)
            if len(sessions) > max_sessions:
                sessions.popitem(last=False)
                stats.sessions_forgotten += 1
        slot_ns = 0 if speed == 0.0 else int((ex.started_at_ns - first_kept_ns) / speed)
        if max_gap_ns is not None:
            if latest_ns is not None and slot_ns - latest_ns > max_gap_ns:
                cut_ns += slot_ns - latest_ns - max_gap_ns
            # The latest, not the last: a request recorded out of order opens no gap.
            latest_ns = slot_ns if latest_ns is None else max(latest_ns, slot_ns)
            slot_ns -= cut_ns
        endpoint = shape_template(method, path) if templater is None else templater.observe_template(method, path)
        target, headers, body = rewrites.apply(ex, 0, iteration)
        session = key if iteration == 0 else f"{key}#c0i{iteration}"
        planned = PlannedRequest(
            slot_of(0, slot_ns), gap_ns, session, seq, 0, iteration, method, target, headers, body, endpoint, ex
        )
        yield planned, slot_ns, ex, key
