"""What reading the live differ's results back costs (``shadowtap.proxy.live_results.LiveReader``,
run by the live analysis process, ``shadowtap.proxy.live_view``, not by the proxy's own).

Builds a live store of ``--pairs`` pairs over 50 endpoint templates (5 % differing in a high
signature, 0.1 % in a critical one), then drives a ``LiveReader`` as the analysis process does:
the catch-up of that backlog, then ``--ticks`` ticks of ``--rate`` new pairs each, with a one-minute
``diff.*`` rule window and wide events on, and ticks with nothing new; with ``--secondary``, the
tick that rebuilds the learned-noise report too. Prints CPU and wall time per
tick and the window's figures (compared, differing, errors), which a report of the store gives too.

    .venv/bin/python bench/live_results_bench.py --pairs 300000 --rate 5000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from shadowtap.differ.aggregate import build_report
from shadowtap.differ.config import DifferConfig
from shadowtap.differ.live import open_live_store
from shadowtap.differ.store import DiffStore, RunMeta
from shadowtap.proxy.live_results import READ_ROWS, LiveReader

_ENDPOINTS = 50


def build_store(path: str, pairs: int, secondary: bool) -> None:
    store = open_live_store(path)
    store.set_meta(RunMeta("primary", "v2", "secondary" if secondary else None, ("bench",)))
    high = store.set_id(((store.key_id("body.price", "type", "int->str"), ""),))
    critical = store.set_id(((store.key_id("status", "status", "200->404"), ""),))
    routes = [store.route_id("GET", f"/e{e}/1", f"GET /e{e}/{{id}}") for e in range(_ENDPOINTS)]
    start_ns = time.time_ns() - 30_000_000_000
    step_ns = 30_000_000_000 // max(1, pairs)
    for i in range(pairs):
        diff_set = high if i % 20 == 0 else critical if i % 997 == 0 else 0
        store.add_pair(f"x{i}", start_ns + i * step_ns, routes[i % _ENDPOINTS], "compared", secondary, diff_set)
    store.close()


async def run(path: str, pairs: int, rate: int, ticks: int, secondary: bool) -> None:
    results = LiveReader((("v2", path),), DifferConfig(), keep_s=120)  # as a one-minute diff.* rule keeps
    follow = results._follows[0]
    wall, cpu, count = time.perf_counter(), time.process_time(), 0
    while follow.last_id < pairs:
        await asyncio.to_thread(results.read, [], True)
        count += 1
    print(f"catch-up of {pairs:,} pairs: {count} ticks of at most {READ_ROWS:,}, "
          f"wall {time.perf_counter() - wall:.2f} s, CPU {time.process_time() - cpu:.2f} s")  # fmt: skip
    store = DiffStore(path)
    route = store.route_id("GET", "/e0/1", "GET /e0/{id}")
    serial = pairs
    for _ in range(ticks):
        for _ in range(rate):
            store.add_pair(f"y{serial}", time.time_ns(), route, "compared", secondary, 0)
            serial += 1
        store.commit()
        since = time.time_ns() - 60_000_000_000
        wall, cpu = time.perf_counter(), time.process_time()
        reading = await asyncio.to_thread(results.read, [("v2", since)], True)
        window = reading.windows[("v2", since)]
        print(f"tick of {rate:,} new pairs, a 1m rule window and events: CPU {time.process_time() - cpu:.3f} s, "
              f"wall {time.perf_counter() - wall:.3f} s, {len(reading.events):,} events; window compared "
              f"{window.compared:,} differing {window.differing:,} errors {window.errors:,}")  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.to_thread(results.read, [], True)
        print(f"tick of nothing new: CPU {time.process_time() - cpu:.4f} s")
    report = build_report(store, DifferConfig(), since_ns=since)
    print(f"a report of the same window: compared {report.compared:,} differing {report.differing:,}")
    if secondary:  # the learned-noise report, every _NOISE_EVERY ticks
        results._ticks = 0
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.to_thread(results.read, [], True)
        print(f"tick with the learned-noise report of the last minute: CPU {time.process_time() - cpu:.3f} s, "
              f"wall {time.perf_counter() - wall:.3f} s")  # fmt: skip
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300_000, help="pairs in the store to start with")
    parser.add_argument("--rate", type=int, default=5_000, help="new pairs per tick (a tick is a second)")
    parser.add_argument("--ticks", type=int, default=3)
    parser.add_argument("--secondary", action="store_true", help="a secondary teaches noise (a report now and then)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shadowtap-live-results-") as directory:
        path = str(Path(directory) / "live.sqlite")
        build_store(path, args.pairs, args.secondary)
        asyncio.run(run(path, args.pairs, args.rate, args.ticks, args.secondary))


if __name__ == "__main__":
    main()
