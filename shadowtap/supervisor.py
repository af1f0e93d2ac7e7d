"""Worker processes for the long-running subcommands: start, ready, one start time, signals, stop.

``shadowtap proxy --workers N`` and ``shadowtap replay --workers N`` both run N spawned processes
under one parent. This is the one place that does it:

- Workers are spawned fresh (never forked from a process with a running event loop), each calling
  ``target(link, *args)`` with a ``WorkerLink``: its index, and its one way to talk to the parent.
- ``wait_ready`` collects one ``link.ready(detail)`` per worker, in index order. A worker that fails
  first (``link.failed(exc)``, or any exception out of ``target``), dies silently, or takes longer
  than the deadline is an error naming its index; a ``ShadowtapError`` keeps its class and text.
- ``go`` picks one start time for all: a CLOCK_MONOTONIC value, system-wide on Linux, which each
  worker reads with ``link.start_time_ns()``.
- ``results`` yields one ``link.result(payload)`` per worker; a dead worker without one is an error.
  ``link.progress(snapshot)`` sends live figures through a small queue that drops when the parent
  is behind (a stale snapshot is worthless), drained to ``on_progress`` while the parent waits.
- ``wait_exit`` waits for every worker to end; one that ends on its own, unasked, stops the others
  rather than leave the service at reduced capacity.
- Signals the parent receives are passed on by the ``forward`` map (the proxy's workers drain on
  SIGTERM, the replayer's stop on SIGINT); leaving the ``with`` block sends ``stop_signal`` to every
  worker still alive, waits ``grace_s``, then kills what is left, and restores the parent's handlers.

It imports no part of shadowtap but the error classes: what a worker does is its target's business.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator, Mapping
from types import TracebackType
from typing import Any, Final

import shadowtap.recorder.errors as errors
from shadowtap.recorder.errors import ShadowtapError

__all__ = ["LoopRunner", "Supervisor", "WorkerLink"]

log = logging.getLogger(__name__)

#: Runs a coroutine to completion on an event loop (``shadowtap.runtime.run``: uvloop). Workers
#: receive it by reference, so it must be a module-level function.
LoopRunner = Callable[[Coroutine[Any, Any, Any]], Any]

_READY: Final = "ready"
_RESULT: Final = "result"
_FAILED: Final = "failed"
#: How often a waiting parent looks at its workers' sentinels and the progress queue.
_POLL_S: Final = 0.2


class WorkerLink:
    """A worker's end: picklable, handed to the target as its first argument."""

    def __init__(self, index: int, count: int, messages: Any, go: Any, t0: Any, progress: Any | None) -> None:
        self.index = index
        self.count = count
        self._messages = messages
        self._go = go
        self._t0 = t0
        self._progress = progress

    @property
    def wants_progress(self) -> bool:
        """Whether anyone listens: without a listener a worker can skip computing live figures."""
        return self._progress is not None

    def ready(self, detail: Any = None) -> None:
        self._messages.put((self.index, _READY, detail))

    def start_time_ns(self, timeout_s: float) -> int:
        """The start time the parent chose (``time.monotonic_ns`` clock), waiting for it."""
        if not self._go.wait(timeout_s):
            raise ShadowtapError(f"worker {self.index}: the parent never gave a start time")
        return int(self._t0.value)

    def result(self, payload: Any) -> None:
        self._messages.put((self.index, _RESULT, payload))

    def failed(self, exc: BaseException) -> None:
        """Report ``exc``; a ``ShadowtapError`` reaches the parent as itself, anything else as a
        ``ShadowtapError`` naming the worker, its traceback logged at debug level there."""
        report: tuple[str, str, str | None]
        if isinstance(exc, ShadowtapError):
            report = (type(exc).__name__, str(exc), None)
        else:
            trace = traceback.format_exc()
            report = ("ShadowtapError", f"worker {self.index} crashed: {type(exc).__name__}: {exc}", trace)
        self._messages.put((self.index, _FAILED, report))

    def progress(self, snapshot: Any) -> None:
        if self._progress is not None:
            with contextlib.suppress(queue.Full):
                self._progress.put_nowait((self.index, snapshot))


def _worker_entry(target: Callable[..., None], link: WorkerLink, args: tuple[Any, ...]) -> None:
    try:
        target(link, *args)
    except SystemExit:
        raise
    except BaseException as exc:  # reported, then a quiet exit: the parent prints the one line
        link.failed(exc)
        raise SystemExit(2 if isinstance(exc, ShadowtapError) else 1) from None


def _error(report: tuple[str, str, str | None], index: int) -> ShadowtapError:
    type_name, message, trace = report
    if trace is not None:
        log.debug("worker %d failed:\n%s", index, trace)
    cls = getattr(errors, type_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ShadowtapError)):
        cls = ShadowtapError
    return cls(message)


class Supervisor:
    """N spawned workers running ``target(link, *args_for(index))``; use as a context manager."""

    def __init__(
        self,
        name: str,
        count: int,
        target: Callable[..., None],
        args_for: Callable[[int], tuple[Any, ...]],
        *,
        forward: Mapping[int, int] | None = None,
        stop_signal: int = signal.SIGTERM,
        grace_s: float = 10.0,
        ready_timeout_s: float = 60.0,
        progress_size: int = 0,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self.name = name
        self.count = count
        self._target = target
        self._args_for = args_for
        self._forward: dict[int, int] = dict(forward if forward is not None else {signal.SIGTERM: signal.SIGTERM})
        self._stop_signal = stop_signal
        self._grace_s = grace_s
        self.ready_timeout_s = ready_timeout_s
        context = multiprocessing.get_context("spawn")
        self._context = context
        # Unbounded by type; holds at most a ready, a result and a failure per worker.
        self._messages = context.Queue()
        self._go = context.Event()
        self._t0 = context.Value("q", 0)
        self._progress = context.Queue(progress_size) if progress_size > 0 else None
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._early: dict[int, list[tuple[str, Any]]] = {}
        self._previous: dict[int, Any] = {}
        #: Set once the parent asked its workers to stop (a signal, or leaving the block).
        self.stopping = False

    # -- life cycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Supervisor:
        # Handlers can only be set from the main thread (an embedding caller may use another).
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._on_signal) for signum in self._forward}
        try:
            for index in range(self.count):
                link = WorkerLink(index, self.count, self._messages, self._go, self._t0, self._progress)
                process = self._context.Process(
                    target=_worker_entry,
                    args=(self._target, link, self._args_for(index)),
                    name=f"{self.name}-{index}",
                    daemon=False,
                )
                process.start()
                self._processes.append(process)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(self._stop_signal)
        deadline = time.monotonic() + self._grace_s
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.warning("%s: %s did not stop within %.0f s; killed", self.name, process.name, self._grace_s)
                process.kill()
                process.join()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        self._messages.close()
        if self._progress is not None:
            self._progress.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop(self._forward.get(signum, self._stop_signal))

    def stop(self, signum: int | None = None) -> None:
        """Ask every living worker to stop (``stop_signal`` unless another is given)."""
        self.stopping = True
        self.send(self._stop_signal if signum is None else signum)

    def send(self, signum: int) -> None:
        for process in self._processes:
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    @property
    def pids(self) -> list[int | None]:
        return [p.pid for p in self._processes]

    # -- messages -----------------------------------------------------------------------------------

    def _next(self, timeout_s: float) -> tuple[int, str, Any] | None:
        try:
            index, kind, payload = self._messages.get(timeout=timeout_s)
        except queue.Empty:
            return None
        return int(index), str(kind), payload

    def _wait_for(
        self, kind: str, deadline: float | None, on_progress: Callable[[int, Any], None] | None
    ) -> Iterator[tuple[int, Any]]:
        """One ``kind`` message per worker, as they come; failures and silent deaths raise."""
        pending = set(range(self.count))
        for index, held in self._early.items():
            for held_kind, payload in list(held):
                if held_kind == kind and index in pending:
                    held.remove((held_kind, payload))
                    pending.discard(index)
                    yield index, payload
        while pending:
            if on_progress is not None:
                self._drain_progress(on_progress)
            left = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
            message = self._next(max(0.0, left))
            if message is None:
                dead = [i for i in sorted(pending) if self._processes[i].exitcode is not None]
                if dead:
                    # Its last message may still be in the pipe: look once more before blaming it.
                    message = self._next(_POLL_S)
                    if message is None:
                        what = "started" if kind == _READY else "reported"
                        raise ShadowtapError(f"{self.name} worker {dead[0]} exited before it {what}")
                elif deadline is not None and time.monotonic() >= deadline:
                    late = min(pending)
                    raise ShadowtapError(f"{self.name} worker {late} did not start within {self.ready_timeout_s:.0f} s")
                else:
                    continue
            index, got, payload = message
            if got == _FAILED:
                raise _error(payload, index)
            if got != kind or index not in pending:
                self._early.setdefault(index, []).append((got, payload))
                continue
            pending.discard(index)
            yield index, payload

    def wait_ready(self) -> list[Any]:
        """Every worker's ``ready`` detail, by index, once all are ready."""
        details: list[Any] = [None] * self.count
        deadline = time.monotonic() + self.ready_timeout_s
        for index, detail in self._wait_for(_READY, deadline, None):
            details[index] = detail
        return details

    def go(self, delay_ns: int = 0) -> int:
        """Choose the start time, ``delay_ns`` from now, and release the workers; return it."""
        t0 = time.monotonic_ns() + delay_ns
        self._t0.value = t0  # written before the event is set, read after it
        self._go.set()
        return t0

    def results(self, on_progress: Callable[[int, Any], None] | None = None) -> Iterator[tuple[int, Any]]:
        """``(index, payload)`` of every worker's ``result``, as they come."""
        yield from self._wait_for(_RESULT, None, on_progress)

    def wait_exit(self) -> int:
        """Wait until every worker has ended: 0 when all ended cleanly after being asked to stop;
        1 when one failed, or ended on its own (the others are then stopped)."""
        unasked = False
        while any(p.exitcode is None for p in self._processes):
            multiprocessing.connection.wait([p.sentinel for p in self._processes if p.exitcode is None], _POLL_S * 5)
            ended = [p for p in self._processes if p.exitcode is not None]
            if not self.stopping and ended:
                unasked = True
                log.error("%s: %s exited unexpectedly (code %s); stopping the others", self.name, ended[0].name,
                          ended[0].exitcode)  # fmt: skip
                self.stop()
        return 0 if not unasked and all(p.exitcode == 0 for p in self._processes) else 1

    def _drain_progress(self, on_progress: Callable[[int, Any], None]) -> None:
        assert self._progress is not None
        while True:
            try:
                index, snapshot = self._progress.get_nowait()
            except queue.Empty:
                return
            on_progress(index, snapshot)
