"""Where the time of one `shadowtap diff` goes: its phases in this process, beside its workers' CPU.

Runs the command in this process (``shadowtap diff ARGS...``) with each phase timed: reading and
diffing this process's share (``ingest``), merging the workers' stores, learning and applying the
endpoint templates, building the report and writing it. Printed: wall and CPU seconds of each phase
(CPU is this process's: the merges of the workers' stores run between its own chunks, so they are
inside its share), the workers' CPU, the CPU of the processes forked after them (the report built
and written beside the endpoint learning, report writers), and the critical path by CPU time: the
rest of this process, plus the larger of its share and the workers', plus the larger of its
learning and writing and what was forked after the workers (as if one after the other: an upper
bound). What two idle cores would take, whatever else the machine runs.
Never run in a test. Usage::

    .venv/bin/python bench/diff_phases.py TAPE --candidate v2 --workers 2 --json /tmp/r.json --quiet
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


LEARN = "learn, apply endpoint templates"
WRITE = "write the report"


def main() -> None:
    import shadowtap.commands.diff as command
    import shadowtap.differ as differ
    import shadowtap.differ.pipeline as pipeline
    import shadowtap.differ.store as store
    from shadowtap.cli import main as cli

    spent: dict[str, list[float]] = {}

    def timed(owner: Any, name: str, label: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                entry = spent.setdefault(label, [0.0, 0.0])
                entry[0] += time.perf_counter() - wall
                entry[1] += time.process_time() - cpu

        setattr(owner, name, wrapper)

    timed(command, "_ingest", "ingest (this process's share)")
    timed(store.DiffStore, "merge_from", "merge the workers' stores")
    timed(pipeline, "relearn_endpoints", LEARN)
    timed(differ, "build_report", "build the report")
    timed(command, "emit", WRITE)
    # Children's CPU once the workers are reaped: what the processes forked after them (the report
    # built beside the endpoint learning, report writers) spend is the rest.
    workers_at: list[float] = []
    run_workers = command._run_workers

    def run_workers_then_note(*args: Any, **kwargs: Any) -> Any:
        try:
            return run_workers(*args, **kwargs)
        finally:
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            workers_at.append(usage.ru_utime + usage.ru_stime)

    command._run_workers = run_workers_then_note
    started = time.perf_counter()
    with contextlib.suppress(SystemExit):
        cli(["diff", *sys.argv[1:]])
    wall = time.perf_counter() - started
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own_cpu = me.ru_utime + me.ru_stime
    workers_cpu = workers_at[0] if workers_at else 0.0
    helpers_cpu = children.ru_utime + children.ru_stime - workers_cpu
    print(
        f"wall {wall:.2f} s; this process {own_cpu:.2f} s of CPU, its workers {workers_cpu:.2f} s,"
        f" processes forked after them {helpers_cpu:.2f} s",
        file=sys.stderr,
    )
    for label, (phase_wall, phase_cpu) in spent.items():
        print(f"  {label:32} {phase_wall:6.2f} s wall {phase_cpu:6.2f} s CPU", file=sys.stderr)
    share = spent.get("ingest (this process's share)", [0.0, 0.0])[1]
    # After the workers: this process learns the endpoints (and writes the report, unless the one
    # built beside the learning stood) while the forked ones build and write the report.
    after = spent.get(LEARN, [0.0, 0.0])[1] + spent.get(WRITE, [0.0, 0.0])[1]
    outside = own_cpu - share - after
    critical = outside + max(share, workers_cpu) + max(after, helpers_cpu)
    print(
        f"  critical path by CPU: {critical:.2f} s (the rest of this process {outside:.2f} s"
        f" + max(its share {share:.2f} s, workers {workers_cpu:.2f} s)"
        f" + max(its learning and writing {after:.2f} s, forked after the workers {helpers_cpu:.2f} s))",
        file=sys.stderr,
    )


if __name__ == "__main__":  # spawned workers import this module as __mp_main__: they must not run it
    main()
