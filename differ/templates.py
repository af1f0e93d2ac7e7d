"""Endpoint templates: ``GET /users/123`` becomes ``GET /users/{id}``, so counts group by endpoint.

The one template learner of shadowtap: the differ groups signatures with it, the replayer keys its
latency stats with it and the proxy may label metrics with it (so this module imports nothing but
the standard library and the error type). It learns from request paths only and must never look at
responses; every structure it keeps is bounded, whatever the number of distinct paths.

How a path is templated, segment by segment:

- user route patterns from the config win (first match);
- gRPC method paths (``/package.Service/Method``) stay literal;
- a segment shaped like an identifier is ``{id}``: digits, UUIDs, hex hashes, dates
  (``2026-12-05``, ``20261205``), long random tokens;
- otherwise the position (method, templated prefix) decides. It counts its literal values and folds
  into a parameter when they are *many and sparse*, a long tail that keeps growing with the
  traffic: at checkpoints (32, 64, 128 ... observations) it has at least ``min_distinct`` distinct
  values (id-shaped ones count as new) and their number grew by at least 70 % while the traffic
  doubled, at two checkpoints in a row; or more than ``max_values`` new values keep arriving after
  its count is full. Values repeated again and again saturate long before: a position with 22 real
  resources, each hit many times, never folds however many siblings it has. When a position folds,
  the values hit far more often than its typical one (at least ``keep_min_hits`` and four times the
  median, the busiest ``max_kept``) stay apart: ``/files/recent`` beside ``/files/{id}``. A folded
  position keeps counting its busiest values (Space-Saving, 32 slots) and its distinct values (k
  minimum values): one that was rare at the fold but has since taken 0.5 % of its traffic and four
  times the average value's, 32 hits at least (counted for certain), becomes a template of its own
  from then on: ``/users/me`` at 1 % beside a million user ids, but none of 150 slugs hit alike.
  ``settle`` does the same from a table of distinct paths with their counts.

Learning is monotone: a position, once a parameter, stays one, so re-templating an earlier template
(``retemplate``) gives the current one; stats started under a raw path merge into its template when
it folds (``generation`` says when to look). The one exception is that late promotion: requests
counted under ``{id}`` before it stay there. Learning from a table of distinct paths (a store),
pass each path's count as ``observe(..., hits=n)``: the counts are the evidence.

Bounded: at most ``max_positions`` positions, ``max_values`` counted values each; at most
``max_templates`` templates per method, past which paths go to ``METHOD {overflow}``, whose number
of distinct paths is counted exactly up to 1,024 and estimated beyond (k minimum values).
"""

from __future__ import annotations

import hashlib
import heapq
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from shadowtap.recorder.errors import ConfigError

__all__ = [
    "ID",
    "OVERFLOW",
    "DistinctCounter",
    "EndpointTemplater",
    "segment_is_id",
    "shape_template",
]

ID: Final = "{id}"
#: The path of the bucket that holds every path past the template cap (``GET {overflow}``).
OVERFLOW: Final = "{overflow}"

_ID_SHAPE: Final = re.compile(
    r"(?:"
    r"\d+"  # numbers, compact dates (20261205)
    r"|[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"  # UUIDs
    r"|(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}"  # hex hashes and ids
    r"|(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{16,}"  # long random tokens
    r"|\d{4}-\d{2}-\d{2}(?:[T_ ]?\d{2}(?::?\d{2}(?::?\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"  # dates
    r"|\{[^{}/]*\}"  # a placeholder: the segment of an earlier template
    r")\Z"
)
#: Values tracked per folded position to find one that became busy after the fold (Space-Saving).
#: With one new value in eight taking a slot, the smallest count in the table grows by about 1/256
#: of the traffic, so a value with more than that share keeps its slot once it has one.
_HEAVY_SLOTS: Final = 32
#: The share of a folded position's traffic since the fold, counted for certain (the hits since the
#: value took its slot, a lower bound), that makes a value a template of its own: ``/users/me`` at
#: 1 % of the requests beside a million user ids once a request each.
_PROMOTE_SHARE: Final = 0.005
#: ... and at least this many of them, whatever the share: a few hits are chance.
_MIN_BUSY_HITS: Final = 32
#: Hashes a folded position keeps to count its distinct values (k minimum values).
_SKETCH_K: Final = 64
#: Methods with templates of their own; requests with further methods all go to their overflow
#: bucket, counted together under ``_OTHER_METHODS``.
_MAX_METHODS: Final = 32
_OTHER_METHODS: Final = "*"
#: Segments deeper than this are templated by their shape alone: one absurdly deep path must not
#: take the whole position budget.
_MAX_DEPTH: Final = 32
_PLACEHOLDER: Final = re.compile(r"\{[^{}/]*\}\Z")
_GRPC_METHOD: Final = re.compile(r"/[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+/[A-Za-z_]\w*\Z")


def segment_is_id(segment: str) -> bool:
    """Whether one path segment looks like an identifier by its shape alone."""
    # The two commonest answers without the regular expression (a few thousand instructions a
    # call): digits only (what \d+ matches), and letters only, which every shape but a UUID needs
    # a digit or a brace to be (a UUID of hex letters alone is 32 characters at least).
    if segment.isdecimal():
        return True
    if segment.isalpha() and len(segment) < 32:
        return False
    return _ID_SHAPE.match(segment) is not None


def _path_of(path: str) -> str:
    query = path.find("?")
    return path if query < 0 else path[:query]


def _grpc_method(path: str) -> bool:
    """Whether ``path`` is a gRPC method (``/package.Service/Method``): the regular expression (about
    3,000 instructions a call) only for a path that could be one, with two slashes and a dot."""
    return path.count("/") == 2 and "." in path and _GRPC_METHOD.match(path) is not None


def _segments(path: str) -> list[str]:
    return path.split("/")[1:] if path.startswith("/") else [path]


def shape_template(method: str, path: str) -> str:
    """``METHOD /path`` with id-shaped segments as ``{id}``: no learning, no state (for filters
    that must not change meaning as traffic goes by)."""
    path = _path_of(path)
    if _grpc_method(path):
        return f"{method} {path}"
    return f"{method} /" + "/".join(ID if segment_is_id(s) else s for s in _segments(path))


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


def _stable_hash(text: str) -> int:
    # blake2b, not hash(): sketches from worker processes merge.
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big")


class DistinctCounter:
    """How many distinct strings were added: exact up to ``k``, then a k-minimum-values estimate
    (standard error about 1/sqrt(k), 3 % at 1,024), in at most ``k`` integers of memory."""

    __slots__ = ("_heap", "_k", "_kept")

    def __init__(self, k: int = 1024) -> None:
        self._k = k
        self._kept: set[int] = set()
        self._heap: list[int] = []  # the kept hashes, negated: a max-heap of the k smallest

    def add(self, value: str) -> None:
        self._add_hash(_stable_hash(value))

    def _add_hash(self, h: int) -> None:
        if h in self._kept:
            return
        if len(self._kept) < self._k:
            self._kept.add(h)
            heapq.heappush(self._heap, -h)
        elif h < -self._heap[0]:
            self._kept.discard(-heapq.heappushpop(self._heap, -h))
            self._kept.add(h)

    @property
    def exact(self) -> bool:
        return len(self._kept) < self._k

    def count(self) -> int:
        if self.exact:
            return len(self._kept)
        return int((self._k - 1) * 2**64 / (-self._heap[0] + 1))

    def merge(self, other: DistinctCounter) -> None:
        for h in other._kept:
            self._add_hash(h)

    def encode(self) -> list[int]:
        return sorted(self._kept)

    @classmethod
    def decode(cls, data: Iterable[int], k: int = 1024) -> DistinctCounter:
        out = cls(k)
        for h in data:
            out._add_hash(int(h))
        return out


class _Position:
    """One segment position under a templated prefix: its counts, or its verdict once folded."""

    __slots__ = (
        "armed",
        "check_at",
        "children",
        "counts",
        "distinct_at_check",
        "floor",
        "folded",
        "heavy",
        "heavy_errors",
        "id_hits",
        "ids",
        "kept",
        "n",
        "n_at_fold",
        "settled",
        "settled_rows",
        "sketch",
        "untracked",
    )

    def __init__(self, first_check: int) -> None:
        self.children: dict[str, _Position] = {}
        self.counts: dict[str, int] | None = {}
        self.n = 0
        self.ids = 0  # observations of id-shaped values
        self.untracked = 0  # new literal values met while ``counts`` was full
        self.check_at = first_check
        self.distinct_at_check = 0  # distinct values at the previous checkpoint
        self.armed = False  # the previous checkpoint found the position sparse
        self.folded = False
        self.kept: frozenset[str] = frozenset()
        # Once folded: the busiest values since (Space-Saving, at most _HEAVY_SLOTS), the least
        # hits a value needs to be kept apart, and the traffic when the position folded.
        self.heavy: dict[str, int] = {}
        self.heavy_errors: dict[str, int] = {}  # per tracked value: its estimate's possible excess
        self.floor = 0
        self.n_at_fold = 0
        # Since the fold: the distinct values met (k minimum values of their CRC-32, id-shaped
        # ones aside) and the id-shaped values met (each one new, as when folding).
        self.sketch: list[int] = []
        self.id_hits = 0
        # When ``settle`` adds up a table of counted paths: requests and rows through it.
        self.settled = 0
        self.settled_rows = 0


def _size(pos: _Position) -> int:
    """Positions in the subtree at ``pos``, itself included (iterative: a path may be deep)."""
    count, stack = 0, [pos]
    while stack:
        count += 1
        stack.extend(stack.pop().children.values())
    return count


def _sketch_add(sketch: list[int], segment: str) -> None:
    """Add ``segment`` to a k-minimum-values sketch (a heap of the smallest CRC-32s, negated)."""
    h = -zlib.crc32(segment.encode("utf-8", "surrogateescape"))
    if len(sketch) < _SKETCH_K:
        if h not in sketch:
            heapq.heappush(sketch, h)
    elif h > sketch[0] and h not in sketch:
        heapq.heapreplace(sketch, h)


def _sketch_count(sketch: list[int]) -> int:
    """Distinct values added to ``sketch``: exact below ``_SKETCH_K``, then estimated (12 %)."""
    if len(sketch) < _SKETCH_K:
        return len(sketch)
    return (_SKETCH_K - 1) * 2**32 // (1 - sketch[0])


def _track(pos: _Position, segment: str, hits: int) -> int:
    """Count ``hits`` of ``segment`` in the folded ``pos``'s table of busiest values (Space-Saving:
    a new value takes the slot of the least counted and starts from its count); the hits it is
    certain of, those since the value took its slot."""
    heavy, errors = pos.heavy, pos.heavy_errors
    estimate = heavy.get(segment)
    if estimate is not None:
        estimate += hits
    elif len(heavy) < _HEAVY_SLOTS:
        estimate = hits
        errors[segment] = 0
    else:
        smallest = min(heavy, key=heavy.__getitem__)
        error = heavy.pop(smallest)
        del errors[smallest]
        estimate = errors[segment] = error
        estimate += hits
    heavy[segment] = estimate
    return estimate - errors[segment]


class EndpointTemplater:
    """Learns endpoint templates from observed (method, path) pairs; ``template`` gives the current view.

    ``max_literal_children`` is the old sibling-count knob, kept for callers: it is now the least
    number of sparse values (``min_distinct``) before a position may fold, never a reason alone.
    """

    __slots__ = (
        "_first_check",
        "_keep_min_hits",
        "_lcg",
        "_max_kept",
        "_max_positions",
        "_max_templates",
        "_max_values",
        "_min_distinct",
        "_overflow",
        "_positions",
        "_pruned_at",
        "_roots",
        "_routes",
        "_templates",
        "generation",
    )

    def __init__(
        self,
        routes: Iterable[str] = (),
        *,
        max_literal_children: int = 16,
        max_templates: int = 2000,
        max_positions: int = 4096,
        max_values: int = 128,
        min_observations: int = 64,
        keep_min_hits: int = 3,
        max_kept: int = 64,
    ) -> None:
        self._routes = tuple(_Route(r) for r in routes)
        self._min_distinct = max(1, max_literal_children)
        self._max_templates = max(1, max_templates)
        self._max_positions = max(1, max_positions)
        self._max_values = max(1, max_values)
        # The first checkpoint only records the distinct count: growth is judged from the second.
        self._first_check = max(1, min_observations // 2)
        self._keep_min_hits = max(1, keep_min_hits)
        self._max_kept = max(0, max_kept)
        self._roots: dict[str, _Position] = {}
        self._positions = 0
        # Per method: the templates handed out (an ordered set), and the overflow's distinct paths.
        self._templates: dict[str, dict[str, None]] = {}
        self._overflow: dict[str, DistinctCounter] = {}
        self._pruned_at: dict[str, int] = {}
        self._lcg = 1
        #: Bumped whenever a position folds: templates handed out earlier may have changed.
        self.generation = 0

    # -- learning -----------------------------------------------------------------------------------

    def _route(self, method: str, segments: Sequence[str]) -> _Route | None:
        for route in self._routes:
            if route.matches(method, segments):
                return route
        return None

    def _new_position(self) -> _Position | None:
        if self._positions >= self._max_positions:
            return None
        self._positions += 1
        return _Position(self._first_check)

    def _fold(self, pos: _Position, kept: frozenset[str] | None = None) -> None:
        if kept is None:
            # Kept apart: values hit far more often than the typical one (a long tail of ids
            # fetched three times each keeps none; ``recent`` hit thousands of times stays).
            counts = pos.counts or {}
            hits = sorted(counts.values())
            # The median over the values counted and the id-shaped ones (each new, one hit). Not
            # the values met once the count was full: those may be a few values again and again,
            # and taken for ones they made 64 of 130 values hit alike stay apart.
            ones = pos.ids
            middle = (len(hits) + ones) // 2
            median = 1 if middle < ones or not hits else hits[middle - ones]
            floor = max(self._keep_min_hits, 4 * median)
            pos.floor = floor
            busy = sorted((n, value) for value, n in counts.items() if n >= floor)
            kept = frozenset(value for _, value in busy[len(busy) - self._max_kept :] if self._max_kept)
        pos.kept = kept
        pos.folded, pos.counts, pos.n_at_fold = True, None, pos.n
        pos.sketch, pos.id_hits = [], 0
        pos.floor = max(pos.floor, self._keep_min_hits)
        # Children under values that folded now live under {id}: what they learned is dropped.
        for part in [k for k in pos.children if k not in pos.kept and k != ID]:
            self._positions -= _size(pos.children.pop(part))
        self.generation += 1

    def _sample(self) -> bool:
        """True seven times in eight: a linear congruential sequence (deterministic, and unlike a
        counter never in step with periodic traffic)."""
        self._lcg = (self._lcg * 1103515245 + 12345) & 0x7FFFFFFF
        return (self._lcg >> 16) & 7 != 0

    def _promote(self, pos: _Position, segment: str, hits_seen: int) -> bool:
        """Count ``segment`` at a folded position; keep it apart from now on when it has become
        busy (``/files/recent`` added after the ids around it folded, or seen last when learning
        from a table of distinct paths). Requests counted under ``{id}`` before stay there."""
        if hits_seen == 1 and segment not in pos.heavy and len(pos.heavy) >= _HEAVY_SLOTS and self._sample():
            # A long tail would evict on every request: one new value in eight, at random, takes
            # a slot (a busy value is back soon enough to get one).
            return False
        counted = _track(pos, segment, hits_seen)
        since = max(pos.n - pos.n_at_fold, self._first_check * 2)
        return self._keep_if_busy(pos, segment, counted, since, _sketch_count(pos.sketch) + pos.id_hits)

    def _keep_if_busy(self, pos: _Position, segment: str, counted: int, total: int, distinct: int) -> bool:
        """Keep ``segment`` apart at the folded ``pos`` when its ``counted`` hits (for certain) make
        it busy among ``total`` requests to ``distinct`` values: at least ``_MIN_BUSY_HITS`` and the
        fold's floor (enough evidence), ``_PROMOTE_SHARE`` of the requests (a real part of the
        traffic), and four times the average value's (standing out, as when folding: 150 slugs
        hit alike are one parameter, not 150 routes)."""
        if (
            counted < max(pos.floor, _MIN_BUSY_HITS)
            or counted < _PROMOTE_SHARE * total
            or counted * max(1, distinct) < 4 * total
            or len(pos.kept) >= self._max_kept
        ):
            return False
        pos.kept = pos.kept | {segment}
        del pos.heavy[segment], pos.heavy_errors[segment]
        return True

    def _check(self, pos: _Position) -> None:
        while pos.n >= pos.check_at:
            pos.check_at *= 2
            counted = len(pos.counts) if pos.counts is not None else 0
            distinct = counted + pos.untracked + pos.ids
            before, pos.distinct_at_check = pos.distinct_at_check, distinct
            # Still growing: the traffic doubled since the last checkpoint and the distinct values
            # grew by at least 70 % (values repeated again and again saturate long before that).
            growing = distinct >= self._min_distinct and before > 0 and (distinct - before) * 10 >= before * 7
            if growing and pos.armed:
                self._fold(pos)
                return
            pos.armed = growing

    def _step(self, pos: _Position, segment: str, learn: bool, hits_seen: int) -> str:
        """The template segment for ``segment`` at ``pos`` (counted ``hits_seen`` times first when ``learn``)."""
        if pos.folded:
            if segment in pos.kept:
                return segment
            if learn:
                pos.n += hits_seen
                # Id-shaped values are never promoted: they skip the count.
                if segment_is_id(segment):
                    pos.id_hits += 1
                else:
                    _sketch_add(pos.sketch, segment)
                    if self._promote(pos, segment, hits_seen):
                        return segment
            return ID
        counts = pos.counts
        assert counts is not None
        hits = counts.get(segment)
        if hits is None and segment_is_id(segment):
            if learn:
                pos.ids += 1
                pos.n += hits_seen
                self._check(pos)
            return ID
        if not learn:
            return segment
        if hits is not None:
            counts[segment] = hits + hits_seen
        elif len(counts) < self._max_values:
            counts[segment] = hits_seen
        else:
            pos.untracked += 1
        pos.n += hits_seen
        if pos.untracked > self._max_values:
            self._fold(pos)  # new values keep coming past a full count: a parameter
        else:
            self._check(pos)
        # Its counts go when the position folds (just now, perhaps).
        return ID if pos.counts is None and segment not in pos.kept else segment

    def _walk(self, method: str, path: str, learn: bool, hits: int = 1) -> str | None:
        """The template path (``/users/{id}``), or None when it overflows the template cap."""
        path = _path_of(path)
        if method not in self._templates and len(self._templates) >= _MAX_METHODS:
            return None  # a stream of made-up methods must not grow a tree each
        if _grpc_method(path):
            out = path
        else:
            segments = _segments(path)
            route = self._route(method, segments)
            if route is not None:
                return route.path
            pos = self._roots.get(method)
            if pos is None and learn:
                pos = self._roots[method] = _Position(self._first_check)
            parts: list[str] = []
            for depth, segment in enumerate(segments):
                if pos is None:
                    parts.append(ID if segment_is_id(segment) else segment)
                    continue
                part = self._step(pos, segment, learn, hits)
                parts.append(part)
                child = pos.children.get(part)
                if child is None and learn and depth + 1 < _MAX_DEPTH:
                    child = self._new_position()
                    if child is not None:
                        pos.children[part] = child
                pos = child
            out = "/" + "/".join(parts)
        return out if self._admit(method, out, learn) else None

    def _admit(self, method: str, template_path: str, learn: bool) -> bool:
        """Whether ``template_path`` has (or, when ``learn``, gets) a place under the cap."""
        known = self._templates.get(method)
        if known is None:
            if not learn:
                return True
            known = self._templates[method] = {}
        if template_path in known or template_path == OVERFLOW:
            return True
        if len(known) >= self._max_templates and self._pruned_at.get(method) != self.generation:
            # Templates that have since folded into others free their places.
            self._pruned_at[method] = self.generation
            for stale in [t for t in known if self._walk(method, t, False) != t]:
                del known[stale]
        if len(known) >= self._max_templates:
            return False
        if learn:
            known[template_path] = None
        return True

    def observe_template(self, method: str, path: str, *, hits: int = 1) -> str:
        """Learn from a request (seen ``hits`` times) and give its template (``observe`` then
        ``template``, in one walk)."""
        out = self._walk(method, path, True, max(1, hits))
        if out is None:
            key = method if method in self._templates else _OTHER_METHODS
            self._overflow.setdefault(key, DistinctCounter()).add(_path_of(path))
            out = OVERFLOW
        return f"{method} {out}"

    def observe(self, method: str, path: str, *, hits: int = 1) -> None:
        """Learn from a request seen ``hits`` times. Learning from distinct paths, pass how often
        each was seen: the counts are what tells a busy literal (``/files/recent``) from a long
        tail of sparse values, and real resources from ids."""
        self.observe_template(method, path, hits=hits)

    def template(self, method: str, path: str) -> str:
        """``METHOD /templated/path`` for one request, from what was learned so far."""
        out = self._walk(method, path, False)
        return f"{method} {OVERFLOW if out is None else out}"

    def retemplate(self, endpoint: str) -> str:
        """The current template of ``endpoint``, a template handed out earlier (``GET /files/abc``
        may since have become ``GET /files/{id}``)."""
        method, _, path = endpoint.partition(" ")
        if path == OVERFLOW:
            return endpoint
        return self.template(method, path)

    def learn(self, requests: Sequence[tuple[str, str]]) -> None:
        """Observe every request twice: the second pass counts deeper positions under prefixes that
        the first pass found to be parameters, so the result depends less on the order seen."""
        for method, path in requests:
            self.observe(method, path)
        for method, path in requests:
            self.observe(method, path)

    def settle(self, counted: Callable[[], Iterable[tuple[str, str, int]]]) -> int:
        """Keep apart, at every folded position, the values that take at least ``_PROMOTE_SHARE``
        of its requests, from exact counts: ``counted()`` gives each distinct (method, path) once
        with how many requests it had (a store's table), and is read twice. How many values it
        kept apart.

        For learning from a table of distinct paths once each (``learn``), which finds the
        parameters but cannot see a busy literal among a million ids: ``/users/me`` is one row
        among them. The share is of the position's whole count and the average is over its rows
        (a first read adds them up), so a slug seen five times is never kept for coming early in
        the table, as it would be against the requests seen so far. Values are counted per
        position as ``_promote`` does (32 slots, hits counted for certain; the streaming counts
        start over) and judged by the same rule (``_keep_if_busy``); a busy value's rows come
        together in path order.
        """
        folded: list[_Position] = []
        for method, path, hits in counted():
            for pos, _ in self._folded_on(method, path):
                if pos.settled == 0:
                    folded.append(pos)
                    pos.heavy, pos.heavy_errors = {}, {}
                pos.settled += max(1, hits)
                pos.settled_rows += 1
        kept = 0
        for method, path, hits in counted():
            for pos, segment in self._folded_on(method, path):
                if segment_is_id(segment):
                    continue
                certain = _track(pos, segment, max(1, hits))
                if self._keep_if_busy(pos, segment, certain, pos.settled, pos.settled_rows):
                    kept += 1
        for pos in folded:
            pos.settled, pos.settled_rows, pos.heavy, pos.heavy_errors = 0, 0, {}, {}
        if kept:
            self.generation += 1
        return kept

    def _folded_on(self, method: str, path: str) -> Iterator[tuple[_Position, str]]:
        """The folded positions ``path`` goes through, with its segment at each (not a kept one)."""
        path = _path_of(path)
        pos = self._roots.get(method)
        if pos is None or _grpc_method(path):
            return
        segments = _segments(path)
        if self._route(method, segments) is not None:
            return
        for segment in segments:
            part = self._step(pos, segment, False, 1)
            if pos.folded and part == ID:
                yield pos, segment
            child = pos.children.get(part)
            if child is None:
                return
            pos = child

    # -- what it holds --------------------------------------------------------------------------------

    def overflow(self) -> dict[str, tuple[int, bool]]:
        """Per method with an overflow bucket: (distinct paths in it, whether that count is exact)."""
        return {m: (c.count(), c.exact) for m, c in sorted(self._overflow.items())}

    def template_count(self) -> int:
        return sum(len(known) for known in self._templates.values())

    def export(self) -> dict[str, Any]:
        """What a templater in another process needs to fold the same way (``absorb``): the folded
        positions as (method, templated prefix, literals kept apart), and the overflow sketches."""
        folds: list[list[Any]] = []
        stack: list[tuple[str, list[str], _Position]] = [(m, [], p) for m, p in self._roots.items()]
        while stack:
            method, prefix, pos = stack.pop()
            if pos.folded:
                folds.append([method, prefix, sorted(pos.kept)])
            stack.extend((method, [*prefix, part], child) for part, child in pos.children.items())
        folds.sort()
        return {"folds": folds, "overflow": {m: c.encode() for m, c in self._overflow.items()}}

    def absorb(self, data: dict[str, Any]) -> None:
        """Fold every position another templater folded (``export``), and count its overflow."""
        for method, prefix, kept in data.get("folds", ()):
            pos = self._roots.get(method)
            if pos is None:
                pos = self._roots[method] = _Position(self._first_check)
            for part in prefix:
                child = pos.children.get(part)
                if child is None:
                    child = self._new_position()
                    if child is None:
                        break
                    pos.children[part] = child
                pos = child
            else:
                if not pos.folded:
                    self._fold(pos, frozenset(str(v) for v in kept))
                else:
                    # Kept by either side: a literal one process kept stays apart here too.
                    pos.kept = pos.kept | {str(v) for v in kept}
        for method, hashes in data.get("overflow", {}).items():
            self._overflow.setdefault(method, DistinctCounter()).merge(DistinctCounter.decode(hashes))
        self.generation += 1
