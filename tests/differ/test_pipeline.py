"""Ingestion: counting pairs, sampling examples within bounds, learning endpoints at the end."""

from __future__ import annotations

import dataclasses
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

import shadowtap.differ.pipeline as pipeline
from shadowtap.differ import DifferConfig, DiffSession, DiffStore, RunMeta, config_from_mapping, relearn_endpoints
from shadowtap.recorder import Exchange, Failure, FailureKind, Request, Response

META = RunMeta("primary", "v2", None, ())


def pair(i: int, candidate: Response | Failure, path: str = "") -> Exchange:
    return Exchange(
        id=f"e{i}",
        started_at_ns=i,
        request=Request("GET", path or f"/things/{i}"),
        primary=Response(200, "", (), b'{"n": 1, "s": "a"}'),
        shadows={"v2": candidate},
    )


def test_stats_and_samples(tmp_path: Path) -> None:
    store = DiffStore(tmp_path / "r.db")
    session = DiffSession(store, DifferConfig(examples_per_signature=2), META)
    for i in range(300):
        session.add(pair(i, Response(200, "", (), b'{"n": 2, "s": "b"}')))
    session.add(pair(0, Response(200, "", (), b"{}")))  # the same exchange id again
    session.add(pair(301, Failure(FailureKind.SAMPLED_OUT)))
    session.add(pair(302, Failure(FailureKind.TIMEOUT)))
    stats = session.finish()
    assert (stats.exchanges, stats.compared, stats.duplicates, stats.skipped, stats.errors) == (303, 300, 1, 1, 1)
    with closing(sqlite3.connect(tmp_path / "r.db")) as db:
        per_key = db.execute("SELECT key_id, count(*) FROM examples GROUP BY key_id").fetchall()
        stored = db.execute("SELECT count(*) FROM example_exchanges").fetchone()[0]
        endpoints = {row[0] for row in db.execute("SELECT DISTINCT endpoint FROM routes")}
    # Two keys (body.n, body.s) from 300 pairs and one error key: at most 2 examples each.
    assert sorted(n for _, n in per_key) == [1, 2, 2]
    assert stored <= 5
    assert endpoints == {"GET /things/{id}"}


def test_samples_are_uniform_over_the_run(tmp_path: Path) -> None:
    picked: list[int] = []
    for run in range(40):
        store = DiffStore(":memory:")
        session = DiffSession(store, DifferConfig(examples_per_signature=1), META)
        for i in range(20):
            exchange = pair(i, Response(200, "", (), b'{"n": 2, "s": "a"}'), path="/same")
            session.add(dataclasses.replace(exchange, id=f"run{run}-{i}"))
        session.finish()
        key = store.key_id("body.n", "value", "int->int")
        [exchange] = [store.example_exchange(p) for p in store.example_pairs("GET /same", key, 1, None, None)]
        picked.append(int(exchange.id.rpartition("-")[2]))
    # Bottom-k keeps the smallest priorities (a hash of the exchange id): every position can win,
    # not just the first ones.
    assert len(set(picked)) > 8 and max(picked) >= 10


def test_relearn_applies_new_routes(tmp_path: Path) -> None:
    store = DiffStore(tmp_path / "r.db")
    session = DiffSession(store, DifferConfig(), META)
    for i in range(5):
        session.add(pair(i, Response(200, "", (), b'{"n": 2, "s": "a"}'), path=f"/docs/page-{chr(97 + i)}"))
    session.finish()
    assert {r[3] for r in store.routes()} == {f"GET /docs/page-{chr(97 + i)}" for i in range(5)}
    assert relearn_endpoints(store, config_from_mapping({"routes": ["GET /docs/{page}"]})) == 5  # routes changed
    assert {r[3] for r in store.routes()} == {"GET /docs/{page}"}
    assert relearn_endpoints(store, config_from_mapping({"routes": ["GET /docs/{page}"]})) == 0


def test_relearning_gives_the_same_endpoints_whether_the_routes_are_held_or_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = Response(200, "", (), b'{"n": 2, "s": "a"}')
    slugs = [f"{a}-{b}" for a in ("red", "blue", "green", "amber") for b in ("fox", "owl", "elk", "yak", "emu")]
    learned, changed = [], []
    for held in (100_000, 10):  # 400 routes: held in memory, then streamed three times
        monkeypatch.setattr(pipeline, "_LEARN_HELD_ROUTES", held)
        store = DiffStore(tmp_path / f"r{held}.db")
        session = DiffSession(store, DifferConfig(), META)
        for i in range(400):
            paths = (f"/files/{i}", f"/pages/{slugs[i % 20]}-{i}", f"/api/{slugs[i % 7]}", f"/docs/{slugs[i % 3]}")
            session.add(pair(i, body, path=paths[i % 4]))
        session.finish(relearn=False)
        changed.append(relearn_endpoints(store, DifferConfig()))
        learned.append({(method, path): endpoint for _, method, path, endpoint in store.routes()})
    assert learned[0] == learned[1]
    assert changed[0] == changed[1]
    endpoints = set(learned[0].values())
    assert {"GET /files/{id}", *(f"GET /api/{s}" for s in slugs[:7]), *(f"GET /docs/{s}" for s in slugs[:3])} <= (
        endpoints
    )


def test_relearning_keeps_a_busy_literal_apart_from_the_ids_beside_it_by_its_pair_count(tmp_path: Path) -> None:
    """``/users/me`` is one stored route among 3,000 ids: its 60 pairs (2 % of the position) keep
    it apart; ``/users/you``, twice, is an id like the others."""
    body = Response(200, "", (), b'{"n": 2, "s": "a"}')
    store = DiffStore(tmp_path / "r.db")
    session = DiffSession(store, DifferConfig(), META)
    for i in range(3_000):
        session.add(pair(i, body, path=f"/users/{i}"))
        if i % 50 == 0:
            session.add(pair(10_000 + i, body, path="/users/me"))
        if i in (5, 2_500):
            session.add(pair(20_000 + i, body, path="/users/you"))
    session.finish()
    endpoints = {path: endpoint for _, _, path, endpoint in store.routes()}
    assert endpoints["/users/me"] == "GET /users/me"
    assert endpoints["/users/you"] == endpoints["/users/17"] == "GET /users/{id}"


def test_examples_keep_no_credential_header_the_tape_redacts(tmp_path: Path) -> None:
    # The results store blanks the tape's own list of credential headers, X-Auth-Token included.
    store = DiffStore(":memory:")
    session = DiffSession(store, DifferConfig(examples_per_signature=1), META)
    headers = ((b"X-Auth-Token", b"tok-123"), (b"Authorization", b"Bearer abc"), (b"Accept", b"*/*"))
    exchange = Exchange(
        id="e1",
        started_at_ns=1,
        request=Request("GET", "/secret", headers),
        primary=Response(200, "", ((b"Set-Cookie", b"sid=1"),), b'{"n": 1}'),
        shadows={"v2": Response(200, "", (), b'{"n": 2}')},
    )
    session.add(exchange)
    session.finish()
    key = store.key_id("body.n", "value", "int->int")
    [stored] = [store.example_exchange(p) for p in store.example_pairs("GET /secret", key, 1, None, None)]
    assert stored.request.headers == ((b"X-Auth-Token", b"[redacted]"), (b"Authorization", b"[redacted]"),
                                      (b"Accept", b"*/*"))  # fmt: skip
    assert isinstance(stored.primary, Response)
    assert stored.primary.headers == ((b"Set-Cookie", b"[redacted]"),)
