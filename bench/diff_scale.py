"""Differ at scale: ``shadowtap diff`` end to end on a generated tape, beside the engine alone.

The tape (``tests/differ/scale_tape.py``): 2 KiB JSON pairs over 40 resources, half of them with an
id among ``--distinct-paths`` in the path, one in ten answering a map keyed by user ids, three in
four differing. Each run is a fresh ``shadowtap diff`` process (``--db`` on disk, HTML and JSON
reports); printed: wall time, pairs/s end to end (and per CPU-second of the diff processes), peak
RSS of the largest process, then the engine alone over the same exchanges in this process. With
``--workers 1,2`` it prints the speed-up too. Never run in a test. Usage::

    .venv/bin/python bench/diff_scale.py --exchanges 1000000 --workers 1,2
    .venv/bin/python bench/diff_scale.py --exchanges 200000 --workers 1,2 --repeat 3   # the speed-up
    .venv/bin/python bench/diff_scale.py --templates            # report build with 5,000 templates
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shadowtap.differ import CompareOptions, DiffEngine  # noqa: E402
from tests.differ.scale_tape import scale_exchange, shop_exchange, shop_templates, write_tape  # noqa: E402

PYTHON = sys.executable


def cached_tape(root: Path, name: str, count: int, make: object, segment_mib: int) -> Path:
    tape = root / f"{name}-{count}-seg{segment_mib}"
    if not (tape / ".complete").exists():
        started = time.perf_counter()
        write_tape(tape, (make(i) for i in range(count)), segment_mib << 20)  # type: ignore[operator]
        (tape / ".complete").touch()
        print(f"  wrote {tape} in {time.perf_counter() - started:.1f} s", flush=True)
    return tape


def run_diff(tape: Path, out: Path, workers: int, extra: list[str]) -> tuple[float, float, int]:
    """(wall s, CPU s of the diff and its workers, peak RSS bytes of the largest process)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{out / 'diff.sqlite'}{suffix}").unlink(missing_ok=True)
    cmd = [PYTHON, "-m", "shadowtap", "diff", str(tape), "--candidate", "v2", "--db", str(out / "diff.sqlite")]
    cmd += ["--html", str(out / "report.html"), "--json", str(out / "report.json"), "--quiet", "--no-progress"]
    if workers:  # 0: leave the flag out (a build without --workers)
        cmd += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen([*cmd, *extra], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"diff failed: {' '.join(cmd)}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu, max(usage.ru_maxrss, after.ru_maxrss) * 1024


def engine_alone(count: int, distinct_paths: int, same_every: int) -> float:
    exchanges = [scale_exchange(i, distinct_paths, same_every) for i in range(min(count, 20_000))]
    engine = DiffEngine(CompareOptions(), candidate="v2")
    started = time.process_time()
    for exchange in exchanges:
        engine.compare_exchange(exchange)
    return len(exchanges) / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exchanges", type=int, default=100_000)
    parser.add_argument("--distinct-paths", type=int, default=100_000)
    parser.add_argument("--workers", default="1", help="comma-separated worker counts to run")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the worker counts in turn this many times; the best wall clock of each counts (on a machine "
        "shared with other work, the run least disturbed by it)",
    )
    parser.add_argument("--templates", action="store_true", help="the 5,000-template tape instead")
    parser.add_argument(
        "--same-every", type=int, default=4, help="one pair in N answers the same (0: every pair differs)"
    )
    parser.add_argument(
        "--segment-mib",
        type=int,
        default=128,
        help="tape segment size (default 128, the writer's): small segments let workers split the tape by segment",
    )
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "shadowtap-diff-scale")
    parser.add_argument("extra", nargs="*", help="more `shadowtap diff` arguments (after --)")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.templates:
        paths = list(shop_templates())
        tape = cached_tape(args.dir, "shop", args.exchanges, lambda i: shop_exchange(i, paths), args.segment_mib)
    else:
        tape = cached_tape(
            args.dir,
            f"scale{args.distinct_paths}-same{args.same_every}",
            args.exchanges,
            lambda i: scale_exchange(i, args.distinct_paths, args.same_every),
            args.segment_mib,
        )
    out = args.dir / "out"
    out.mkdir(exist_ok=True)
    print(f"diff_scale: {args.exchanges:,} exchanges ({'5,000 templates' if args.templates else 'scale'}), {tape}")
    walls: dict[int, float] = {}
    cpus: dict[int, float] = {}
    for _ in range(args.repeat):
        for workers in (int(w) for w in args.workers.split(",")):
            wall, cpu, rss = run_diff(tape, out, workers, args.extra)
            if wall < walls.get(workers, float("inf")):
                walls[workers] = wall
            cpus[workers] = min(cpu, cpus.get(workers, cpu))
            html = (out / "report.html").stat().st_size
            js = (out / "report.json").stat().st_size
            db = (out / "diff.sqlite").stat().st_size
            print(
                f"  workers={workers}: {wall:7.1f} s wall, {args.exchanges / wall:>9,.0f} pairs/s end to end,"
                f" {args.exchanges / cpu:>9,.0f} pairs/CPU-s, peak RSS {rss / 2**20:6.0f} MiB,"
                f" store {db / args.exchanges:5.0f} B/exchange, HTML {html / 2**20:.1f} MiB,"
                f" JSON {js / 2**20:.1f} MiB, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    if 1 in walls:
        for workers, wall in walls.items():
            if workers != 1:
                # On a machine shared with other work the wall clock says little; the CPU time bounds
                # what N idle cores would give: N cores each doing 1/N of the total CPU work (the
                # merge after the workers is serial, so the bound is above the truth).
                print(
                    f"  speed-up with {workers} workers: {walls[1] / wall:.2f}x wall clock (best of {args.repeat});"
                    f" at most {cpus[1] / (cpus[workers] / workers):.2f}x on {workers} idle cores (CPU time)"
                )
    if not args.templates:
        alone = engine_alone(args.exchanges, args.distinct_paths, args.same_every)
        print(f"  engine alone (this process, same exchanges): {alone:,.0f} pairs/CPU-s")


if __name__ == "__main__":
    main()
