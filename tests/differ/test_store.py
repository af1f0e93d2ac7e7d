"""The SQLite store: schema, refusals, and what a run leaves behind."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from shadowtap.differ import DifferConfig, DiffSession, DiffStore, RunMeta, build_report
from shadowtap.differ.pipeline import EXAMPLE_BODY_LIMIT_BYTES
from shadowtap.differ.store import SCHEMA_VERSION
from shadowtap.recorder import Exchange, Request, Response
from shadowtap.recorder.errors import ConfigError, InputFormatError

META = RunMeta("primary", "v2", None, ("tape-a",))


def test_meta_round_trip_and_sources_accumulate(tmp_path: Path) -> None:
    store = DiffStore(tmp_path / "r.db")
    assert store.meta() is None
    store.set_meta(META)
    store.set_meta(RunMeta("primary", "v2", None, ("tape-b", "tape-a")))
    assert store.meta() == RunMeta("primary", "v2", None, ("tape-a", "tape-b"))
    with pytest.raises(ConfigError, match="use another --db"):
        store.set_meta(RunMeta("primary", "v3", None, ()))


def test_refuses_other_files_and_versions(tmp_path: Path) -> None:
    (tmp_path / "text.db").write_text("this is not sqlite" * 100)
    with pytest.raises(InputFormatError):
        DiffStore(tmp_path / "text.db")
    with pytest.raises(ConfigError, match="no such results database"):
        DiffStore(tmp_path / "missing.db", create=False)
    with closing(sqlite3.connect(tmp_path / "other.db")) as db, db:
        db.execute("CREATE TABLE mine (x)")
    with pytest.raises(InputFormatError, match="no meta table"):
        DiffStore(tmp_path / "other.db", create=False)
    with closing(sqlite3.connect(tmp_path / "other.db")) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["mine"]
    DiffStore(tmp_path / "new.db").close()
    with closing(sqlite3.connect(tmp_path / "new.db")) as db, db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(InputFormatError, match="schema version"):
        DiffStore(tmp_path / "new.db")


def test_examples_are_capped_and_redacted(tmp_path: Path) -> None:
    store = DiffStore(tmp_path / "r.db")
    session = DiffSession(store, DifferConfig(), META)
    big = b"x" * (EXAMPLE_BODY_LIMIT_BYTES + 10)
    session.add(
        Exchange(
            id="big",
            started_at_ns=1,
            request=Request("POST", "/u", ((b"Cookie", b"sid=secret"),), big),
            primary=Response(200, "", ((b"Set-Cookie", b"sid=1"),), b"a"),
            shadows={"v2": Response(200, "", (), b"b")},
        )
    )
    session.finish()
    with closing(sqlite3.connect(tmp_path / "r.db")) as db:
        [(pair_id,)] = db.execute("SELECT DISTINCT pair_id FROM examples").fetchall()
    example = store.example_exchange(pair_id)
    assert example.request.header(b"cookie") == b"[redacted]"
    assert isinstance(example.primary, Response) and example.primary.header(b"set-cookie") == b"[redacted]"
    assert len(example.request.body) == EXAMPLE_BODY_LIMIT_BYTES
    assert example.request.truncated_from == len(big)
    assert example.response("candidate") == Response(200, "", (), b"b")


def test_signatures_view(tmp_path: Path) -> None:
    store = DiffStore(tmp_path / "r.db")
    session = DiffSession(store, DifferConfig(), META)
    for i in range(30):
        session.add(
            Exchange(
                id=str(i),
                started_at_ns=i,
                request=Request("GET", f"/items/{i}"),
                primary=Response(200, "", (), b'{"n": 1}'),
                shadows={"v2": Response(200, "", (), b'{"n": 2}' if i % 3 else b'{"n": 1}')},
            )
        )
    session.finish()
    store.close()
    with closing(sqlite3.connect(tmp_path / "r.db")) as db:
        rows = db.execute("SELECT endpoint, path, kind, transition, pairs, first_seen_ns FROM signatures").fetchall()
    assert rows == [("GET /items/{id}", "body.n", "value", "int->int", 20, 1)]


def test_the_store_and_its_journals_are_private(tmp_path: Path) -> None:
    import os
    import stat

    stale = tmp_path / "r.db-wal"
    stale.write_bytes(b"")
    stale.chmod(0o644)
    previous = os.umask(0o022)
    try:
        store = DiffStore(tmp_path / "r.db")
        store.set_meta(META)
        store._db.execute("PRAGMA journal_mode=PERSIST")  # keep the rollback journal to look at
        store.set_meta(RunMeta("primary", "v2", None, ("tape-b",)))
        store.close()
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert {"r.db", "r.db-journal", "r.db-wal"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


def test_an_uncreatable_store_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot create results database") as info:
        DiffStore(tmp_path / "missing-dir" / "r.db")
    assert info.value.path == str(tmp_path / "missing-dir" / "r.db")


def test_a_store_of_an_older_schema_is_refused_untouched_with_its_version(tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "old.db")) as db, db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute("CREATE TABLE differences (pair_id INTEGER)")
    with pytest.raises(InputFormatError, match=r"schema version 1, this shadowtap reads 2; .*shadowtap diff"):
        DiffStore(tmp_path / "old.db", create=False)
    with closing(sqlite3.connect(tmp_path / "old.db")) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
    assert names == {"meta", "differences"}


def test_noise_is_counted_through_sets_not_stored_per_pair(tmp_path: Path) -> None:
    store = DiffStore(tmp_path / "r.db")
    session = DiffSession(store, DifferConfig(), RunMeta("primary", "v2", "secondary", ()))
    for i in range(200):
        noisy = Response(200, "", (), b'{"n": 1, "t": %d}' % i)
        session.add(
            Exchange(
                id=str(i),
                started_at_ns=i,
                request=Request("GET", f"/items/{i}"),
                primary=Response(200, "", (), b'{"n": 1, "t": 0}'),
                shadows={"v2": Response(200, "", (), b'{"n": 2, "t": 0}'), "secondary": noisy},
            )
        )
    session.finish()
    store.close()
    with closing(sqlite3.connect(tmp_path / "r.db")) as db:
        assert db.execute("SELECT count(*) FROM pairs").fetchone() == (200,)
        # One candidate set (body.n), one noise set (body.t) and nothing per pair beyond the pair row.
        assert db.execute("SELECT count(*) FROM diff_sets").fetchone() == (2,)
        assert db.execute("SELECT count(DISTINCT noise_set) FROM pairs WHERE noise_set != 0").fetchone() == (1,)


def sqlite_steps(store: DiffStore, work: Callable[[], object]) -> int:
    """SQLite virtual machine steps (in thousands) that ``work`` costs on ``store``."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    store._db.set_progress_handler(count, 1000)
    try:
        work()
    finally:
        store._db.set_progress_handler(None, 0)
    return steps


def test_a_window_or_an_endpoint_reads_only_its_pairs(tmp_path: Path) -> None:
    store = DiffStore(tmp_path / "r.db")
    session = DiffSession(store, DifferConfig(), META)
    for i in range(20_000):
        session.add(
            Exchange(
                id=str(i),
                started_at_ns=i,
                request=Request("GET", "/rare" if i % 100 == 0 else f"/items/{i}"),
                primary=Response(200, "", (), b'{"n": 1}'),
                shadows={"v2": Response(200, "", (), b'{"n": %d}' % (i % 3))},
            )
        )
    session.finish()
    config = DifferConfig()
    whole = sqlite_steps(store, lambda: build_report(store, config))
    window = sqlite_steps(store, lambda: build_report(store, config, since_ns=19_800))
    endpoint = sqlite_steps(store, lambda: build_report(store, config, endpoint="GET /rare"))
    assert build_report(store, config, since_ns=19_800).pairs == 200
    assert build_report(store, config, endpoint="GET /rare").pairs == 200
    # One percent of the pairs costs a few percent of the whole, not the whole.
    assert window < whole / 10 and endpoint < whole / 10, (whole, window, endpoint)
