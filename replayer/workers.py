"""``--workers N``: one replay sharded by session across N processes that share one t0.

Each worker process builds the same plan and keeps the sessions whose stable hash falls on its
index (``PlanOptions.shard``), waits at a barrier until every worker is ready, then starts at the
t0 the parent chose: a CLOCK_MONOTONIC value, which is system-wide on Linux, so all processes
share the schedule. Each worker writes its own results segments into the shared results directory
(segment names carry the pid) and sends its stats back encoded; the parent merges them.

It must never fork a process that has an event loop running (workers are spawned fresh), never
wait forever on a worker that died (a dead worker is an error naming its index), and never let a
worker's failure pass unreported: each one reaches the parent as an error, its traceback logged at
debug level there (a worker prints none of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, Final

from shadowtap.recorder.errors import ShadowtapError, UpstreamError
from shadowtap.replayer.job import ReplayJob, run_job
from shadowtap.replayer.result import JobResult
from shadowtap.replayer.runner import Progress

__all__ = ["LoopRunner", "run_workers"]

log = logging.getLogger(__name__)

LoopRunner = Callable[[Coroutine[Any, Any, Any]], Any]

#: Delay between "every worker is ready" and t0, so every worker is back from the barrier and
#: sleeping on the schedule before the first request is due.
_START_DELAY_NS: Final = 200_000_000
#: How long a worker may take to import, read its first batch and connect before it is an error.
_READY_TIMEOUT_S: Final = 60.0
# Progress snapshots in flight to the parent; old ones are worthless, so a full queue drops.
_PROGRESS_QUEUE_SIZE: Final = 64


def _worker_main(
    job: ReplayJob,
    loop_runner: LoopRunner,
    barrier: Any,
    go: Any,
    t0_value: Any,
    results: Any,
    progress_queue: Any,
    index: int,
    log_level: int,
) -> None:
    # A spawned interpreter starts without the parent's logging set-up.
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s worker {index} %(name)s: %(message)s")

    def progress(snapshot: Progress) -> None:
        # The parent is behind when the queue is full: this snapshot would be stale when read.
        with contextlib.suppress(queue.Full):
            progress_queue.put_nowait((index, snapshot))

    async def main() -> JobResult:
        barrier.wait(_READY_TIMEOUT_S)
        if not go.wait(_READY_TIMEOUT_S):
            raise UpstreamError(f"replay worker {index}: the parent never gave a start time")
        # Ctrl-C reaches every process of the terminal's group: stop scheduling, finish what is
        # in flight and report, like a single-process replay.
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        return await run_job(
            job, t0_ns=int(t0_value.value), progress=progress if progress_queue is not None else None, stop=stop
        )

    try:
        result = loop_runner(main())
        results.put((index, result.encode(), None))
    except ShadowtapError as exc:
        results.put((index, None, (type(exc).__name__, str(exc), None)))
    except BaseException as exc:  # report, then die: the parent must not hang on a silent worker
        message = f"replay worker {index} crashed: {type(exc).__name__}: {exc}"
        results.put((index, None, ("ShadowtapError", message, traceback.format_exc())))
        # The parent prints the one line; exiting quietly keeps the traceback off the terminal.
        raise SystemExit(1) from None


def run_workers(
    job: ReplayJob,
    count: int,
    *,
    loop_runner: LoopRunner,
    progress: Callable[[int, Progress], None] | None = None,
) -> JobResult:
    """Run ``job`` sharded over ``count`` processes; returns the merged result.

    ``loop_runner`` runs a coroutine to completion in a worker (``shadowtap.runtime.run``: uvloop).
    A worker that fails before starting raises its error here; an error mid-replay is in the result.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(count + 1)
    go = ctx.Event()
    t0_value = ctx.Value("q", 0)
    # Unbounded by type but holds at most one result per worker.
    results = ctx.Queue()
    # No listener, no queue: the workers then skip computing live figures altogether.
    progress_queue = None if progress is None else ctx.Queue(_PROGRESS_QUEUE_SIZE)
    processes = [
        ctx.Process(
            target=_worker_main,
            args=(
                replace(job, plan=replace(job.plan, shard=(i, count))),
                loop_runner,
                barrier,
                go,
                t0_value,
                results,
                progress_queue,
                i,
                logging.getLogger().getEffectiveLevel(),
            ),
            name=f"shadowtap-replay-worker-{i}",
            daemon=True,
        )
        for i in range(count)
    ]
    for process in processes:
        process.start()

    # The workers handle Ctrl-C themselves (they stop and report) and the parent keeps collecting;
    # an interrupt sent to the parent alone is passed on to them.
    def forward_sigint(signum: int, frame: object) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGINT)

    in_main_thread = threading.current_thread() is threading.main_thread()
    # Signal handlers can only be set from the main thread (an embedding caller may use another).
    previous_sigint = signal.signal(signal.SIGINT, forward_sigint) if in_main_thread else None
    try:
        # t0 is chosen once every worker has started (spawning takes a second or more), written
        # before `go` is set and read after it, so every worker sees the same value.
        with contextlib.suppress(threading.BrokenBarrierError):  # a worker died: its error follows
            barrier.wait(_READY_TIMEOUT_S)
        t0_value.value = time.monotonic_ns() + _START_DELAY_NS
        go.set()
        merged: JobResult | None = None
        pending = set(range(count))
        while pending:
            if progress is not None:
                _drain_progress(progress_queue, progress)
            try:
                index, encoded, error = results.get(timeout=0.2)
            except queue.Empty:
                dead = [i for i in pending if not processes[i].is_alive()]
                if dead and results.empty():
                    raise UpstreamError(f"replay worker {dead[0]} exited without a result") from None
                continue
            pending.discard(index)
            if error is not None:
                import shadowtap.recorder.errors as errors

                type_name, message, trace = error
                if trace is not None:
                    log.debug("replay worker %d failed:\n%s", index, trace)
                cls = getattr(errors, type_name, None)
                if not (isinstance(cls, type) and issubclass(cls, ShadowtapError)):
                    cls = ShadowtapError
                raise cls(message)
            part = JobResult.decode(encoded)
            if merged is None:
                merged = part
            else:
                merged.merge(part)
        assert merged is not None
        return merged
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_sigint)
        for process in processes:
            process.join(timeout=5.0)
            if process.is_alive():
                process.terminate()
                process.join()
        results.close()
        if progress_queue is not None:
            progress_queue.close()


def _drain_progress(progress_queue: Any, progress: Callable[[int, Progress], None]) -> None:
    while True:
        try:
            index, snapshot = progress_queue.get_nowait()
        except queue.Empty:
            return
        progress(index, snapshot)
