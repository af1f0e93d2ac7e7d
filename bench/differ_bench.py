"""Differ benchmark: identical pairs/s and differing 2 KiB JSON pairs/s on one core, with baselines.

What is measured, each over the same pre-built exchanges, in this one process (one core):

* ``json.loads x2`` baseline: parsing both bodies of a pair, the least any semantic diff must do;
* ``identical``: ``DiffEngine.compare_exchange`` on pairs whose bodies are byte-equal and whose
  headers differ only in Date / X-Request-Id (the common case in production);
* ``canonical-equal``: same JSON, different key order and whitespace (no byte fast path);
* ``differing 2 KiB JSON``: a few changed values, volatile ids and timestamps, a changed array;
* ``deepdiff`` reference: ``DeepDiff`` on the same differing pairs (parsed), what a naive differ does;
* ``ingest``: engine plus the SQLite store (what ``shadowtap diff`` does per exchange).

Budgets (DESIGN.md): >= 200,000 identical pairs/s and >= 10,000 differing 2 KiB JSON pairs/s on one
core, checked here per CPU-second of this process (wall-clock rates are printed alongside, and are
lower whenever the machine is shared). Ratios are against the json.loads baseline of the same run. Never run in a
test, never touches the network. Usage::

    .venv/bin/python bench/differ_bench.py [--pairs 20000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shadowtap.differ import CompareOptions, DiffEngine, DifferConfig, DiffSession, DiffStore, RunMeta
from shadowtap.recorder import Exchange, Request, Response

CT = (b"Content-Type", b"application/json")


def document(rng: random.Random, *, changed: bool) -> dict[str, Any]:
    items = [
        {
            "sku": f"SKU-{i:04d}",
            "name": f"Product number {i} with a descriptive name",
            "price": round(10 + i * 1.25, 2),
            "tags": ["sale", "eco", "new"][: 1 + i % 3],
            "stock": 100 - i,
        }
        for i in range(14)
    ]
    doc: dict[str, Any] = {
        "request_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "generated_at": f"2024-05-01T10:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z",
        "user": {"id": 42, "name": "Ada", "email": "ada@example.com", "roles": ["admin", "dev"]},
        "items": items,
        "total": 1234.5,
    }
    if changed:
        doc["total"] = 1234.75
        doc["items"][3]["price"] = 99.0
        doc["user"]["roles"] = ["dev"]
        del doc["user"]["email"]
    return doc


def headers(rng: random.Random) -> tuple[tuple[bytes, bytes], ...]:
    return (
        CT,
        (b"Date", f"Wed, 01 May 2024 10:00:{rng.randrange(60):02d} GMT".encode()),
        (b"X-Request-Id", str(uuid.UUID(int=rng.getrandbits(128))).encode()),
        (b"Cache-Control", b"no-store"),
    )


def exchange(i: int, primary: Response, candidate: Response) -> Exchange:
    return Exchange(
        id=f"b{i}",
        started_at_ns=1_714_557_600_000_000_000 + i,
        request=Request("GET", f"/users/{i % 500}/cart"),
        primary=primary,
        shadows={"v2": candidate},
    )


def build(kind: str, count: int, rng: random.Random) -> list[Exchange]:
    out: list[Exchange] = []
    for i in range(count):
        base = document(rng, changed=False)
        body = json.dumps(base).encode()
        if kind == "identical":
            other = body
        elif kind == "canonical":
            other = json.dumps(dict(reversed(list(base.items()))), indent=1).encode()
        else:
            changed = document(rng, changed=True)
            other = json.dumps(changed).encode()
        out.append(exchange(i, Response(200, "OK", headers(rng), body), Response(200, "OK", headers(rng), other)))
    return out


def rate(label: str, items: Sequence[Any], work: Callable[[Any], object], seconds: float) -> float:
    """Pairs per CPU-second of ``work`` over ``items``, repeated until ``seconds`` of wall time (bounded).

    CPU time, not wall time, is what "one core" means on a machine shared with other work: a process
    that waits for the scheduler is not slower, it is not running. Wall-clock rates are printed too.
    """
    done = 0
    started, started_cpu = time.perf_counter(), time.process_time()
    deadline = started + seconds
    while True:
        for item in items:
            work(item)
        done += len(items)
        now = time.perf_counter()
        if now >= deadline or done >= 50 * len(items):
            break
    per_cpu_s = done / (time.process_time() - started_cpu)
    print(f"  {label:<28} {per_cpu_s:>12,.0f} pairs/CPU-s  ({done / (now - started):>10,.0f} pairs/s wall)")
    return per_cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5_000, help="distinct pairs per workload")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()
    rng = random.Random(1)
    identical = build("identical", args.pairs, rng)
    canonical = build("canonical", args.pairs, rng)
    differing = build("differing", args.pairs, rng)
    size = len(differing[0].request.target), len(differing[0].primary.body)  # type: ignore[union-attr]
    engine = DiffEngine(CompareOptions(unordered_paths=("body.user.roles",)), candidate="v2")

    def bodies(ex: Exchange) -> tuple[bytes, bytes]:
        return ex.primary.body, ex.shadows["v2"].body  # type: ignore[union-attr]

    print(f"differ_bench: {args.pairs} distinct pairs per workload, JSON body {size[1]} bytes, one process")
    baseline = rate("json.loads x2 (baseline)", differing, lambda ex: [json.loads(b) for b in bodies(ex)], args.seconds)
    ident = rate("identical", identical, engine.compare_exchange, args.seconds)
    canon = rate("canonical-equal", canonical, engine.compare_exchange, args.seconds)
    diff = rate("differing 2 KiB JSON", differing, engine.compare_exchange, args.seconds)
    from deepdiff import DeepDiff

    parsed = [tuple(json.loads(b) for b in bodies(ex)) for ex in differing[: max(1, args.pairs // 10)]]
    deep = rate("deepdiff (reference)", parsed, lambda pair: DeepDiff(pair[0], pair[1]), args.seconds)

    with tempfile.TemporaryDirectory() as tmp:
        store = DiffStore(Path(tmp) / "bench.sqlite")
        session = DiffSession(store, DifferConfig(), RunMeta("primary", "v2", None, ()))
        mixed = [ex for pair in zip(identical, differing, strict=True) for ex in pair]
        started_cpu = time.process_time()
        for ex in mixed:
            session.add(ex)
        session.finish()
        ingest = len(mixed) / (time.process_time() - started_cpu)
        store.close()
    print(f"  {'ingest (engine + SQLite)':<28} {ingest:>12,.0f} pairs/CPU-s  (half identical, half differing)")

    print("\nratios (same run):")
    print(f"  identical / json.loads baseline        {ident / baseline:6.2f}x")
    print(f"  differing / json.loads baseline        {diff / baseline:6.2f}x")
    print(f"  differing / deepdiff                   {diff / deep:6.2f}x")
    print(f"  identical vs budget 200,000/CPU-s      {ident / 200_000:6.2f}x  {'ok' if ident >= 200_000 else 'BELOW'}")
    print(f"  differing vs budget 10,000/CPU-s       {diff / 10_000:6.2f}x  {'ok' if diff >= 10_000 else 'BELOW'}")
    print(f"  canonical-equal / identical            {canon / ident:6.2f}x")


if __name__ == "__main__":
    main()
