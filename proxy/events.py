"""Wide events: one JSON line per exchange, with all its context, to a file or stdout.

The loop only collects the record join's joined exchanges (``shadowtap.proxy.join.Joined``, never
changed once joined) and, every few milliseconds, puts the batch into a bounded queue; a writer
thread builds each event from the joined records (route, method, path, statuses, latencies,
decisions, failure kinds), serialises and writes it. A full queue drops the batch and counts its
events. Once the live differ has judged an exchange, a follow-up ``diff`` event with the same
``id`` carries its verdict and signature ids (``on_diff``, built by ``shadowtap.proxy.live_results``).
This module must never write, serialise or flush on the event loop, and never let a slow disk slow
a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sys
import threading
from typing import Any, Final

from shadowtap.proxy.join import Joined
from shadowtap.proxy.rules import RouteTable
from shadowtap.recorder.model import PRIMARY, Exchange, Failure, Outcome, Timing
from shadowtap.recorder.private import PRIVATE_FILE_MODE, create_private

__all__ = ["EventLog", "wide_event"]

log = logging.getLogger(__name__)

_STOP: Final = object()


def _ms(timing: Timing | None) -> float | None:
    if timing is None or timing.duration_ns is None:
        return None
    return round(timing.duration_ns / 1e6, 3)


def _outcome_fields(outcome: Outcome | None) -> dict[str, Any]:
    if outcome is None:
        return {"status": None}
    if isinstance(outcome, Failure):
        return {"status": None, "failure": outcome.kind}
    out: dict[str, Any] = {"status": outcome.status, "bytes": len(outcome.body)}
    if outcome.truncated_from is not None:
        out["truncated_from"] = outcome.truncated_from
    return out


def wide_event(ex: Exchange, routes: RouteTable, recorded: bool) -> dict[str, Any]:
    """The event for one joined exchange."""
    primary_timing = ex.timings.get(PRIMARY)
    event: dict[str, Any] = {
        "ts_ns": ex.started_at_ns,
        "id": ex.id,
        "route": routes.match(ex.request.method, ex.request.path).name,
        "method": ex.request.method,
        "path": ex.request.path,
        "client": ex.client_addr,
        "request_bytes": len(ex.request.body) if ex.request.truncated_from is None else ex.request.truncated_from,
        "primary": {**_outcome_fields(ex.primary), "ms": _ms(primary_timing)},
        "recorded": recorded,
    }
    if ex.tags.get("upgraded"):
        event["upgraded"] = True
    if ex.session:
        event["session"] = ex.session
    shadows: dict[str, Any] = {}
    for name, decision in ex.decisions.items():
        entry: dict[str, Any] = {"decision": decision}
        outcome = ex.shadows.get(name)
        if outcome is not None:
            entry.update(_outcome_fields(outcome))
            entry["ms"] = _ms(ex.timings.get(name))
        shadows[name] = entry
    if shadows:
        event["shadows"] = shadows
    return event


#: Events handed to the writer thread at once, at the latest after _BATCH_DELAY_S: one thread
#: wake-up per batch, not per event.
_BATCH_MAX: Final = 256
_BATCH_DELAY_S: Final = 0.01


def _open_append(path: str) -> int:
    """The log file for appending, owner-only: created 0600, or an existing wider file narrowed
    first (events name clients, paths and sessions). Its lines are kept."""
    create_private(path)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class EventLog:
    """A bounded queue of event batches and the thread that writes them as JSON lines."""

    def __init__(self, path: str, routes: RouteTable, queue_size: int) -> None:
        self.path = path
        self._routes = routes
        # Bounded so a stalled disk costs dropped events (counted), never memory or latency:
        # at most queue_size events, in batches of up to _BATCH_MAX.
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, queue_size // _BATCH_MAX))
        self._batch: list[tuple[Joined | Exchange, bool]] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self.written = 0
        self.dropped = 0
        self.write_errors = 0

    async def start(self) -> None:
        """Open the file (append, off the loop) and start the writer thread."""
        if self.path == "-":
            sys.stdout.flush()  # lines printed before (the listening line) stay in order
            self._fd = sys.stdout.fileno()
        else:
            self._fd = await asyncio.to_thread(_open_append, self.path)
        self._thread = threading.Thread(target=self._run, name="shadowtap-events", daemon=True)
        self._thread.start()

    def on_joined(self, exchange: Joined | Exchange, recorded: bool) -> None:
        """The record stage's listener: collect the joined exchange for the next batch (an
        ``Exchange`` is taken too)."""
        self._batch.append((exchange, recorded))
        if len(self._batch) >= _BATCH_MAX:
            self._flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(_BATCH_DELAY_S, self._flush)

    def on_diff(self, events: list[bytes]) -> None:
        """Follow-up ``diff`` events (one JSON line each, serialised by the live analysis process),
        queued in batches like the exchanges' own; a full queue drops them, counted."""
        for start in range(0, len(events), _BATCH_MAX):
            try:
                self._queue.put_nowait(events[start : start + _BATCH_MAX])
            except queue.Full:
                self.dropped += len(events) - start
                return

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        batch, self._batch = self._batch, []
        if not batch:
            return
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self.dropped += len(batch)

    def _run(self) -> None:
        fd = self._fd
        assert fd is not None
        to_stdout = self.path == "-"
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            assert isinstance(item, list)
            try:
                lines = [
                    entry
                    if isinstance(entry, bytes)
                    else json.dumps(self._event(entry), separators=(",", ":")).encode() + b"\n"
                    for entry in item
                ]
                # Unbuffered, one write per batch (per line to a pipe, which is atomic up to
                # PIPE_BUF): with --workers several processes append to one file or stdout, and
                # a line must never be split by another process's write.
                for chunk in lines if to_stdout else [b"".join(lines)]:
                    _write_all(fd, chunk)
                self.written += len(item)
            except Exception as exc:  # a full disk or a bug: count it, keep the thread alive
                self.write_errors += 1
                log.warning("wide event write to %s failed: %s", self.path, exc)

    def _event(self, entry: tuple[Joined | Exchange, bool]) -> dict[str, Any]:
        ex, recorded = entry
        return wide_event(ex.exchange() if isinstance(ex, Joined) else ex, self._routes, recorded)

    async def aclose(self, timeout_s: float) -> None:
        """Write what is queued (up to ``timeout_s``), then close the file."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        self._flush()
        with contextlib.suppress(queue.Full):
            await asyncio.to_thread(self._queue.put, _STOP, True, timeout_s)
        await asyncio.to_thread(thread.join, timeout_s)
        if self._fd is not None and self.path != "-" and not thread.is_alive():
            await asyncio.to_thread(os.close, self._fd)
        self._fd = None

    def snapshot(self) -> dict[str, Any]:
        return {"path": self.path, "written": self.written, "dropped": self.dropped, "write_errors": self.write_errors,
                "batches_queued": self._queue.qsize()}  # fmt: skip
