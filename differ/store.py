"""The results store: SQLite (stdlib) holding one row per compared exchange, the sets of differences
pairs showed and sampled examples, so reports can be rebuilt for any time window or endpoint without
the tapes.

Schema (documented in docs/differ.md): ``meta``, ``routes`` (method, raw path, learned endpoint),
``pairs`` (each pointing at its candidate's and its secondary's difference set), ``diff_keys``
(folded path, kind, transition), ``diff_sets``, ``example_exchanges``, ``examples`` and the
``signatures`` view. A pair of two timed responses also holds both latencies (and their histogram
bins and a sampling priority), so latency reports are rebuilt for any window too. Keys and sets
are named by a hash of their content, so the stores of several workers merge as they are. This
module is the only one that speaks SQL; it must never compare responses or decide noise, and it
never keeps more than one batch of rows (and bounded id caches) in memory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack

from shadowtap.recorder.errors import ConfigError, InputFormatError
from shadowtap.recorder.model import Exchange, exchange_from_wire, exchange_to_wire
from shadowtap.recorder.private import create_private, narrow_existing

__all__ = [
    "EXAMPLE_CANDIDATE",
    "EXAMPLE_SECONDARY",
    "EMPTY_SET",
    "SCHEMA_VERSION",
    "DiffStore",
    "ExampleRow",
    "LatencyBin",
    "LatencySample",
    "PairGroup",
    "PairLatency",
    "PairRow",
    "RunMeta",
    "SetMember",
    "content_id",
    "read_routes",
]

SCHEMA_VERSION: Final = 2
#: An example exchange keeps the baseline as ``primary`` and the others under these fixed names, so
#: it reads the same whatever the run called them.
EXAMPLE_CANDIDATE: Final = "candidate"
EXAMPLE_SECONDARY: Final = "secondary"
#: Row ids remembered per cache (routes, diff keys, difference sets). Paths full of ids make one
#: route per request; past this the cache starts over and SQLite's unique index answers, so memory
#: stays flat.
_ID_CACHE_SIZE: Final = 65_536
#: The set of no differences: a pair that differs in nothing (or only noise) points here.
EMPTY_SET: Final = 0
#: Full paths kept per example pair (to highlight): a pair differing at every element of a huge
#: array shows the first ones, and the signature's count says how many pairs there were.
_EXAMPLE_PATHS_MAX: Final = 200
#: Pages SQLite may cache (negative: KiB): the store's memory stays this, whatever the tape.
_CACHE_KIB: Final = 16_384
#: How long a reader of a store being merged into waits for the merge's commit.
_READ_TIMEOUT_S: Final = 600.0

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS routes (
    id INTEGER PRIMARY KEY,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    UNIQUE (method, path)
);
CREATE TABLE IF NOT EXISTS diff_keys (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    transition TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS diff_sets (
    id INTEGER PRIMARY KEY,
    members TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    exchange_id TEXT NOT NULL UNIQUE,
    started_at_ns INTEGER NOT NULL,
    route_id INTEGER NOT NULL REFERENCES routes (id),
    status TEXT NOT NULL CHECK (status IN ('compared', 'error', 'noise')),
    has_secondary INTEGER NOT NULL,
    diff_set INTEGER NOT NULL REFERENCES diff_sets (id),
    noise_set INTEGER NOT NULL REFERENCES diff_sets (id),
    baseline_latency_ns INTEGER,
    candidate_latency_ns INTEGER,
    baseline_latency_bin INTEGER,
    candidate_latency_bin INTEGER,
    latency_priority INTEGER
);
CREATE TABLE IF NOT EXISTS example_exchanges (
    pair_id INTEGER PRIMARY KEY REFERENCES pairs (id),
    exchange BLOB NOT NULL,
    differences TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS examples (
    pair_id INTEGER NOT NULL REFERENCES example_exchanges (pair_id),
    key_id INTEGER NOT NULL REFERENCES diff_keys (id),
    volatile TEXT NOT NULL,
    priority REAL NOT NULL,
    PRIMARY KEY (pair_id, key_id, volatile)
);
CREATE VIEW IF NOT EXISTS signatures AS
    SELECT r.endpoint, k.path, k.kind, k.transition, nullif(json_extract(m.value, '$[1]'), '') AS volatile,
           count(*) AS pairs,
           min(p.started_at_ns) AS first_seen_ns, max(p.started_at_ns) AS last_seen_ns
    FROM pairs p
    JOIN routes r ON r.id = p.route_id
    JOIN diff_sets s ON s.id = p.diff_set
    JOIN json_each(s.members) m
    JOIN diff_keys k ON k.id = json_extract(m.value, '$[0]')
    WHERE p.diff_set != 0
    GROUP BY r.endpoint, k.path, k.kind, k.transition, volatile;
"""

#: The indexes reports read by: a scratch store (``DiffStore(scratch=True)``, a worker's, only ever
#: merged into another) goes without them, so its writes maintain none.
_READ_INDEXES: Final = """
CREATE INDEX IF NOT EXISTS routes_endpoint ON routes (endpoint);
CREATE INDEX IF NOT EXISTS pairs_time ON pairs (started_at_ns);
CREATE INDEX IF NOT EXISTS pairs_route ON pairs (route_id);
"""


#: The largest sampling priority (63 bits: an SQLite INTEGER).
_PRIORITY_MAX: Final = 2**63 - 1
#: The latency columns of ``pairs``, added to a store written before they existed when it is opened
#: for writing (NULL for its earlier pairs: no latency known). Read-only, such a store reads as one
#: without latencies.
_LATENCY_COLUMNS: Final = (
    "baseline_latency_ns",
    "candidate_latency_ns",
    "baseline_latency_bin",
    "candidate_latency_bin",
    "latency_priority",
)


def _priority_bound(pairs: int, sample: int) -> int:
    """The priority under which ``pairs`` uniform 63-bit priorities hold their ``sample`` smallest,
    but for a chance of about 1e-9 (a margin of six standard deviations, and 20 pairs)."""
    if pairs <= sample:
        return _PRIORITY_MAX
    expected = sample + 6 * math.sqrt(sample) + 20
    return _PRIORITY_MAX if expected >= pairs else int(_PRIORITY_MAX * (expected / pairs))


def content_id(*parts: str) -> int:
    """A 63-bit id that is a hash of ``parts``: the same key or set has the same id in every store,
    so stores written by several workers merge without renumbering."""
    digest = hashlib.blake2b("\x00".join(parts).encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) or 1


#: One member of a difference set: (key id, volatile reason or "" for none).
SetMember = tuple[int, str]


@dataclass(frozen=True, slots=True)
class RunMeta:
    """Which outcomes were compared, and from which tapes."""

    baseline: str
    candidate: str
    secondary: str | None
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PairGroup:
    """Pairs of one endpoint that showed the same differences: ``count`` of them, first and last start."""

    endpoint: str
    status: str
    has_secondary: bool
    diff_set: int
    noise_set: int
    count: int
    first_ns: int
    last_ns: int


@dataclass(frozen=True, slots=True)
class PairLatency:
    """One timed pair's latencies (ns): the baseline's and the candidate's service times, each one's
    histogram bin (``shadowtap.differ.latency.histogram_bin``) and the pair's sampling priority (a
    hash of its exchange id: the sample of a window is its pairs of smallest priority)."""

    baseline_ns: int
    candidate_ns: int
    baseline_bin: int
    candidate_bin: int
    priority: int


@dataclass(frozen=True, slots=True)
class PairRow:
    """One stored pair as a reader following the store sees it: its row id (pairs are only ever
    added, so ids grow), exchange id, start, endpoint, status, candidate difference set, and
    whether the secondary answered it too."""

    id: int
    exchange_id: str
    started_at_ns: int
    endpoint: str
    status: str
    diff_set: int
    has_secondary: bool


@dataclass(frozen=True, slots=True)
class LatencyBin:
    """Pairs of one endpoint whose ``side`` (``baseline`` or ``candidate``) fell in histogram bin
    ``bin``: ``count`` of them."""

    endpoint: str
    side: str
    bin: int
    count: int


@dataclass(frozen=True, slots=True)
class LatencySample:
    endpoint: str
    baseline_ns: int
    candidate_ns: int
    priority: int


@dataclass(frozen=True, slots=True)
class ExampleRow:
    endpoint: str
    key_id: int
    volatile: str | None
    pair_id: int


def read_routes(path: str | Path, batch: int = 10_000) -> Iterator[tuple[str, str]]:
    """The (method, path) of every route of the store at ``path``, in (method, path) order, read
    through a read-only connection of its own a batch at a time: each batch a short read, so a
    writer of the same file (a merge into it) waits at most that long for its lock, and sees its
    routes read again (``distinct_routes`` drops the repeats) or not at all."""
    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=_READ_TIMEOUT_S)
    try:
        rows = db.execute("SELECT method, path FROM routes ORDER BY method, path LIMIT ?", (batch,)).fetchall()
        while rows:
            yield from rows
            if len(rows) < batch:
                return
            rows = db.execute(
                "SELECT method, path FROM routes WHERE (method, path) > (?, ?) ORDER BY method, path LIMIT ?",
                (*rows[-1], batch),
            ).fetchall()
    finally:
        db.close()


def _make_private(path: str) -> None:
    """The database file 0600 before SQLite opens it (it stores recorded bodies as examples).

    SQLite gives its -journal, -wal and -shm files the database's mode, so they follow; any left
    behind with a wider mode by an earlier run are narrowed too.
    """
    try:
        create_private(path)
        for suffix in ("-journal", "-wal", "-shm"):
            narrow_existing(path + suffix)
    except OSError as exc:
        raise ConfigError(f"cannot create results database: {exc.strerror or exc}", path=path) from exc


class DiffStore:
    """One SQLite database of diff results. Writes are batched into transactions by the caller.

    A pair is one row pointing at two difference sets (what the candidate showed, what the secondary
    showed): sets repeat across pairs, so a difference is stored once per distinct set, not per pair,
    and noise is counted through the pairs that point at it.
    """

    def __init__(self, path: str | Path, *, create: bool = True, scratch: bool = False) -> None:
        """Open (or, when ``create``, create) the store at ``path``. A ``scratch`` store is a
        worker's, read only by ``merge_from``: no read indexes, and no journal or fsync (a crash
        loses the run's scratch directory anyway)."""
        self.path = str(path)
        if not create and (self.path == ":memory:" or not Path(self.path).is_file()):
            raise ConfigError("no such results database", path=self.path)
        if create and self.path not in (":memory:", ""):
            _make_private(self.path)
        try:
            self._db = sqlite3.connect(self.path)
            has_meta = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
            if not create and not has_meta:
                # Reading must never add our tables to somebody else's database.
                self._db.close()
                raise InputFormatError("not a shadowtap results database (no meta table)", path=self.path)
            if has_meta:
                self._check_version()
            self._db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            if scratch:
                self._db.execute("PRAGMA journal_mode = MEMORY")
                self._db.execute("PRAGMA synchronous = OFF")
            if has_meta and create:
                self._add_latency_columns()
            self._db.executescript(_SCHEMA if scratch else _SCHEMA + _READ_INDEXES)
            if not has_meta:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                self._db.commit()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise InputFormatError(f"not a shadowtap results database: {exc}", path=self.path) from exc
        except InputFormatError:
            self._db.close()
            raise
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(pairs)")}
        self.has_latency = all(name in columns for name in _LATENCY_COLUMNS)
        self._route_ids: dict[tuple[str, str], int] = {}
        self._key_ids: dict[tuple[str, str, str], int] = {}
        self._set_ids: dict[tuple[SetMember, ...] | tuple[int, ...], int] = {}
        self._members: dict[int, tuple[SetMember, ...]] = {}

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or int(row[0]) != SCHEMA_VERSION:
            found = "no" if row is None else row[0]
            hint = (
                "; it was written by an older shadowtap: run `shadowtap diff` on the tapes again into a new --db"
                if row is not None and int(row[0]) < SCHEMA_VERSION
                else ""
            )
            raise InputFormatError(
                f"results database schema version {found}, this shadowtap reads {SCHEMA_VERSION}{hint}",
                path=self.path,
            )

    def _add_latency_columns(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(pairs)")}
        if not columns:
            return
        for name in _LATENCY_COLUMNS:
            if name not in columns:
                self._db.execute(f"ALTER TABLE pairs ADD COLUMN {name} INTEGER")
        self._db.commit()

    def close(self) -> None:
        self._db.commit()
        self._db.close()

    def commit(self) -> None:
        self._db.commit()

    # --- run metadata -----------------------------------------------------------------------------

    def meta(self) -> RunMeta | None:
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if "candidate" not in rows:
            return None
        return RunMeta(
            baseline=rows["baseline"],
            candidate=rows["candidate"],
            secondary=rows.get("secondary") or None,
            sources=tuple(json.loads(rows.get("sources", "[]"))),
        )

    def set_meta(self, meta: RunMeta) -> None:
        """Record the run's names; appending to a store of another comparison is refused."""
        existing = self.meta()
        if existing is not None and (existing.baseline, existing.candidate, existing.secondary) != (
            meta.baseline,
            meta.candidate,
            meta.secondary,
        ):
            raise ConfigError(
                f"holds {existing.baseline} vs {existing.candidate} (secondary {existing.secondary}), "
                f"not {meta.baseline} vs {meta.candidate} (secondary {meta.secondary}); use another --db",
                path=self.path,
            )
        sources = list(existing.sources) if existing is not None else []
        sources += [s for s in meta.sources if s not in sources]
        values = {
            "baseline": meta.baseline,
            "candidate": meta.candidate,
            "secondary": meta.secondary or "",
            "sources": json.dumps(sources),
        }
        self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())
        self._db.commit()

    # --- writing ----------------------------------------------------------------------------------

    def route_id(self, method: str, path: str, endpoint: str) -> int:
        key = (method, path)
        found = self._route_ids.get(key)
        if found is not None:
            return found
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO routes (method, path, endpoint) VALUES (?, ?, ?)", (*key, endpoint)
        )
        route_id: int
        if cursor.rowcount == 1 and cursor.lastrowid is not None:
            route_id = cursor.lastrowid
        else:
            route_id = self._db.execute("SELECT id FROM routes WHERE method = ? AND path = ?", key).fetchone()[0]
        if len(self._route_ids) >= _ID_CACHE_SIZE:
            self._route_ids.clear()
        self._route_ids[key] = route_id
        return route_id

    def key_id(self, path: str, kind: str, transition: str) -> int:
        key = (path, kind, transition)
        found = self._key_ids.get(key)
        if found is not None:
            return found
        key_id = content_id(*key)
        self._db.execute("INSERT OR IGNORE INTO diff_keys VALUES (?, ?, ?, ?)", (key_id, *key))
        if len(self._key_ids) >= _ID_CACHE_SIZE:
            self._key_ids.clear()
        self._key_ids[key] = key_id
        return key_id

    def set_id(self, members: tuple[SetMember, ...]) -> int:
        """The id of a difference set, members sorted and distinct; ``EMPTY_SET`` for none."""
        if not members:
            return EMPTY_SET
        found = self._set_ids.get(members)
        if found is not None:
            return found
        text = json.dumps(members, separators=(",", ":"))
        set_id = content_id("set", text)
        self._db.execute("INSERT OR IGNORE INTO diff_sets VALUES (?, ?)", (set_id, text))
        if len(self._set_ids) >= _ID_CACHE_SIZE:
            self._set_ids.clear()
        self._set_ids[members] = set_id
        return set_id

    def add_pair(
        self,
        exchange_id: str,
        started_at_ns: int,
        route_id: int,
        status: str,
        has_secondary: bool,
        diff_set: int = EMPTY_SET,
        noise_set: int = EMPTY_SET,
        latency: PairLatency | None = None,
    ) -> int | None:
        """Insert one pair; ``None`` when this exchange is already in the store (a tape read twice)."""
        if latency is None:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO pairs (exchange_id, started_at_ns, route_id, status, has_secondary, diff_set,"
                " noise_set) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (exchange_id, started_at_ns, route_id, status, int(has_secondary), diff_set, noise_set),
            )
        else:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO pairs (exchange_id, started_at_ns, route_id, status, has_secondary, diff_set,"
                " noise_set, baseline_latency_ns, candidate_latency_ns, baseline_latency_bin, candidate_latency_bin,"
                " latency_priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    exchange_id, started_at_ns, route_id, status, int(has_secondary), diff_set, noise_set,
                    latency.baseline_ns, latency.candidate_ns, latency.baseline_bin, latency.candidate_bin,
                    latency.priority,
                ),
            )  # fmt: skip
        return cursor.lastrowid if cursor.rowcount == 1 else None

    def add_example(
        self,
        pair_id: int,
        exchange: Exchange,
        differences: Sequence[tuple[int, str, str]],
        keys: Sequence[tuple[int, str, float]],
    ) -> None:
        """Keep ``exchange`` as the example of its pair for ``keys`` ((key id, volatile or "",
        priority)); ``differences`` are the pair's (key id, full path, volatile or "")."""
        blob = msgpack.packb(exchange_to_wire(exchange), use_bin_type=True)
        paths = json.dumps(list(differences[:_EXAMPLE_PATHS_MAX]), separators=(",", ":"))
        self._db.execute("INSERT OR REPLACE INTO example_exchanges VALUES (?, ?, ?)", (pair_id, blob, paths))
        self._db.executemany(
            "INSERT OR REPLACE INTO examples VALUES (?, ?, ?, ?)", [(pair_id, k, v, p) for k, v, p in keys]
        )

    def drop_example(self, pair_id: int, key_id: int, volatile: str) -> None:
        """A pair pushed out of one sample; its exchange goes at ``prune_examples`` when no sample keeps it."""
        self._db.execute(
            "DELETE FROM examples WHERE pair_id = ? AND key_id = ? AND volatile = ?", (pair_id, key_id, volatile)
        )

    def prune_examples(self) -> None:
        self._db.execute("DELETE FROM example_exchanges WHERE pair_id NOT IN (SELECT DISTINCT pair_id FROM examples)")

    def routes(self) -> Iterator[tuple[int, str, str, str]]:
        """(id, method, path, endpoint) of every stored route, streamed in (method, path) order."""
        yield from self._db.execute("SELECT id, method, path, endpoint FROM routes ORDER BY method, path")

    def route_counts(self) -> Iterator[tuple[str, str, int]]:
        """(method, path, pairs stored for it) of every stored route, streamed in (method, path) order."""
        yield from self._db.execute(
            "SELECT method, path, (SELECT COUNT(*) FROM pairs WHERE pairs.route_id = routes.id) FROM routes"
            " ORDER BY method, path"
        )

    def routes_after(self, after_id: int, limit: int) -> list[tuple[int, str, str, str]]:
        """(id, method, path, endpoint) of up to ``limit`` routes with ids above ``after_id``, by id."""
        return self._db.execute(
            "SELECT id, method, path, endpoint FROM routes WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()

    def set_endpoints(self, updates: Sequence[tuple[str, int]]) -> None:
        """Rows of (endpoint, route_id): the learned templates, applied once all paths are known."""
        self._db.executemany("UPDATE routes SET endpoint = ? WHERE id = ?", updates)
        self._db.commit()

    def merge_from(self, path: str) -> int:
        """Add everything of another store of the same run (a worker's): routes by (method, path),
        pairs by exchange id, and keys and sets as they are (their ids are their content). Returns
        how many of its pairs this store already held (the same exchange read by two workers)."""
        self._db.commit()
        self._db.execute("ATTACH DATABASE ? AS part", (path,))
        try:
            db = self._db
            db.execute("INSERT OR IGNORE INTO diff_keys SELECT * FROM part.diff_keys")
            db.execute("INSERT OR IGNORE INTO diff_sets SELECT * FROM part.diff_sets")
            db.execute(
                "INSERT OR IGNORE INTO routes (method, path, endpoint) SELECT method, path, endpoint FROM part.routes"
            )
            offered: int = db.execute("SELECT count(*) FROM part.pairs").fetchone()[0]
            latency = ", ".join(_LATENCY_COLUMNS)
            inserted = db.execute(
                "INSERT OR IGNORE INTO pairs (exchange_id, started_at_ns, route_id, status, has_secondary, diff_set,"
                f" noise_set, {latency}) SELECT p.exchange_id, p.started_at_ns, r.id, p.status, p.has_secondary,"
                f" p.diff_set, p.noise_set, {', '.join('p.' + c for c in _LATENCY_COLUMNS)}"
                " FROM part.pairs p JOIN part.routes pr ON pr.id = p.route_id"
                " JOIN main.routes r ON r.method = pr.method AND r.path = pr.path ORDER BY p.id"
            ).rowcount
            db.execute(
                "INSERT OR REPLACE INTO example_exchanges SELECT mp.id, e.exchange, e.differences"
                " FROM part.example_exchanges e JOIN part.pairs pp ON pp.id = e.pair_id"
                " JOIN main.pairs mp ON mp.exchange_id = pp.exchange_id"
            )
            db.execute(
                "INSERT OR REPLACE INTO examples SELECT mp.id, e.key_id, e.volatile, e.priority"
                " FROM part.examples e JOIN part.pairs pp ON pp.id = e.pair_id"
                " JOIN main.pairs mp ON mp.exchange_id = pp.exchange_id"
            )
            db.commit()
        finally:
            self._db.execute("DETACH DATABASE part")
        return offered - inserted

    # --- reading ----------------------------------------------------------------------------------

    @staticmethod
    def _window(since_ns: int | None, until_ns: int | None, endpoint: str | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if since_ns is not None:
            clauses.append("p.started_at_ns >= ?")
            params.append(since_ns)
        if until_ns is not None:
            clauses.append("p.started_at_ns < ?")
            params.append(until_ns)
        if endpoint is not None:
            clauses.append("r.endpoint = ?")
            params.append(endpoint)
        return (" AND ".join(clauses) or "1"), params

    def pair_groups(self, since_ns: int | None, until_ns: int | None, endpoint: str | None) -> Iterator[PairGroup]:
        """The pairs in the window grouped by endpoint, status, secondary and both difference sets,
        streamed: one row per distinct kind of pair, whatever the number of pairs."""
        where, params = self._window(since_ns, until_ns, endpoint)
        for row in self._db.execute(
            "SELECT r.endpoint, p.status, p.has_secondary, p.diff_set, p.noise_set, count(*),"
            " min(p.started_at_ns), max(p.started_at_ns)"
            f" FROM pairs p JOIN routes r ON r.id = p.route_id WHERE {where}"
            " GROUP BY r.endpoint, p.status, p.has_secondary, p.diff_set, p.noise_set",
            params,
        ):
            yield PairGroup(row[0], row[1], bool(row[2]), *row[3:])

    def pairs_after(self, after_id: int, limit: int) -> list[PairRow]:
        """Up to ``limit`` pairs with row ids above ``after_id``, by id: what was added since a
        reader last looked (the proxy following its live store)."""
        rows = self._db.execute(
            "SELECT p.id, p.exchange_id, p.started_at_ns, r.endpoint, p.status, p.diff_set, p.has_secondary"
            " FROM pairs p JOIN routes r ON r.id = p.route_id WHERE p.id > ? ORDER BY p.id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [PairRow(pid, exchange_id, started, endpoint, status, diff_set, bool(secondary))
                for pid, exchange_id, started, endpoint, status, diff_set, secondary in rows]  # fmt: skip

    def latency_bins(self, since_ns: int | None, until_ns: int | None, endpoint: str | None) -> Iterator[LatencyBin]:
        """The latency histograms of the timed pairs in the window, per endpoint and side, streamed:
        one row per occupied bin (SQLite counts them), whatever the number of pairs."""
        if not self.has_latency:
            return
        where, params = self._window(since_ns, until_ns, endpoint)
        for side in ("baseline", "candidate"):
            for row in self._db.execute(
                f"SELECT r.endpoint, p.{side}_latency_bin, count(*)"
                f" FROM pairs p JOIN routes r ON r.id = p.route_id WHERE {where} AND p.latency_priority IS NOT NULL"
                f" GROUP BY r.endpoint, p.{side}_latency_bin",
                params,
            ):
                yield LatencyBin(row[0], side, row[1], row[2])

    def latency_samples(
        self,
        since_ns: int | None,
        until_ns: int | None,
        endpoint: str | None,
        per_endpoint: int,
        pairs_by_endpoint: Mapping[str, int],
    ) -> Iterator[LatencySample]:
        """Each endpoint's ``per_endpoint`` timed pairs of smallest (priority, exchange id) in the
        window (a uniform sample, the same whichever worker or run stored them), by endpoint then
        priority (each endpoint's rows together; endpoints in no particular order).
        ``pairs_by_endpoint``: each endpoint's timed pairs in the window (``latency_bins``).

        Priorities are uniform over 63 bits, so an endpoint's first ``per_endpoint`` lie below a
        bound its count predicts (with a margin of several standard deviations): one pass keeps only
        the pairs under their endpoint's bound (no sort of every pair), and an endpoint that fell
        short of its sample, rarely, is read again in full.
        """
        if not self.has_latency or not pairs_by_endpoint:
            return
        where, params = self._window(since_ns, until_ns, endpoint)
        self._db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS latency_bounds (endpoint TEXT PRIMARY KEY, at_most INTEGER NOT NULL)"
        )
        self._db.execute("DELETE FROM temp.latency_bounds")
        self._db.executemany(
            "INSERT INTO temp.latency_bounds VALUES (?, ?)",
            ((ep, _priority_bound(n, per_endpoint)) for ep, n in pairs_by_endpoint.items()),
        )
        rows = self._db.execute(
            "SELECT r.endpoint, p.baseline_latency_ns, p.candidate_latency_ns, p.latency_priority FROM pairs p"
            " JOIN routes r ON r.id = p.route_id JOIN temp.latency_bounds l ON l.endpoint = r.endpoint"
            f" WHERE {where} AND p.latency_priority <= l.at_most"
            " ORDER BY r.endpoint, p.latency_priority, p.exchange_id",
            params,
        )
        done: set[str] = set()
        try:
            # Streamed: one endpoint's rows at a time (a few more than its sample).
            for ep, group in itertools.groupby(rows, key=lambda row: str(row[0])):
                done.add(ep)
                yield from self._latency_sample(ep, list(itertools.islice(group, per_endpoint)), since_ns, until_ns,
                                                per_endpoint, pairs_by_endpoint.get(ep, 0))  # fmt: skip
            for ep in sorted(pairs_by_endpoint.keys() - done):  # not one pair under its bound
                yield from self._latency_sample(ep, [], since_ns, until_ns, per_endpoint, pairs_by_endpoint[ep])
        finally:
            rows.close()
            self._db.execute("DELETE FROM temp.latency_bounds")
            self._db.commit()  # the temporary table's rows only: the store itself is never written here

    def _latency_sample(
        self,
        ep: str,
        kept: list[Any],
        since_ns: int | None,
        until_ns: int | None,
        per_endpoint: int,
        pairs: int,
    ) -> Iterator[LatencySample]:
        if len(kept) < min(per_endpoint, pairs):  # short of the sample under the bound: read it all
            where, params = self._window(since_ns, until_ns, ep)
            kept = self._db.execute(
                "SELECT r.endpoint, p.baseline_latency_ns, p.candidate_latency_ns, p.latency_priority FROM pairs p"
                f" JOIN routes r ON r.id = p.route_id WHERE {where} AND p.latency_priority IS NOT NULL"
                " ORDER BY p.latency_priority, p.exchange_id LIMIT ?",
                [*params, per_endpoint],
            ).fetchall()
        for row in kept:
            yield LatencySample(*row)

    def members(self, set_id: int) -> tuple[SetMember, ...]:
        """The (key id, volatile or "") members of one difference set."""
        if set_id == EMPTY_SET:
            return ()
        found = self._members.get(set_id)
        if found is None:
            row = self._db.execute("SELECT members FROM diff_sets WHERE id = ?", (set_id,)).fetchone()
            if row is None:
                raise InputFormatError(f"difference set {set_id} is missing", path=self.path)
            found = tuple((int(key), str(volatile)) for key, volatile in json.loads(row[0]))
            if len(self._members) >= _ID_CACHE_SIZE:
                self._members.clear()
            self._members[set_id] = found
        return found

    def diff_key(self, key_id: int) -> tuple[str, str, str]:
        """(folded path, kind, transition) of one key."""
        row = self._db.execute("SELECT path, kind, transition FROM diff_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise InputFormatError(f"difference key {key_id} is missing", path=self.path)
        return row[0], row[1], row[2]

    def examples_in(self, since_ns: int | None, until_ns: int | None, endpoint: str | None) -> Iterator[ExampleRow]:
        """Every sampled (endpoint, key, volatile, pair) in the window, ordered by signature then
        priority (then exchange id), streamed: the first ``k`` of a signature are a uniform sample of it."""
        where, params = self._window(since_ns, until_ns, endpoint)
        for row in self._db.execute(
            # CROSS JOIN keeps this loop order: the samples are few (bounded per signature), the
            # pairs of a window or an endpoint may be millions.
            "SELECT r.endpoint, e.key_id, e.volatile, e.pair_id FROM examples e CROSS JOIN pairs p ON p.id = e.pair_id"
            f" CROSS JOIN routes r ON r.id = p.route_id WHERE {where}"
            " ORDER BY r.endpoint, e.key_id, e.volatile, e.priority, p.exchange_id",
            params,
        ):
            yield ExampleRow(row[0], row[1], row[2] or None, row[3])

    def example_pairs(
        self, endpoint: str, key_id: int, limit: int, since_ns: int | None, until_ns: int | None
    ) -> list[int]:
        """The sampled pairs showing ``key_id`` at ``endpoint``: the ``limit`` smallest priorities."""
        where, params = self._window(since_ns, until_ns, endpoint)
        rows = self._db.execute(
            "SELECT e.pair_id FROM examples e JOIN pairs p ON p.id = e.pair_id JOIN routes r ON r.id = p.route_id"
            f" WHERE e.key_id = ? AND {where} ORDER BY e.priority, p.exchange_id LIMIT ?",
            [key_id, *params, limit],
        ).fetchall()
        return [row[0] for row in rows]

    def example_differences(self, pair_id: int) -> list[tuple[int, str, str | None]]:
        """(key id, full path, volatile) of one example pair's candidate-side differences."""
        row = self._db.execute("SELECT differences FROM example_exchanges WHERE pair_id = ?", (pair_id,)).fetchone()
        if row is None:
            raise InputFormatError(f"example for pair {pair_id} is missing", path=self.path)
        return [(int(key), str(path), volatile or None) for key, path, volatile in json.loads(row[0])]

    def example_exchange(self, pair_id: int) -> Exchange:
        row = self._db.execute("SELECT exchange FROM example_exchanges WHERE pair_id = ?", (pair_id,)).fetchone()
        if row is None:
            raise InputFormatError(f"example for pair {pair_id} is missing", path=self.path)
        return exchange_from_wire(msgpack.unpackb(row[0], raw=False, use_list=False))
