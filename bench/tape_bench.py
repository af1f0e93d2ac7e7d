"""Tape speed: write and read 1 KiB exchanges, against baselines measured in the same run.

Budgets (DESIGN.md): write >= 100,000 exchanges/s of 1 KiB, read >= 150,000/s, one core. Rates are
per CPU second of this process (what "one core" means, and what other work on a shared machine
disturbs least), with wall-clock rates beside them, and each is also a ratio against a baseline
timed in the same run: for writing, bare msgpack encoding plus one buffered file write
(no framing, checksum, redaction or rotation); for reading, bare msgpack decoding plus building the
Exchange objects from bytes in memory (no file, framing or checksum). The ratio is the price of
the tape's safety. This script must never assert on timings: it prints figures.

    .venv/bin/python bench/tape_bench.py [--count N] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shadowtap.recorder import (  # noqa: E402
    Exchange,
    Request,
    Response,
    SyncTapeWriter,
    TapeOptions,
    TapeReader,
    TapeWriter,
    Timing,
    exchange_from_wire,
    exchange_to_wire,
)

BUDGET_WRITE_PER_S = 100_000
BUDGET_READ_PER_S = 150_000


def make_exchanges(count: int) -> list[Exchange]:
    """Realistic 1 KiB exchanges: a GET with a bearer token, a JSON answer that varies per request."""
    out = []
    for i in range(count):
        body = json.dumps(
            {
                "id": i,
                "name": f"user-{i}",
                "email": f"user{i}@example.com",
                "plan": ("free", "pro", "team")[i % 3],
                "created_at": f"2026-11-{1 + i % 28:02d}T10:{i % 60:02d}:00Z",
                "tags": ["alpha", "beta", "gamma"][: 1 + i % 3],
                "balance_cents": (i * 7919) % 100_000,
                "bio": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
                "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud "
                "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure "
                "dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur. "
                "Excepteur sint occaecat cupidatat non proident.",
                "request_id": f"{i * 2654435761 % 2**32:08x}-{i:06d}",
            }
        ).encode()
        out.append(
            Exchange(
                id=f"{i:016x}",
                started_at_ns=1_763_780_000_000_000_000 + i * 50_000,
                started_mono_ns=i * 50_000,
                request=Request(
                    "GET",
                    f"/api/users/{i}?fields=all",
                    (
                        (b"Host", b"api.internal:8080"),
                        (b"User-Agent", b"shop-web/4.2 (+https://example.com)"),
                        (b"Accept", b"application/json"),
                        (b"Authorization", b"Bearer eyJhbGciOiJIUzI1NiJ9.user-%d" % (i % 50)),
                    ),
                    b"",
                    authority="api.internal:8080",
                ),
                primary=Response(
                    200,
                    "OK",
                    ((b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())),
                    body,
                ),
                timings={"primary": Timing(1_000, 250_000, 300_000)},
                session=f"s{i % 997}",
                connection_id=f"c{i % 64}",
                client_addr="10.0.0.7:51234",
                tags={"source": "bench"},
            )
        )
    return out


def best_rates(count: int, repeat: int, tasks: dict[str, Callable[[], object]]) -> dict[str, tuple[float, float]]:
    """(items per CPU second, items per wall second) of each task, best of ``repeat`` runs.

    CPU time (user + system, this process) is what "one core" budgets mean, and it is what other
    work on a shared machine disturbs least; wall time is printed beside it. Tasks run round-robin
    (all tasks, ``repeat`` times over), so a baseline and the figure compared with it see the same
    background load, and each starts from a collected heap.
    """
    best_cpu_s = dict.fromkeys(tasks, float("inf"))
    best_wall_s = dict.fromkeys(tasks, float("inf"))
    for _ in range(repeat):
        for name, run in tasks.items():
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            best_cpu_s[name] = min(best_cpu_s[name], time.process_time() - cpu)
            best_wall_s[name] = min(best_wall_s[name], time.perf_counter() - wall)
    return {name: (count / best_cpu_s[name], count / best_wall_s[name]) for name in tasks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    count, repeat = args.count, args.repeat
    exchanges = make_exchanges(count)
    packed = [msgpack.packb(exchange_to_wire(e), use_bin_type=True) for e in exchanges]
    record_bytes = sum(len(p) for p in packed) / count
    work = Path(tempfile.mkdtemp(prefix="tape-bench-"))
    results: dict[str, tuple[float, float]] = {}
    try:

        def baseline_write() -> None:
            pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
            with open(work / "baseline.bin", "wb") as f:
                f.write(b"".join(pack(exchange_to_wire(e)) for e in exchanges))

        def baseline_read() -> None:
            unpackb = msgpack.unpackb
            for p in packed:
                exchange_from_wire(unpackb(p, raw=False, use_list=False))

        def tape_write(name: str, options: TapeOptions) -> Callable[[], None]:
            def run() -> None:
                shutil.rmtree(work / name, ignore_errors=True)
                with SyncTapeWriter(work / name, options) as writer:
                    for e in exchanges:
                        writer.write(e)

            return run

        def tape_read(name: str) -> Callable[[], None]:
            def run() -> None:
                n = sum(1 for _ in TapeReader(work / name))
                assert n == count, n

            return run

        async def async_write() -> tuple[float, float, float]:
            shutil.rmtree(work / "async", ignore_errors=True)
            writer = TapeWriter(work / "async", TapeOptions(queue_size=count))  # the default compression
            await writer.start()
            gc.collect()
            wall, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
            for e in exchanges:
                writer.submit(e)
            submit_cpu_s = time.thread_time() - loop_cpu
            await writer.close()
            drain_cpu_s, drain_wall_s = time.process_time() - cpu, time.perf_counter() - wall
            assert writer.stats.written == count, writer.stats
            return count / submit_cpu_s, count / drain_cpu_s, count / drain_wall_s

        # Both compressions spelled out: the figures decide the default (TapeOptions.compression).
        variants = {
            "plain": TapeOptions(compression="none"),
            "plain, no redaction": TapeOptions(compression="none", redaction=None),
            "zstd": TapeOptions(compression="zstd"),
            "zstd, no redaction": TapeOptions(compression="zstd", redaction=None),
        }
        writes: dict[str, Callable[[], object]] = {"baseline write": baseline_write}
        reads: dict[str, Callable[[], object]] = {"baseline read": baseline_read}
        for name, options in variants.items():
            directory = name.replace(",", "").replace(" ", "-")
            writes[f"write {name}"] = tape_write(directory, options)
            reads[f"read {name}"] = tape_read(directory)
        results.update(best_rates(count, repeat, writes))
        results.update(best_rates(count, repeat, reads))
        submit_rate, drain_cpu_rate, drain_wall_rate = asyncio.run(async_write())
        sizes = {
            name: sum(p.stat().st_size for p in (work / name.replace(",", "").replace(" ", "-")).glob("*.stape"))
            for name in variants
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mb = record_bytes * 1e-6
    print(f"exchanges: {count} (msgpack record {record_bytes:.0f} B each), best of {repeat}; rates per CPU second")
    print(f"{'':28}{'exch/CPU-s':>11}{'MB/CPU-s':>9}{'exch/s wall':>12}  {'vs baseline':>11}  {'vs budget':>9}")
    for kind, baseline, budget in (
        ("write", "baseline write", BUDGET_WRITE_PER_S),
        ("read", "baseline read", BUDGET_READ_PER_S),
    ):
        base_cpu, base_wall = results[baseline]
        print(f"{baseline:28}{base_cpu:>11,.0f}{base_cpu * mb:>9.1f}{base_wall:>12,.0f}  {'1.00':>11}")
        for name in variants:
            cpu_rate, wall_rate = results[f"{kind} {name}"]
            print(
                f"{kind + ' ' + name:28}{cpu_rate:>11,.0f}{cpu_rate * mb:>9.1f}{wall_rate:>12,.0f}"
                f"  {cpu_rate / base_cpu:>11.2f}  {cpu_rate / budget:>9.2f}"
            )
    print(f"{'async submit (loop thread)':28}{submit_rate:>11,.0f}")
    print(
        f"{'async submit+drain+close':28}{drain_cpu_rate:>11,.0f}{drain_cpu_rate * mb:>9.1f}{drain_wall_rate:>12,.0f}"
        f"  {'':>11}  {drain_cpu_rate / BUDGET_WRITE_PER_S:>9.2f}"
    )
    plain = sizes["plain"]
    for name, size in sizes.items():
        print(f"size {name:23}{size / count:>11,.0f} B/exchange  {size / plain:.3f} of plain")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
