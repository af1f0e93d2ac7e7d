"""The replay runner: carries out a plan on an absolute monotonic schedule, open loop.

Request ``r`` of a plan is due at ``t0 + r.slot_ns``; inside a session it waits for the previous
request and then ``gap_ns`` more, so it goes at ``max(slot, previous done + gap)``. Sessions start
on schedule however many are in flight (open loop); an optional in-flight cap holds requests back
and counts them, and the time they waited shows in the corrected histogram, never hidden.

One timer paces everything (``shadowtap.replayer.pacer``): sessions whose next request is not yet
due, and the dispatcher waiting to read further, sit in one ``DueQueue`` as plain data; a timerfd
wakes the loop at the earliest due time (at most once per batch window), and that wake-up
starts a task for every session now due. A request waiting for its slot costs a heap entry, not a
task, a timer and a future; no wait spins.

The plan is pulled on the loop a short lookahead ahead of the schedule, in slices of at most
``read_slice_s`` between which due requests go, into bounded per-session queues; the first pull
(which opens the tapes) runs on a worker thread. The heap that exists when the replay starts is
frozen out of the garbage collector for its duration, and the collector does not run by itself
while it lasts: the runner collects only when tracked objects pile up (``_GC_PILE``), checked with
the progress tick. This module must never sleep for a relative
interval (every wait is computed from an absolute deadline), never release a request before it is
due, never hold the loop longer than a slice, and never let a failed request or a broken results
sink stop the replay. Nor may it lose an error: a bug met on the way (in the client, the results
path, the plan) ends in ``ReplayOutcome.error``, so the run fails however much of it went well.

Why not a reader thread: decoding tapes is CPU work under the GIL, so every due timer that fired
while the reader held the GIL waited for a switch interval, and much longer whenever the reader
thread was descheduled while holding it (measured: late requests clustered on the reader's
batches, up to 4 to 20 ms on a 2-core machine). Why freeze: full collections walked the whole
start-up heap (modules, the plan's state) for 15 to 20 ms every few seconds at 2,000 requests/s.
Why no automatic collection: at 20,000 requests/s the collector ran 25 times a second over the
plan's lookahead and the requests in flight (all alive, so nothing to find), each run of the middle
generation 0.7 to 1.3 ms with every request due meanwhile late, 5 % of the loop's time. A request
leaves no garbage cycle behind (a 60,000-request replay with the collector off ended with the same
4,290 unreachable objects as a 20,000-request one: start-up's), so reference counting frees all of
it; the pile check bounds what a path that does make cycles (one not met so far) could hold.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Final, Protocol

from shadowtap.recorder.errors import ConfigError, ShadowtapError
from shadowtap.recorder.model import Exchange, Failure, FailureKind, Headers, Outcome, Request, Response
from shadowtap.replayer.pacer import WAKE_TIMERS, DueQueue, WakeTimer, make_wake_timer
from shadowtap.replayer.plan import PlannedRequest
from shadowtap.replayer.result import replay_exchange
from shadowtap.replayer.stats import ErrorExample, ReplayStats
from shadowtap.replayer.transport import SendResult, Transport, describe_outcome, error_class

__all__ = ["Progress", "ReplayOutcome", "ResultSink", "RunnerSettings", "replay"]

log = logging.getLogger(__name__)

# A session idle this long forgets when its last request finished (memory stays bounded); its
# next request, if one ever comes, then goes at its slot. See docs/replay.md, "Memory".
_SESSION_MEMORY_NS: Final = 60_000_000_000
# ... and beyond this many idle sessions the longest idle is forgotten at once, so a tape of many
# short sessions replayed fast holds a bounded number (about 1 KiB each), not a minute's worth.
_MAX_IDLE_SESSIONS: Final = 100_000
# The live p99 walks a whole histogram (pure Python, milliseconds): refreshed this often only.
_P99_REFRESH_NS: Final = 2_000_000_000
# With the collector off during a replay: tracked objects allocated and not freed since the last
# collection past which the progress tick collects (cycles someone made; ~10 to 20 MiB of them).
_GC_PILE: Final = 100_000
# While replaying, the GIL is handed between the event loop and any other thread (the results tape
# writer encodes and redacts on one) this often: Python's default, 5 ms, would make requests up to
# 5 ms late while that thread works.
_SWITCH_INTERVAL_S: Final = 0.0005


class ResultSink(Protocol):
    """Where replayed exchanges go (a ``recorder.TapeWriter``): never blocks, False when dropped."""

    def submit(self, exchange: Exchange) -> bool: ...


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """How the runner paces itself.

    ``max_in_flight``: cap on concurrent requests (None: only the client's connection limit).
    ``lookahead_s``: how long before its slot a request is pulled from the plan into its session.
    A pulled request waits as an entry in the due queue (tens of bytes), so this only bounds how
    far the reader runs ahead; it reads in batches of half the lookahead.
    ``max_pending``: bound on requests pulled but not finished, so ``--speed 0`` or a stalled
    target cannot pull a whole tape into memory (the schedule then waits: it shows as start lag).
    ``read_slice_s``: longest the dispatcher reads the plan on the loop before letting due requests
    go (the start lag it may add; reading one request costs tens of microseconds).
    ``batch_window_s``, ``min_batch_window_s``: the loop wakes for due requests at most once per
    window, releasing all that are due; a request goes at most a window after it is due (plus the
    wake-up's own latency), never before. The window adapts to the rate between the two bounds, long
    enough for about four requests a wake-up: at 2,000 requests/s it is the longest (a wake-up for
    three requests), from 8,000/s the shortest (ten a wake-up at 20,000/s, when the loop is awake
    anyway and a shorter window is a shorter lag). See ``shadowtap.replayer.pacer``.
    ``wake_timer``: ``auto`` (a timerfd on Linux, else the loop's millisecond timer), ``timerfd``
    or ``loop`` (see ``shadowtap.replayer.pacer``).
    ``progress_interval_s``: how often the progress callback runs.
    """

    max_in_flight: int | None = None
    lookahead_s: float = 0.02
    max_pending: int = 10_000
    read_slice_s: float = 0.0002
    batch_window_s: float = 0.0015
    min_batch_window_s: float = 0.0005
    wake_timer: str = "auto"
    progress_interval_s: float = 0.5

    def __reduce__(self) -> tuple[type[RunnerSettings], tuple[Any, ...]]:
        # Pickled by its constructor (a --workers process gets it): compiled, a frozen dataclass
        # cannot be restored field by field.
        return RunnerSettings, tuple(getattr(self, f.name) for f in fields(self))

    def __post_init__(self) -> None:
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ConfigError(f"must be >= 1, got {self.max_in_flight}", field="max-in-flight")
        if self.lookahead_s < 0:
            raise ConfigError(f"must be >= 0, got {self.lookahead_s}", field="lookahead")
        if self.max_pending < 1:
            raise ConfigError(f"must be >= 1, got {self.max_pending}", field="max-pending")
        if self.read_slice_s <= 0:
            raise ConfigError(f"must be > 0, got {self.read_slice_s}", field="read-slice")
        if not 0 <= self.batch_window_s <= 0.1:
            raise ConfigError(f"must be between 0 and 0.1, got {self.batch_window_s}", field="batch-window")
        if not 0 <= self.min_batch_window_s <= self.batch_window_s:
            raise ConfigError(
                f"must be between 0 and the batch window, got {self.min_batch_window_s}", field="min-batch-window"
            )
        if self.wake_timer not in WAKE_TIMERS:
            raise ConfigError(f"must be one of {', '.join(WAKE_TIMERS)}, not {self.wake_timer!r}", field="wake-timer")
        if self.progress_interval_s <= 0:
            raise ConfigError(f"must be > 0, got {self.progress_interval_s}", field="progress-interval")


@dataclass(frozen=True, slots=True)
class Progress:
    """A live snapshot for the progress display."""

    elapsed_s: float
    planned: int
    done: int
    errors: int
    in_flight: int
    rate_per_s: float
    p99_ms: float
    held_back: int


@dataclass(slots=True)
class ReplayOutcome:
    """What a replay did: its stats, the results sink's counts, and the error that cut it short."""

    stats: ReplayStats
    planned: int = 0
    results_submitted: int = 0
    results_dropped: int = 0
    error: ShadowtapError | None = None
    stopped: bool = False
    internal_errors: int = 0


@dataclass(slots=True)
class _Session:
    key: str
    queue: deque[PlannedRequest] = field(default_factory=deque)
    last_done_ns: int | None = None
    # Its head request waits in the due queue or is being sent: the session is not idle.
    busy: bool = False
    # The task sending its requests, while one does (it leaves the runner's set as it ends).
    task: asyncio.Task[None] | None = None


#: ``HttpTransport.start``'s shape: (method, target, headers, body, recorded request, done) -> sent.
_Starter = Callable[[str, str, Headers, bytes, Request | None, Callable[[SendResult], None]], bool]


class _Sent:
    """A request sent by ``_Runner._send_now``, waiting for its answer."""

    __slots__ = ("due_ns", "request", "runner", "sent_ns", "session")

    def __init__(self, runner: _Runner, session: _Session, request: PlannedRequest, due_ns: int, sent_ns: int) -> None:
        self.runner = runner
        self.session = session
        self.request = request
        self.due_ns = due_ns
        self.sent_ns = sent_ns

    def done(self, result: SendResult) -> None:
        self.runner._sent(self.session, self.request, self.due_ns, self.sent_ns, result)


class _Runner:
    def __init__(
        self,
        transport: Transport,
        t0_ns: int | None,
        settings: RunnerSettings,
        results: ResultSink | None,
        progress: Callable[[Progress], None] | None,
        stop: asyncio.Event | None,
    ) -> None:
        self.transport = transport
        # None: t0 is "now" once the first request of the plan has been read (opening a tape must
        # not make the first requests late).
        self.t0_ns = 0 if t0_ns is None else t0_ns
        self.t0_pending = t0_ns is None
        self.settings = settings
        self.results = results
        self.progress = progress
        self.stop = stop
        self.stats = ReplayStats()
        self.outcome = ReplayOutcome(self.stats)
        self.sessions: dict[str, _Session] = {}
        # Idle sessions in the order they went idle, so forgetting old ones is a pop from the front.
        self.idle: OrderedDict[str, int] = OrderedDict()
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        # The in-flight cap: free slots, and the requests waiting for one in arrival order (a bare
        # counter: asyncio.Semaphore's checks cost a few microseconds a request).
        self.cap_free = -1 if settings.max_in_flight is None else settings.max_in_flight
        self.cap_waiters: deque[asyncio.Future[None]] = deque()
        # Requests pulled from the plan and neither finished nor dropped.
        self.pending = 0
        self.in_flight = 0
        # Sessions whose next request is not due yet, and waiters (the dispatcher), by due time.
        self.due: DueQueue[_Session | asyncio.Future[None]] = DueQueue(
            int(settings.batch_window_s * 1e9), int(settings.min_batch_window_s * 1e9)
        )
        self.timer: WakeTimer | None = None
        self.armed_ns: int | None = None
        # The transport's task-free send, when it has one (HttpTransport.start): most requests
        # then cost no task, coroutine or future; the rest (a dial, a wait) go by send in a task.
        starter = getattr(transport, "start", None)
        self.starter: _Starter | None = starter if callable(starter) else None
        # Requests sent that way and not yet answered (they have no task to wait for), and run()
        # waiting for them to be, once the replay stops.
        self.sending = 0
        self.sending_waiter: asyncio.Future[None] | None = None
        # The dispatcher waiting for pending to fall below max_pending, or run() for it to reach 0.
        self.space_waiter: asyncio.Future[None] | None = None
        self.drained_waiter: asyncio.Future[None] | None = None
        self.p99_ms = 0.0
        self.p99_at_ns = 0
        # The first bug met (see _internal_error), and whether one broke the replay off.
        self.first_internal_error = ""
        self.halted = False
        # A stop or a bug: nothing more is read or released; what is in flight finishes.
        self.aborting = False
        # Wall clock minus monotonic, once: results carry wall times without a syscall each.
        self.wall_offset_ns = time.time_ns() - time.monotonic_ns()

    async def run(self, plan: Iterable[PlannedRequest]) -> ReplayOutcome:
        self.loop = loop = asyncio.get_running_loop()
        self.timer = make_wake_timer(loop, self._on_wake, self.settings.wake_timer)
        ticker = asyncio.create_task(self._tick())
        watcher = None if self.stop is None else asyncio.create_task(self._watch_stop(self.stop))
        switch_interval_s = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval_s, _SWITCH_INTERVAL_S))
        # Everything alive now lives as long as the replay: keep the collector from walking it, and
        # keep it off the request path (module docstring; _tick collects if objects pile up).
        gc.freeze()
        collecting = gc.isenabled()
        gc.disable()
        try:
            try:
                await self._dispatch(iter(plan))
            except ShadowtapError as exc:
                # A tape went bad mid-replay: finish what was read so its results are kept.
                self.outcome.error = exc
            except Exception as exc:  # a bug in the plan: end as for a bad tape, keeping what was sent
                self._internal_error(exc, "reading the plan")
            if self.pending and not self.aborting:
                self.drained_waiter = loop.create_future()
                await self.drained_waiter
        finally:
            # Requests in flight finish, stopped or not: their results belong in the outputs.
            while self.tasks or self.sending:
                if self.tasks:
                    await asyncio.gather(*list(self.tasks))
                if self.sending:
                    self.sending_waiter = loop.create_future()
                    await self.sending_waiter
            sys.setswitchinterval(switch_interval_s)
            gc.unfreeze()
            if collecting:
                gc.enable()
            self.timer.close()
            for task in (ticker, watcher):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            self.p99_at_ns = 0  # the last report carries the final p99
            self._report_progress()
        if self.outcome.error is None and self.outcome.internal_errors:
            count = self.outcome.internal_errors
            self.outcome.error = ShadowtapError(
                f"the replayer failed {count} time{'s' if count > 1 else ''}, first on {self.first_internal_error} "
                "(a bug; --log-level debug shows the traceback)"
            )
        return self.outcome

    def _internal_error(self, exc: Exception, where: str) -> None:
        """Count a bug met on ``where`` (it fails the run once the replay is over); never raises."""
        self.outcome.internal_errors += 1
        if not self.first_internal_error:
            self.first_internal_error = f"{where}: {type(exc).__name__}: {exc}"
        log.debug("replayer failed on %s", where, exc_info=exc)

    async def _dispatch(self, iterator: Iterator[PlannedRequest]) -> None:
        lookahead_ns = int(self.settings.lookahead_s * 1e9)
        slice_ns = int(self.settings.read_slice_s * 1e9)
        # The first pull opens the tapes and reads their first blocks: off the loop.
        first = await asyncio.to_thread(next, iterator, None)
        if first is None:
            return
        slice_end_ns = time.monotonic_ns() + slice_ns
        for request in itertools.chain((first,), iterator):
            if self.aborting:
                return
            now_ns = time.monotonic_ns()
            if self.t0_pending:
                self.t0_ns, self.t0_pending = now_ns, False
            feed_at_ns = self.t0_ns + request.slot_ns - lookahead_ns
            if feed_at_ns > now_ns:
                # Wake when half the lookahead is left, then read up to a whole lookahead ahead:
                # one wake-up reads a batch rather than one per request.
                if not await self._wait_until(feed_at_ns + lookahead_ns // 2):
                    return
                slice_end_ns = time.monotonic_ns() + slice_ns
            elif now_ns >= slice_end_ns:
                # A batch, or behind the lookahead (the start, --speed 0): let due requests go
                # between slices.
                await asyncio.sleep(0)
                slice_end_ns = time.monotonic_ns() + slice_ns
            if self.pending >= self.settings.max_pending:
                if not await self._wait_for_room():
                    return
                slice_end_ns = time.monotonic_ns() + slice_ns
            self._hand_out(request)

    async def _wait_for_room(self) -> bool:
        """Wait until fewer than ``max_pending`` requests are pending; False when the replay was
        stopped (or a bug halted it) first."""
        while self.pending >= self.settings.max_pending and not self.aborting:
            self.space_waiter = asyncio.get_running_loop().create_future()
            await self.space_waiter
        return not self.aborting

    async def _wait_until(self, deadline_ns: int) -> bool:
        """Wait until ``deadline_ns``; False when the replay was stopped (or a bug halted it) first."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._push(deadline_ns, waiter)
        await waiter
        return not self.aborting

    async def _watch_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._abort()

    def _abort(self) -> None:
        """Stop reading and releasing: the user's stop, unless a bug halted the replay (its error
        says so). Requests not sent are dropped (neither sent nor planned); in flight ones finish."""
        if self.aborting:
            return
        self.aborting = True
        if not self.halted:
            self.outcome.stopped = True
        if self.timer is not None:
            self.timer.disarm()
        self.armed_ns = None
        for item in self.due.drain():
            if isinstance(item, _Session):
                self._drop_queue(item)
                self._session_idle(item)
            elif not item.done():
                item.set_result(None)
        for waiter in (self.space_waiter, self.drained_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _push(self, due_ns: int, item: _Session | asyncio.Future[None]) -> None:
        if self.due.push(due_ns, item):
            self._arm()

    def _arm(self) -> None:
        wake_ns = self.due.wake_ns()
        if wake_ns == self.armed_ns or self.timer is None:
            return
        self.armed_ns = wake_ns
        if wake_ns is None:
            self.timer.disarm()
        else:
            self.timer.arm(wake_ns)

    def _on_wake(self) -> None:
        """The timer fired: release what is due and arm for the next."""
        self.armed_ns = None
        self._release(time.monotonic_ns())

    def _release(self, now_ns: int) -> None:
        """Start every session due by ``now_ns`` and wake due waiters, in due order; arm for the next."""
        for due_ns, item in self.due.pop_due(now_ns):
            if isinstance(item, _Session):
                self._start(item, due_ns)
            elif not item.done():
                item.set_result(None)
        self._arm()

    def _hand_out(self, request: PlannedRequest) -> None:
        self.outcome.planned += 1
        self.stats.record_planned(request.slot_ns)
        key = request.session
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = _Session(key)
        else:
            self.idle.pop(key, None)
        session.queue.append(request)
        self.pending += 1
        if not session.busy:
            session.busy = True
            self._schedule(session)

    def _schedule(self, session: _Session) -> None:
        """Start ``session``'s head request now if it is due, else queue the session until it is."""
        request = session.queue[0]
        due_ns = self.t0_ns + request.slot_ns
        if session.last_done_ns is not None:
            due_ns = max(due_ns, session.last_done_ns + request.gap_ns)
        now_ns = time.monotonic_ns()
        if due_ns > now_ns:
            self._push(due_ns, session)
            return
        if self.due.wake_ns() is not None:
            # Late (the reader fell behind): anything due earlier that waits for its batch goes first.
            self._release(now_ns)
        self._start(session, due_ns)

    def _start(self, session: _Session, due_ns: int) -> None:
        if self.starter is not None and self.cap_free != 0 and self._send_now(session, due_ns):
            return
        # The loop's own create_task: asyncio.create_task looks the running loop up (a getpid()
        # system call each time on Python 3.11).
        assert self.loop is not None
        session.task = task = self.loop.create_task(self._run_session(session, due_ns))
        self.tasks.add(task)

    def _send_now(self, session: _Session, due_ns: int) -> bool:
        """Send ``session``'s head request through the transport's ``start`` (no task: its answer
        comes back through ``_Sent``); False, nothing sent or counted, when it needs the task path."""
        assert self.starter is not None
        request = session.queue[0]
        sent_ns = time.monotonic_ns()
        capped = self.cap_free > 0
        if capped:
            self.cap_free -= 1
        self.in_flight += 1
        sent = _Sent(self, session, request, due_ns, sent_ns)
        try:
            started = self.starter(
                request.method, request.target, request.headers, request.body, request.source.request, sent.done
            )
        except Exception as exc:  # a transport bug costs this request (but fails the run)
            self._internal_error(exc, f"{request.method} {request.target}")
            started = False
        if not started:
            self.in_flight -= 1
            if capped:
                self.cap_free += 1
            return False
        self.sending += 1
        return True

    def _sent(self, session: _Session, request: PlannedRequest, due_ns: int, sent_ns: int, result: SendResult) -> None:
        """The answer to a request ``_send_now`` sent: count it, then carry the session on, as
        ``_run_session`` does for the task path."""
        self.sending -= 1
        waiter = self.sending_waiter
        if waiter is not None and not self.sending and not waiter.done():
            waiter.set_result(None)  # run() looks again: this may start the session's next request
        try:
            self.in_flight -= 1
            self._free_slot()
            session.last_done_ns = done_ns = self._record(request, due_ns, sent_ns, sent_ns, result)
            session.queue.popleft()
            self._finished(1)
            if session.queue and self.aborting:
                self._drop_queue(session)
            if session.queue:
                request = session.queue[0]
                due_ns = max(self.t0_ns + request.slot_ns, done_ns + request.gap_ns)
                if due_ns > time.monotonic_ns():
                    self._push(due_ns, session)
                else:
                    self._start(session, due_ns)
                return
        except Exception as exc:  # a bug: this queue would never drain, so scheduling stops
            self._session_failed(session, exc)
        self._session_idle(session)

    def _session_failed(self, session: _Session, exc: Exception) -> None:
        """A bug met carrying ``session`` on: its queue would never drain, so the replay stops."""
        self._internal_error(exc, f"session {session.key!r}")
        self.halted = True
        self._drop_queue(session)
        self._abort()

    async def _run_session(self, session: _Session, due_ns: int) -> None:
        """Send ``session``'s requests from its head while each is due; queue it when one is not."""
        try:
            try:
                while True:
                    # Sent here, not in a coroutine of its own: one frame less on every request.
                    request = session.queue[0]
                    released_ns = sent_ns = time.monotonic_ns()
                    if self.cap_free > 0:
                        self.cap_free -= 1
                    elif self.cap_free == 0:
                        sent_ns = await self._hold_back(released_ns)
                    self.in_flight += 1
                    try:
                        result = await self.transport.send(
                            request.method, request.target, request.headers, request.body, request.source.request
                        )
                    except Exception as exc:  # a transport bug costs one request, not the replay (but fails the run)
                        self._internal_error(exc, f"{request.method} {request.target}")
                        result = SendResult(Failure(FailureKind.OTHER, f"{type(exc).__name__}: {exc}"))
                    finally:
                        self.in_flight -= 1
                        self._free_slot()
                    session.last_done_ns = self._record(request, due_ns, released_ns, sent_ns, result)
                    session.queue.popleft()
                    self._finished(1)
                    if not session.queue:
                        break
                    if self.aborting:
                        self._drop_queue(session)
                        break
                    request = session.queue[0]
                    due_ns = max(self.t0_ns + request.slot_ns, session.last_done_ns + request.gap_ns)
                    if due_ns > time.monotonic_ns():
                        self._push(due_ns, session)
                        return
            except Exception as exc:  # a bug: this queue would never drain, so scheduling stops
                self._session_failed(session, exc)
            self._session_idle(session)
        finally:
            # Out of the runner's set as it ends (no done callback: a loop hop a request fewer).
            task, session.task = session.task, None
            if task is not None:
                self.tasks.discard(task)

    def _session_idle(self, session: _Session) -> None:
        session.busy = False
        if session.key.startswith("exchange="):
            # A session of one exchange never gets another request.
            self.sessions.pop(session.key, None)
        else:
            self.idle[session.key] = time.monotonic_ns()
            if len(self.idle) > _MAX_IDLE_SESSIONS:
                key, _ = self.idle.popitem(last=False)
                if (gone := self.sessions.get(key)) is not None and not gone.busy and not gone.queue:
                    del self.sessions[key]

    def _finished(self, count: int) -> None:
        """``count`` pulled requests are done with (sent or dropped): wake whoever waits for room."""
        self.pending -= count
        waiter = self.space_waiter
        if waiter is not None and self.pending < self.settings.max_pending and not waiter.done():
            waiter.set_result(None)
        waiter = self.drained_waiter
        if waiter is not None and self.pending == 0 and not waiter.done():
            waiter.set_result(None)

    def _drop_queue(self, session: _Session) -> None:
        """Forget the requests ``session`` will not send: they count as neither sent nor planned."""
        dropped = len(session.queue)
        self.outcome.planned -= dropped
        session.queue.clear()
        self._finished(dropped)

    async def _hold_back(self, released_ns: int) -> int:
        """Wait for a slot under the in-flight cap (a finishing request hands its slot straight to
        the first waiter); the time it is sent."""
        assert self.loop is not None
        waiter = self.loop.create_future()
        self.cap_waiters.append(waiter)
        await waiter
        sent_ns = time.monotonic_ns()
        self.stats.record_held_back(sent_ns - released_ns)
        return sent_ns

    def _record(self, request: PlannedRequest, due_ns: int, released_ns: int, sent_ns: int, result: SendResult) -> int:
        """Count a finished request in the stats and the results; the time it was done."""
        # When the transport parsed the last byte, if it says (not when this task got to run again).
        done_ns = max(sent_ns, result.done_ns or time.monotonic_ns())
        outcome = result.outcome
        error = error_class(outcome)
        self.stats.record_done(
            request.endpoint,
            t0_ns=self.t0_ns,
            due_ns=due_ns,
            released_ns=released_ns,
            sent_ns=sent_ns,
            done_ns=done_ns,
            status=outcome.status if isinstance(outcome, Response) else None,
            error=error,
        )
        if error is not None and self.stats.wants_example(error):
            path = request.target.partition("?")[0]
            self.stats.record_example(
                ErrorExample(error, done_ns - self.t0_ns, f"{request.method} {path}", describe_outcome(outcome))
            )
        if self.results is not None:
            try:
                self._submit_result(request, due_ns, sent_ns, result.first_byte_ns, done_ns, outcome)
            except Exception as exc:  # a broken results path must not stop the replay (but fails the run)
                self.outcome.results_dropped += 1
                self._internal_error(exc, f"{request.method} {request.target} (its result)")
        return done_ns

    def _free_slot(self) -> None:
        """A request is done: its in-flight slot goes to the first waiter still waiting, or back."""
        while self.cap_waiters:
            waiter = self.cap_waiters.popleft()
            if not waiter.done():  # a waiter cancelled with its task gives no slot back
                waiter.set_result(None)
                return
        if self.cap_free >= 0:
            self.cap_free += 1

    def _submit_result(
        self,
        request: PlannedRequest,
        due_ns: int,
        sent_ns: int,
        first_byte_ns: int | None,
        done_ns: int,
        outcome: Outcome,
    ) -> None:
        assert self.results is not None
        exchange = replay_exchange(request, due_ns, sent_ns, first_byte_ns, done_ns, outcome, self.wall_offset_ns)
        if self.results.submit(exchange):
            self.outcome.results_submitted += 1
        else:
            self.outcome.results_dropped += 1

    async def _tick(self) -> None:
        interval_ns = int(self.settings.progress_interval_s * 1e9)
        next_ns = time.monotonic_ns() + interval_ns
        while True:
            # Not through the due queue: a stop must not end the progress reports.
            await asyncio.sleep(max(0, next_ns - time.monotonic_ns()) / 1e9)
            next_ns += interval_ns
            if gc.get_count()[0] > _GC_PILE:
                gc.collect()  # the frozen start-up heap is not walked
            self._forget_idle_sessions()
            self._report_progress()

    def _forget_idle_sessions(self) -> None:
        horizon_ns = time.monotonic_ns() - _SESSION_MEMORY_NS
        while self.idle:
            key, idle_since_ns = next(iter(self.idle.items()))
            if idle_since_ns > horizon_ns:
                return
            del self.idle[key]
            session = self.sessions.get(key)
            if session is not None and not session.busy and not session.queue:
                del self.sessions[key]

    def _report_progress(self) -> None:
        if self.progress is None:
            return
        overall = self.stats.overall
        now_ns = time.monotonic_ns()
        if now_ns - self.p99_at_ns >= _P99_REFRESH_NS:
            self.p99_ms, self.p99_at_ns = overall.percentile_ms("corrected", 99.0), now_ns
        elapsed_s = 0.0 if self.t0_pending else max(0.0, (now_ns - self.t0_ns) / 1e9)
        window = self.stats.timeline[-3:-1] if len(self.stats.timeline) > 2 else self.stats.timeline
        # Rows cover series.interval_s each (1 s, doubled for long runs): a rate per second.
        recent = sum(row[2] + row[3] for row in window) / max(1, len(window)) / self.stats.series.interval_s
        self.progress(
            Progress(
                elapsed_s=elapsed_s,
                planned=self.outcome.planned,
                done=overall.requests,
                errors=overall.error_count,
                in_flight=self.in_flight,
                rate_per_s=float(recent),
                p99_ms=self.p99_ms,
                held_back=self.stats.held_back,
            )
        )


async def replay(
    plan: Iterable[PlannedRequest],
    transport: Transport,
    *,
    t0_ns: int | None = None,
    settings: RunnerSettings | None = None,
    results: ResultSink | None = None,
    progress: Callable[[Progress], None] | None = None,
    stop: asyncio.Event | None = None,
    stats: ReplayStats | None = None,
) -> ReplayOutcome:
    """Replay ``plan`` through ``transport``. ``t0_ns`` is a ``time.monotonic_ns()`` value (shared by
    worker processes: CLOCK_MONOTONIC is system-wide on Linux); default: as soon as the plan's first
    request has been read.

    A ``ShadowtapError`` from the plan (a corrupt tape) ends dispatching; requests in flight finish,
    and the error is returned in the outcome so partial results can still be written.
    """
    runner = _Runner(
        transport,
        t0_ns,
        settings or RunnerSettings(),
        results,
        progress,
        stop,
    )
    if stats is not None:  # the caller's, sharing the plan's endpoint templater
        runner.stats = runner.outcome.stats = stats
    return await runner.run(plan)
