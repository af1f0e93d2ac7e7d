"""The results store: SQLite (stdlib) holding one row per compared exchange, its differences and
sampled examples, so reports can be rebuilt for any time window or endpoint without the tapes.

Schema (documented in docs/differ.md): ``meta``, ``routes`` (method, raw path, learned endpoint),
``pairs``, ``diff_keys`` (folded path, kind, transition), ``differences``, ``example_exchanges``,
``examples`` and the ``signatures`` view. This module is the only one that speaks SQL; it must never
compare responses or decide noise, and it never keeps more than one batch of rows in memory.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
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
    "SCHEMA_VERSION",
    "DiffStore",
    "EndpointCountsRow",
    "RunMeta",
    "StoredDifference",
]

SCHEMA_VERSION: Final = 1
#: An example exchange keeps the baseline as ``primary`` and the others under these fixed names, so
#: it reads the same whatever the run called them.
EXAMPLE_CANDIDATE: Final = "candidate"
EXAMPLE_SECONDARY: Final = "secondary"
#: Row ids remembered per cache (routes, diff keys). Paths full of ids make one route per request;
#: past this the cache starts over and SQLite's unique index answers, so memory stays flat.
_ID_CACHE_SIZE: Final = 65_536

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS routes (
    id INTEGER PRIMARY KEY,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    UNIQUE (method, path)
);
CREATE INDEX IF NOT EXISTS routes_endpoint ON routes (endpoint);
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    exchange_id TEXT NOT NULL UNIQUE,
    started_at_ns INTEGER NOT NULL,
    route_id INTEGER NOT NULL REFERENCES routes (id),
    status TEXT NOT NULL CHECK (status IN ('compared', 'error', 'noise')),
    has_secondary INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pairs_time ON pairs (started_at_ns);
CREATE INDEX IF NOT EXISTS pairs_route ON pairs (route_id);
CREATE TABLE IF NOT EXISTS diff_keys (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    transition TEXT NOT NULL,
    UNIQUE (path, kind, transition)
);
CREATE TABLE IF NOT EXISTS differences (
    pair_id INTEGER NOT NULL REFERENCES pairs (id),
    key_id INTEGER NOT NULL REFERENCES diff_keys (id),
    side TEXT NOT NULL CHECK (side IN ('candidate', 'secondary')),
    full_path TEXT NOT NULL,
    volatile TEXT
);
CREATE INDEX IF NOT EXISTS differences_pair ON differences (pair_id);
CREATE TABLE IF NOT EXISTS example_exchanges (
    pair_id INTEGER PRIMARY KEY REFERENCES pairs (id),
    exchange BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS examples (
    pair_id INTEGER NOT NULL REFERENCES example_exchanges (pair_id),
    key_id INTEGER NOT NULL REFERENCES diff_keys (id),
    priority REAL NOT NULL,
    PRIMARY KEY (pair_id, key_id)
);
CREATE INDEX IF NOT EXISTS examples_key ON examples (key_id, priority);
CREATE VIEW IF NOT EXISTS signatures AS
    SELECT r.endpoint, k.path, k.kind, k.transition, d.volatile,
           count(DISTINCT d.pair_id) AS pairs,
           min(p.started_at_ns) AS first_seen_ns, max(p.started_at_ns) AS last_seen_ns
    FROM differences d
    JOIN pairs p ON p.id = d.pair_id
    JOIN routes r ON r.id = p.route_id
    JOIN diff_keys k ON k.id = d.key_id
    WHERE d.side = 'candidate'
    GROUP BY r.endpoint, k.path, k.kind, k.transition, d.volatile;
"""


@dataclass(frozen=True, slots=True)
class RunMeta:
    """Which outcomes were compared, and from which tapes."""

    baseline: str
    candidate: str
    secondary: str | None
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EndpointCountsRow:
    endpoint: str
    pairs: int
    compared: int
    errors: int
    secondary: int
    first_ns: int
    last_ns: int


@dataclass(frozen=True, slots=True)
class StoredDifference:
    pair_id: int
    endpoint: str
    started_at_ns: int
    pair_status: str
    key_id: int
    path: str
    kind: str
    transition: str
    side: str
    full_path: str
    volatile: str | None


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
    """One SQLite database of diff results. Writes are batched into transactions by the caller."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = str(path)
        if not create and (self.path == ":memory:" or not Path(self.path).is_file()):
            raise ConfigError("no such results database", path=self.path)
        if create and self.path not in (":memory:", ""):
            _make_private(self.path)
        try:
            self._db = sqlite3.connect(self.path)
            if (
                not create
                and not self._db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
                ).fetchone()
            ):
                # Reading must never add our tables to somebody else's database.
                self._db.close()
                raise InputFormatError("not a shadowtap results database (no meta table)", path=self.path)
            self._db.executescript(_SCHEMA)
            self._check_version()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise InputFormatError(f"not a shadowtap results database: {exc}", path=self.path) from exc
        self._route_ids: dict[tuple[str, str], int] = {}
        self._key_ids: dict[tuple[str, str, str], int] = {}

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self._db.commit()
        elif int(row[0]) != SCHEMA_VERSION:
            raise InputFormatError(
                f"results database schema version {row[0]}, this shadowtap reads {SCHEMA_VERSION}", path=self.path
            )

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
        self._db.execute("INSERT OR IGNORE INTO routes (method, path, endpoint) VALUES (?, ?, ?)", (*key, endpoint))
        route_id: int = self._db.execute("SELECT id FROM routes WHERE method = ? AND path = ?", key).fetchone()[0]
        if len(self._route_ids) >= _ID_CACHE_SIZE:
            self._route_ids.clear()
        self._route_ids[key] = route_id
        return route_id

    def key_id(self, path: str, kind: str, transition: str) -> int:
        key = (path, kind, transition)
        found = self._key_ids.get(key)
        if found is not None:
            return found
        self._db.execute("INSERT OR IGNORE INTO diff_keys (path, kind, transition) VALUES (?, ?, ?)", key)
        key_id: int = self._db.execute(
            "SELECT id FROM diff_keys WHERE path = ? AND kind = ? AND transition = ?", key
        ).fetchone()[0]
        if len(self._key_ids) >= _ID_CACHE_SIZE:
            self._key_ids.clear()
        self._key_ids[key] = key_id
        return key_id

    def add_pair(
        self, exchange_id: str, started_at_ns: int, route_id: int, status: str, has_secondary: bool
    ) -> int | None:
        """Insert one pair; ``None`` when this exchange is already in the store (a tape read twice)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO pairs (exchange_id, started_at_ns, route_id, status, has_secondary)"
            " VALUES (?, ?, ?, ?, ?)",
            (exchange_id, started_at_ns, route_id, status, int(has_secondary)),
        )
        return cursor.lastrowid if cursor.rowcount == 1 else None

    def add_differences(self, rows: Sequence[tuple[int, int, str, str, str | None]]) -> None:
        """Rows of (pair_id, key_id, side, full_path, volatile)."""
        self._db.executemany("INSERT INTO differences VALUES (?, ?, ?, ?, ?)", rows)

    def add_example(self, pair_id: int, exchange: Exchange, keys: Sequence[tuple[int, float]]) -> None:
        blob = msgpack.packb(exchange_to_wire(exchange), use_bin_type=True)
        self._db.execute("INSERT OR REPLACE INTO example_exchanges VALUES (?, ?)", (pair_id, blob))
        self._db.executemany(
            "INSERT OR REPLACE INTO examples VALUES (?, ?, ?)", [(pair_id, key_id, p) for key_id, p in keys]
        )

    def routes(self) -> Iterator[tuple[int, str, str, str]]:
        """(id, method, path, endpoint) of every stored route, streamed."""
        yield from self._db.execute("SELECT id, method, path, endpoint FROM routes ORDER BY id")

    def set_endpoints(self, updates: Sequence[tuple[str, int]]) -> None:
        """Rows of (endpoint, route_id): the learned templates, applied once all paths are known."""
        self._db.executemany("UPDATE routes SET endpoint = ? WHERE id = ?", updates)
        self._db.commit()

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

    def endpoint_counts(
        self, since_ns: int | None, until_ns: int | None, endpoint: str | None
    ) -> list[EndpointCountsRow]:
        """Per endpoint: pairs, compared, errors, pairs with a secondary answer (compared pairs with
        one, plus noise-only pairs from a noise tape), first and last start of the real pairs.
        Endpoints seen only in a noise tape are left out."""
        where, params = self._window(since_ns, until_ns, endpoint)
        rows = self._db.execute(
            "SELECT r.endpoint, sum(p.status != 'noise'), sum(p.status = 'compared'), sum(p.status = 'error'),"
            " sum(p.status != 'error' AND p.has_secondary),"
            " min(CASE WHEN p.status != 'noise' THEN p.started_at_ns END),"
            " max(CASE WHEN p.status != 'noise' THEN p.started_at_ns END)"
            f" FROM pairs p JOIN routes r ON r.id = p.route_id WHERE {where} GROUP BY r.endpoint"
            " HAVING sum(p.status != 'noise') > 0",
            params,
        ).fetchall()
        return [EndpointCountsRow(*row) for row in rows]

    def differences(
        self, since_ns: int | None, until_ns: int | None, endpoint: str | None
    ) -> Iterator[StoredDifference]:
        """Every stored difference in the window, grouped by pair (ordered by pair id), streamed."""
        where, params = self._window(since_ns, until_ns, endpoint)
        for row in self._db.execute(
            "SELECT d.pair_id, r.endpoint, p.started_at_ns, p.status, d.key_id, k.path, k.kind, k.transition,"
            " d.side, d.full_path, d.volatile"
            " FROM differences d JOIN pairs p ON p.id = d.pair_id JOIN routes r ON r.id = p.route_id"
            f" JOIN diff_keys k ON k.id = d.key_id WHERE {where} ORDER BY d.pair_id",
            params,
        ):
            yield StoredDifference(*row)

    def example_pairs(
        self, endpoint: str, key_id: int, limit: int, since_ns: int | None, until_ns: int | None
    ) -> list[int]:
        """The sampled pairs showing ``key_id`` at ``endpoint``: the ``limit`` smallest priorities,
        which is a uniform sample of the union of the samples taken during ingestion."""
        where, params = self._window(since_ns, until_ns, endpoint)
        rows = self._db.execute(
            "SELECT e.pair_id FROM examples e JOIN pairs p ON p.id = e.pair_id JOIN routes r ON r.id = p.route_id"
            f" WHERE e.key_id = ? AND {where} ORDER BY e.priority LIMIT ?",
            [key_id, *params, limit],
        ).fetchall()
        return [row[0] for row in rows]

    def pair_differences(self, pair_id: int) -> list[tuple[int, str, str | None]]:
        """(key_id, full_path, volatile) of one pair's candidate-side differences."""
        return self._db.execute(
            "SELECT key_id, full_path, volatile FROM differences WHERE pair_id = ? AND side = 'candidate'",
            (pair_id,),
        ).fetchall()

    def example_exchange(self, pair_id: int) -> Exchange:
        row = self._db.execute("SELECT exchange FROM example_exchanges WHERE pair_id = ?", (pair_id,)).fetchone()
        if row is None:
            raise InputFormatError(f"example for pair {pair_id} is missing", path=self.path)
        return exchange_from_wire(msgpack.unpackb(row[0], raw=False, use_list=False))
