"""Tape fuzz: many records of the wrong shape (valid checksums) through the decoder and the reader.

Each record is a valid exchange record with one position changed at random: a value or container
swapped for another msgpack value, an array cut short, a map turned into an array of pairs or the
other way round, a map key made bin. Every record goes through the exact decode the reader runs
(msgpack, then ``exchange_from_wire``), and every batch is written as a segment (plain or one zstd
block) and read back with salvage on. It prints what happened, by kind:

- accepted: the change still fit the layout; the Exchange is checked value by value;
- refused: a ``TapeFormatError`` naming the field (counted by its top-level field);
- bugs: a refusal without a field, any other exception, an ill-typed Exchange, a salvaging reader
  that raised or lost count. The script exits 1 when there is any, and prints the first few.

tests/recorder/test_reader_fuzz.py is the bounded version (Hypothesis, in ``make test``).

    .venv/bin/python bench/tape_fuzz.py [--records N] [--seed S] [--batch B]
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shadowtap.recorder import (  # noqa: E402
    Exchange,
    Failure,
    FailureKind,
    Request,
    Response,
    TapeFormatError,
    TapeReader,
    Timing,
    _frames,
    exchange_from_wire,
    exchange_to_wire,
)

_FIELD_NAMES = ["id", "started_at_ns", "started_mono_ns", "request", "primary", "shadows", "timings"]
_FIELD_NAMES += ["session", "connection_id", "client_addr", "decisions", "tags"]


def _lists(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def base_records() -> list[list[Any]]:
    """Valid records that between them use every position of the layout."""
    full = Exchange(
        id="full",
        started_at_ns=1_763_780_000_000_000_000,
        started_mono_ns=42,
        request=Request(
            "POST", "/users/7?x=1", ((b"Host", b"api"), (b"X-Dup", b"a"), (b"x-dup", b"b")), b'{"n":1}', "http", "api"
        ),
        primary=Response(201, "Created", ((b"Content-Type", b"application/json"),), b'{"id":7}'),
        shadows={"v2": Response(500, "Oops", (), b"boom", truncated_from=10_000), "v3": Failure(FailureKind.TIMEOUT)},
        timings={"primary": Timing(0, 1_000, 2_000), "v3": Timing(5, None, None)},
        session="s1",
        connection_id="c9",
        client_addr="127.0.0.1:5555",
        decisions={"v2": "mirrored", "v4": FailureKind.SAMPLED_OUT},
        tags={"source": "fuzz"},
    )
    varied = Exchange(
        id="varied",
        started_at_ns=5,
        request=Request("GET", "/", (), b"", "https", "api", "2", truncated_from=9),
        primary=Failure(FailureKind.RESET, "peer reset"),
    )
    return [_lists(exchange_to_wire(e)) for e in (full, varied)]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """Any value msgpack encodes (map keys str or bin: msgpack refuses others when reading)."""
    kind = rng.randrange(9 if depth < 2 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 200, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-(10**12), 10**12)])
    if kind == 3:
        return rng.choice([0.0, -1.5, float("inf"), float("nan"), 200.0])
    if kind == 4:
        return rng.choice(["", "GET", "200", "é", "\x00", "primary"])
    if kind == 5:
        return rng.choice([b"", b"GET", b"\xff\x00", b"Host"])
    if kind == 6:
        return msgpack.ExtType(rng.randrange(128), b"x")
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(["a", "v2", "primary", b"k"]): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def positions(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, list):
        for i, child in enumerate(node):
            out += positions(child, (*path, i))
    elif isinstance(node, dict):
        for key, child in node.items():
            out += positions(child, (*path, key))
    return out


def mutate(rng: random.Random, bases: list[list[Any]]) -> tuple[Any, tuple[Any, ...]]:
    """A base record with one position changed, and that position."""
    record: Any = copy.deepcopy(rng.choice(bases))
    path = rng.choice(positions(record))
    node: Any = record
    for key in path:
        node = node[key]
    how = rng.randrange(3)
    new: Any
    if isinstance(node, list) and how == 1:
        new = node[: rng.randrange(len(node) + 1)]
    elif isinstance(node, list) and how == 2:
        new = {str(i): v for i, v in enumerate(node)}
    elif isinstance(node, dict) and node and how == 1:
        new = [[k, v] for k, v in node.items()]
    elif isinstance(node, dict) and node and how == 2:
        new = {(k.encode() if isinstance(k, str) and i == 0 else k): v for i, (k, v) in enumerate(node.items())}
    else:
        new = random_value(rng)
    if not path:
        return new, path
    parent: Any = record
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return record, path


def ill_typed(ex: Exchange) -> str | None:
    """The first value of ``ex`` whose type is not what the model says, or None."""

    def headers(value: Any) -> bool:
        return type(value) is tuple and all(
            type(h) is tuple and len(h) == 2 and type(h[0]) is bytes and type(h[1]) is bytes for h in value
        )

    def optional_int(value: Any) -> bool:
        return value is None or type(value) is int

    def str_map(value: Any) -> bool:
        return type(value) is dict and all(type(k) is str and type(v) is str for k, v in value.items())

    def outcome(value: Any) -> bool:
        if type(value) is Failure:
            return type(value.kind) is str and type(value.message) is str
        return (
            type(value) is Response
            and type(value.status) is int
            and type(value.reason) is str
            and headers(value.headers)
            and type(value.body) is bytes
            and type(value.http_version) is str
            and optional_int(value.truncated_from)
        )

    req = ex.request
    checks = {
        "exchange": type(ex.id) is str and type(ex.started_at_ns) is int and type(ex.started_mono_ns) is int,
        "names": all(type(v) is str for v in (ex.session, ex.connection_id, ex.client_addr)),
        "request": type(req) is Request
        and all(type(v) is str for v in (req.method, req.target, req.scheme, req.authority, req.http_version))
        and headers(req.headers)
        and type(req.body) is bytes
        and optional_int(req.truncated_from),
        "primary": ex.primary is None or outcome(ex.primary),
        "shadows": type(ex.shadows) is dict and all(type(k) is str and outcome(v) for k, v in ex.shadows.items()),
        "timings": type(ex.timings) is dict
        and all(
            type(k) is str
            and type(t) is Timing
            and optional_int(t.sent_ns)
            and optional_int(t.first_byte_ns)
            and optional_int(t.done_ns)
            for k, t in ex.timings.items()
        ),
        "maps": str_map(ex.decisions) and str_map(ex.tags),
    }
    return next((name for name, ok in checks.items() if not ok), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="mutated records to try (default 100,000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--batch", type=int, default=500, help="records per segment read back with salvage")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    bases = base_records()
    counts: Counter[str] = Counter()
    refused_by_field: Counter[str] = Counter()
    bugs: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tape-fuzz-") as work:
        done = 0
        while done < args.records:
            batch = [mutate(rng, bases) for _ in range(min(args.batch, args.records - done))]
            payloads = [msgpack.packb(record, use_bin_type=True) for record, _ in batch]
            accepted = 0
            for payload, (record, path) in zip(payloads, batch, strict=True):
                try:
                    ex = exchange_from_wire(msgpack.unpackb(payload, raw=False, use_list=False))
                except TapeFormatError as exc:
                    if exc.field is None:
                        bugs.append(f"refused without a field: {exc} (changed {path}: {record!r:.300})")
                    else:
                        counts["refused"] += 1
                        refused_by_field[exc.field.split(".")[0].split("[")[0]] += 1
                    continue
                except Exception as exc:
                    bugs.append(f"{type(exc).__name__}: {exc} (changed {path}: {record!r:.300})")
                    continue
                wrong = ill_typed(ex)
                if wrong is not None:
                    bugs.append(f"accepted an ill-typed exchange ({wrong}) (changed {path}: {record!r:.300})")
                    continue
                counts["accepted"] += 1
                accepted += 1
            frames = b"".join(_frames.encode_frame(_frames.KIND_EXCHANGE, p) for p in payloads)
            zstd = (done // args.batch) % 2 == 1
            if zstd:
                import zstandard

                frames = _frames.encode_frame(_frames.KIND_ZSTD_BLOCK, zstandard.ZstdCompressor().compress(frames))
            segment = Path(work) / "seg.stape"
            segment.write_bytes(_frames.encode_segment_header(_frames.FLAG_ZSTD if zstd else 0) + frames)
            try:
                reader = TapeReader(segment, salvage=True)
                read = sum(1 for ex in reader if ill_typed(ex) is None)
                skipped = len(reader.report.skipped_ranges)
                if (read, skipped) != (accepted, len(batch) - accepted):
                    bugs.append(f"salvage read {read} and skipped {skipped} of {len(batch)}, expected {accepted} read")
            except Exception as exc:
                bugs.append(f"salvaging reader raised {type(exc).__name__}: {exc}")
            counts["segments"] += 1
            done += len(batch)
    elapsed = time.perf_counter() - started
    print(f"records {args.records:,} (seed {args.seed}) in {elapsed:.1f} s, {args.records / elapsed:,.0f}/s")
    print(f"accepted {counts['accepted']:,} (the change still fit the layout; every value checked)")
    print(f"refused  {counts['refused']:,} with the field named, by top-level field:")
    for name, count in sorted(refused_by_field.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {name:16}{count:>9,}")
    print(f"segments {counts['segments']:,} read back with salvage (plain and zstd alternately)")
    print(f"bugs     {len(bugs):,}")
    for bug in bugs[:10]:
        print(f"  {bug}")
    return 1 if bugs else 0


if __name__ == "__main__":
    raise SystemExit(main())
