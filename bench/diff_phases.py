"""Where the time of one `shadowtap diff` goes: its phases in this process, beside its workers' CPU.

Runs the command in this process (``shadowtap diff ARGS...``) with each phase timed: reading and
diffing this process's share (``ingest``), merging the workers' stores, learning and applying the
endpoint templates, building the report and writing it. Printed: wall and CPU seconds of each phase
(CPU is this process's: the merges of the workers' stores run between its own chunks, so they are
inside its share), the workers' CPU, the forked pair grouping's (beside the endpoint learning,
shorter than it) and report writers', and the critical path by CPU time (this process outside its
share and its writing, plus the larger of its share and the workers', plus the larger of its
writing and the writers'): what two idle cores would take, whatever else the machine runs.
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
    timed(pipeline, "relearn_endpoints", "learn, apply endpoint templates")
    timed(differ, "build_report", "build the report")
    timed(command, "emit", "write the report")
    # Children's CPU when the workers are reaped (the pair grouping is forked then, if at all), and
    # when the grouping is too: what the report writers forked after spend is the rest.
    children_at: dict[str, float] = {}

    def children_cpu_after(owner: Any, name: str, label: str, before: bool = False) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            def note() -> None:
                usage = resource.getrusage(resource.RUSAGE_CHILDREN)
                children_at.setdefault(label, usage.ru_utime + usage.ru_stime)

            if before:
                note()
            try:
                return original(*args, **kwargs)
            finally:
                note()

        setattr(owner, name, wrapper)

    children_cpu_after(command, "_group_pairs_beside", "workers", before=True)
    children_cpu_after(command, "_run_workers", "workers")
    children_cpu_after(command, "_run_workers", "grouping")
    started = time.perf_counter()
    with contextlib.suppress(SystemExit):
        cli(["diff", *sys.argv[1:]])
    wall = time.perf_counter() - started
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own_cpu = me.ru_utime + me.ru_stime
    workers_cpu = children_at.get("workers", 0.0)
    grouping_cpu = children_at.get("grouping", 0.0) - workers_cpu
    writers_cpu = children.ru_utime + children.ru_stime - workers_cpu - grouping_cpu
    print(
        f"wall {wall:.2f} s; this process {own_cpu:.2f} s of CPU, its workers {workers_cpu:.2f} s,"
        f" the pair grouping beside the learning {grouping_cpu:.2f} s, report writers {writers_cpu:.2f} s",
        file=sys.stderr,
    )
    for label, (phase_wall, phase_cpu) in spent.items():
        print(f"  {label:32} {phase_wall:6.2f} s wall {phase_cpu:6.2f} s CPU", file=sys.stderr)
    share = spent.get("ingest (this process's share)", [0.0, 0.0])[1]
    writing = spent.get("write the report", [0.0, 0.0])[1]
    outside = own_cpu - share - writing
    critical = outside + max(share, workers_cpu) + max(writing, writers_cpu)
    print(
        f"  critical path by CPU: {critical:.2f} s (outside its share and writing {outside:.2f} s"
        f" + max(its share {share:.2f} s, workers {workers_cpu:.2f} s)"
        f" + max(its writing {writing:.2f} s, writers {writers_cpu:.2f} s))",
        file=sys.stderr,
    )


if __name__ == "__main__":  # spawned workers import this module as __mp_main__: they must not run it
    main()
