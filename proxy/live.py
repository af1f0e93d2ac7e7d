"""Live diff beside the proxy: the pipes from the tape writers, and the live differ process's life.

``LiveDiff`` makes the pipe a tape writer process copies each batch it writes to (its ``tap_fd``,
``shadowtap.recorder.tape_process.PipeTap``), starts the live differ (``python -m
shadowtap.differ.live``) on the other end, restarts it with a growing back-off when it dies, tells it
to pause and resume as the ``live_diff`` runtime flag says, and reports its counters for ``/stats``.
Each pipe is a bounded channel (``live.tap_bytes``): when the differ falls behind, the tape writer
drops the copies that do not fit and counts them; nothing waits for the differ, and the differ
dying costs no request and no tape frame. The owner keeps both ends of every pipe open, so a new
differ (or a new tape writer) joins the same stream.

With ``--workers N`` the parent process runs the one ``LiveDiff`` with N pipes, one per worker
(``tap_fds``): each worker's tape writer has a pipe of its own, so batches of different writers
never meet inside a pipe (a write larger than PIPE_BUF is not atomic), and the differ reads them all
into one store: one view of every worker's exchanges. A worker gets its pipe's write end, and the
plan, in a ``WorkerLive``; a worker that dies closes only its own pipe.

Beside the differ runs the live analysis process (``shadowtap.proxy.live_view.LiveView``, started,
restarted and stopped with it, at the same priority): it builds ``/diff`` and reads the stores back
for the trip rules, the metrics and the events, so that none of that runs in a process of the data
path. With ``--workers N`` it runs in the parent too, and each worker is told its socket
(``WorkerLive.view_socket``).

Without a tape (no ``--tape``) the tape writer process still runs for live diff, writing no tape
(``ProcessTapeWriter(None, ...)``): it joins, redacts and encodes exactly as for a tape, so the
differ reads the same frames (credentials redacted), and nothing reaches the disk but the live
stores. ``LivePlan.tapeless`` says so, and the owner of the runtime flags switches ``recording`` on
(the record stage feeds the joiner only while it is). With ``record.writer: thread`` and no tape the
process writer is used all the same (the thread writer cannot tap); with a tape, the thread writer
keeps live diff off.

``live_plan`` decides, from the config, whether live diff runs and why not. This module must never
touch the data path, and never start anything it does not stop (``close``).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import logging
import os
import pickle
import shutil
import struct
import sys
import tempfile
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgpack

from shadowtap.differ.config import DifferConfig, config_from_mapping
from shadowtap.differ.live import LiveOptions, LiveReport, live_db_paths
from shadowtap.proxy import live_results
from shadowtap.proxy.config import ProxyConfig
from shadowtap.proxy.flags import RuntimeFlags
from shadowtap.proxy.live_view import LiveView
from shadowtap.proxy.restarts import Restarting
from shadowtap.recorder.errors import ConfigError, ShadowtapError
from shadowtap.recorder.tape_process import TapStats

__all__ = ["LIVE_DB_NAME", "LiveDiff", "LivePlan", "WorkerLive", "live_plan", "live_summary"]

log = logging.getLogger(__name__)

#: The live store's name in its temporary directory when ``live.db`` is not given.
LIVE_DB_NAME: Final = "live-diff.sqlite"
#: A shadow of this name is the secondary (noise learning), as ``shadowtap diff`` guesses it.
_SECONDARY: Final = "secondary"
#: How often the pause flag is looked at.
_FLAG_POLL_S: Final = 0.25
_F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)


async def spawn_module(module: str, *args: str, pass_fds: tuple[int, ...] = ()) -> asyncio.subprocess.Process:
    """``python -P -m module args`` with this tree first on its import path (the running
    interpreter, so a venv's packages), its stdin and stdout piped to us: the live processes'
    start (the differ, the analysis process)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        "-m",
        module,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        pass_fds=pass_fds,
    )


@dataclass(frozen=True, slots=True)
class LivePlan:
    """Whether live diff runs (``why_not`` says why not), and with what."""

    why_not: str | None
    databases: tuple[tuple[str, str], ...] = ()
    secondary: str | None = None
    differ: DifferConfig = field(default_factory=DifferConfig)
    #: Without ``live.db``: the temporary directory the stores go in (removed at ``LiveDiff.close``).
    temporary: str | None = None
    #: No tape: the tape writer process runs for the live differ alone, writing nothing.
    tapeless: bool = False


def live_plan(config: ProxyConfig) -> LivePlan:
    """Live diff's plan for ``config``. Asked for (``live.enabled: true``) but impossible: a
    ``ConfigError`` naming why; left to the default: off, with the reason. Without ``live.db`` the
    stores go in a new temporary directory (so the tape directory holds segments only). Without a
    tape it runs all the same (``tapeless``: module docstring)."""
    live = config.live
    names = [s.name for s in config.shadows]
    secondary = _SECONDARY if _SECONDARY in names else None
    candidates = [n for n in names if n != secondary]
    why_not = None
    if live.enabled is False:
        why_not = "switched off (live.enabled: false)"
    elif not candidates:
        why_not = "no shadow to compare with the primary"
    elif config.record.tape is not None and config.record.writer != "process":
        why_not = "record.writer is 'thread': the live differ reads the tape writer process's copies"
    if why_not is not None:
        if live.enabled:
            raise ConfigError(f"cannot run live diff: {why_not}", field="live.enabled")
        return LivePlan(why_not)
    differ = config_from_mapping({"diff": dict(config.diff)})
    if differ.proto_descriptor is not None:
        # Read here so a bad file stops the start with its name; each live process loads it again
        # (a descriptor pool does not pickle). A reflection target is asked by those processes only:
        # the primary may not be up yet.
        from shadowtap.differ.protobuf import ProtobufDecodeError, load_schema

        try:
            load_schema(differ.proto_descriptor, None)
        except ProtobufDecodeError as exc:
            raise ConfigError(str(exc), field="diff.proto.descriptor") from exc
    temporary = None
    if live.db is not None:
        db = live.db
    else:
        temporary = tempfile.mkdtemp(prefix="shadowtap-live-")
        db = str(Path(temporary) / LIVE_DB_NAME)
    tapeless = config.record.tape is None
    return LivePlan(None, live_db_paths(db, candidates), secondary, differ, temporary, tapeless)


def live_summary(plan: LivePlan) -> str:
    """Live diff's state for the proxy's start-up line: ``on``, ``on without a tape`` or ``off``."""
    if plan.why_not is not None:
        return "off"
    return "on without a tape" if plan.tapeless else "on"


@dataclass(frozen=True, slots=True)
class WorkerLive:
    """What a worker of ``--workers N`` is told of live diff by the parent, which runs the differ:
    the plan (why not, the stores), and when it runs, the write end of the worker's own tap pipe
    and the live analysis process's socket (``shadowtap.proxy.live_view``).

    Picklable into a spawned worker: the pipe's end travels with it (``multiprocessing`` passes the
    descriptor to the new process under the same number)."""

    plan: LivePlan
    tap_fd: int | None = None
    view_socket: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        if self.tap_fd is None:
            return (WorkerLive, (self.plan, None, self.view_socket))
        from multiprocessing.reduction import DupFd

        return (_inherited_worker_live, (self.plan, DupFd(self.tap_fd), self.view_socket))


def _inherited_worker_live(plan: LivePlan, duplicate: Any, view_socket: str | None) -> WorkerLive:
    return WorkerLive(plan, duplicate.detach(), view_socket)


@dataclass(slots=True)
class _Child:
    process: asyncio.subprocess.Process
    started_s: float
    report: LiveReport = field(default_factory=LiveReport)
    ready: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    exited: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    watcher: asyncio.Task[None] | None = None


class LiveDiff(Restarting):
    """The live differ beside the tape writers (module docstring): ``tap_fds`` (one pipe for each of
    ``taps`` tape writers), then ``await start()``; ``await close()`` after the tape writers have
    closed."""

    what = "the live differ"

    def __init__(self, config: ProxyConfig, plan: LivePlan, flags: RuntimeFlags, taps: int = 1) -> None:
        assert plan.why_not is None and taps >= 1
        super().__init__()
        self._plan = plan
        self._flags = flags
        self._tap_bytes = config.live.tap_bytes
        self._priority = config.live.priority
        self._source = "live:(no tape)" if plan.tapeless else f"live:{config.record.tape}"
        self._read_fds: list[int] = []
        self._write_fds: list[int] = []
        for _ in range(taps):
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
            with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: the default stays
                fcntl.fcntl(write_fd, _F_SETPIPE_SZ, self._tap_bytes)
            self._read_fds.append(read_fd)
            self._write_fds.append(write_fd)
        #: Each pipe's capacity.
        self.pipe_bytes = fcntl.fcntl(self._write_fds[0], getattr(fcntl, "F_GETPIPE_SZ", 1032))
        self._prepared = False
        self._tap_stats: Callable[[], TapStats] = TapStats
        self._child: _Child | None = None
        self._done = LiveReport()
        self._poll: asyncio.Task[None] | None = None
        self._paused_sent: bool | None = None
        #: The live analysis process: ``/diff`` and the live results are its work.
        self.view = LiveView(
            plan.databases,
            plan.differ,
            live_results.keep_seconds(config.trips),
            config.live.priority,
            live_results.MAX_ENDPOINT_LABELS,
        )

    @property
    def plan(self) -> LivePlan:
        return self._plan

    @property
    def tap_fd(self) -> int:
        """The (first) pipe's write end, for ``ProcessTapeWriter(tap_fd=...)``."""
        return self._write_fds[0]

    @property
    def tap_fds(self) -> tuple[int, ...]:
        """Every pipe's write end: one per tape writer (per worker of ``--workers N``)."""
        return tuple(self._write_fds)

    def worker_live(self, index: int) -> WorkerLive:
        """What worker ``index`` of ``--workers N`` is given: the plan and its pipe's write end."""
        return WorkerLive(self._plan, self._write_fds[index], self.view.socket)

    @property
    def databases(self) -> tuple[tuple[str, str], ...]:
        """Each candidate shadow's live store: (name, path)."""
        return self._plan.databases

    def set_tap_stats(self, tap_stats: Callable[[], TapStats]) -> None:
        """Where the tap's counters are read (the tape writer's ``tap_stats``)."""
        self._tap_stats = tap_stats

    def prepare(self) -> None:
        """Create the stores (blocking): a ``ConfigError`` names an unusable ``live.db``, or one
        holding another comparison. ``start`` does it when not done yet."""
        if not self._prepared:
            self._prepare_stores()
            self._prepared = True

    async def start(self) -> None:
        """Create the stores (``prepare``), then start the differ. A differ that cannot start or dies
        is retried with a growing back-off, never failing the proxy."""
        if not self._prepared:
            await asyncio.to_thread(self.prepare)
        try:
            await self._spawn()
        except OSError as exc:
            self._spawn_failed(exc)
        await self.view.start()
        self._poll = asyncio.create_task(self._watch_flag(), name="live-diff:flag")
        names = ", ".join(f"{name} -> {path}" for name, path in self._plan.databases)
        tape = " (no tape: the tape writer process writes nothing)" if self._plan.tapeless else ""
        log.info("live diff on%s: %s", tape, names)

    async def close(self, timeout_s: float = 10.0) -> None:
        """The tape writers have closed their ends: close ours, let the differ finish its stores, exit."""
        self._closing = True
        for task in (self._restart, self._poll):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._restart = self._poll = None
        await self.view.close()
        while self._write_fds:
            os.close(self._write_fds.pop())
        child = self._child
        if child is not None:
            try:
                await asyncio.wait_for(asyncio.shield(child.exited), timeout_s)
            except TimeoutError:
                log.error("the live differ did not finish within %g s; stopping it", timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.exited
        while self._read_fds:
            os.close(self._read_fds.pop())
        if self._plan.temporary is not None:
            shutil.rmtree(self._plan.temporary, ignore_errors=True)

    # --- the child's life -------------------------------------------------------------------------

    def _prepare_stores(self) -> None:
        from shadowtap.differ.live import open_live_store
        from shadowtap.differ.store import RunMeta

        plan = self._plan
        for name, path in plan.databases:
            try:
                store = open_live_store(path)
            except ShadowtapError as exc:
                raise ConfigError(str(exc), field="live.db") from exc
            try:
                store.set_meta(RunMeta("primary", name, plan.secondary, (self._source,)))
            except ConfigError as exc:
                raise ConfigError(str(exc), field="live.db") from exc
            finally:
                store.close()

    async def _spawn(self) -> None:
        process = await spawn_module(
            "shadowtap.differ.live",
            *(arg for fd in self._read_fds for arg in ("--tap-fd", str(fd))),
            pass_fds=tuple(self._read_fds),
        )
        paused = not self._flags.live_diff
        options = LiveOptions(
            databases=self._plan.databases,
            config=self._plan.differ,
            secondary=self._plan.secondary,
            source=self._source,
            paused=paused,
            priority=self._priority,
        )
        data = pickle.dumps(options)
        assert process.stdin is not None
        process.stdin.write(struct.pack("!I", len(data)) + data)
        child = _Child(process, time.monotonic())
        self._child = child
        self._paused_sent = paused
        child.watcher = asyncio.create_task(self._watch(child), name="live-diff:child")

    async def _watch(self, child: _Child) -> None:
        stdout = child.process.stdout
        assert stdout is not None
        unpacker = msgpack.Unpacker(raw=False)
        try:
            while data := await stdout.read(4096):
                unpacker.feed(data)
                for fields in unpacker:
                    child.report = LiveReport(*fields)
                    if not child.ready.done():
                        child.ready.set_result(True)
        except Exception:
            log.exception("bad report from the live differ %d; stopping it", child.process.pid)
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
        code = await child.process.wait()
        if not child.ready.done():
            child.ready.set_result(False)
        self._retire(child, code)
        child.exited.set_result(code)

    def _retire(self, child: _Child, code: int) -> None:
        report, done = child.report, self._done
        for name in ("exchanges", "compared", "errors", "skipped", "duplicates", "paused", "bad_bytes",
                     "undecodable", "secondary_pairs", "commits"):  # fmt: skip
            setattr(done, name, getattr(done, name) + getattr(report, name))
        done.last_started_ns = max(done.last_started_ns, report.last_started_ns)
        if self._child is child:
            self._child = None
        if self._closing:
            return
        self._exited(child.process.pid, code, child.ready.result(), child.started_s)

    async def _watch_flag(self) -> None:
        while True:
            await asyncio.sleep(_FLAG_POLL_S)
            paused = not self._flags.live_diff
            child = self._child
            if child is None or paused == self._paused_sent:
                continue
            stdin = child.process.stdin
            if stdin is not None and not stdin.is_closing():
                stdin.write(b"p" if paused else b"r")
                self._paused_sent = paused
                log.warning("live diff %s", "paused" if paused else "resumed")

    # --- figures ----------------------------------------------------------------------------------

    def severity_counts(self, since_ns: int | None = None) -> dict[str, dict[str, int]]:
        """Per candidate shadow, its unsuppressed signatures by severity in the live store since
        ``since_ns``: what a ``diff.SEVERITY`` trip rule judges. Reads the stores (blocking: call it
        from a thread); a store not written yet counts nothing."""
        from shadowtap.differ.aggregate import build_report
        from shadowtap.differ.store import DiffStore
        from shadowtap.recorder.errors import ShadowtapError

        out: dict[str, dict[str, int]] = {}
        for name, path in self._plan.databases:
            counts: dict[str, int] = {}
            try:
                store = DiffStore(path, create=False)
            except ShadowtapError:
                out[name] = counts
                continue
            try:
                report = build_report(store, self._plan.differ, since_ns=since_ns)
            finally:
                store.close()
            for endpoint in report.endpoints:
                for signature in endpoint.signatures:
                    if not signature.suppressed:
                        counts[signature.severity] = counts.get(signature.severity, 0) + 1
            out[name] = counts
        return out

    @property
    def pid(self) -> int | None:
        child = self._child
        return None if child is None or not child.ready.done() else child.process.pid

    def _waiting_bytes(self) -> int:
        waiting = 0
        out = array.array("i", [0])
        for fd in self._read_fds:
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, termios.FIONREAD, out)
                waiting += out[0]
        return waiting

    def stats(self, tap: TapStats | None = None) -> dict[str, Any]:
        """The ``live_diff`` section of ``/stats``; ``tap``: the tap's counters (by default from
        ``set_tap_stats``; with ``--workers N``, the sum the workers report)."""
        done = self._done
        now = self._child.report if self._child is not None else LiveReport()
        if tap is None:
            tap = self._tap_stats()

        def total(name: str) -> int:
            return int(getattr(done, name) + getattr(now, name))

        last_ns = max(done.last_started_ns, now.last_started_ns)
        waiting = self._waiting_bytes()
        secondary = self._plan.secondary
        needed = max(1, self._plan.differ.min_samples)
        pairs = total("secondary_pairs")
        state = "running" if self.pid is not None else "starting" if self._child is not None else "restarting"
        if state == "running" and not self._flags.live_diff:
            state = "paused"
        return {
            "state": state,
            "pid": self.pid,
            # The tape the exchanges diffed are recorded to; None: no tape, the writer writes nothing.
            "tape": None if self._plan.tapeless else self._source.removeprefix("live:"),
            "restarts": self._restarts,
            "last_exit": self._last_exit,
            "databases": dict(self._plan.databases),
            "exchanges": total("exchanges"),
            "compared": total("compared"),
            "errors": total("errors"),
            "skipped": total("skipped"),
            "duplicates": total("duplicates"),
            "paused": total("paused"),
            "bad_bytes": total("bad_bytes"),
            "undecodable": total("undecodable"),
            "tapped": tap.frames,
            "dropped": tap.dropped,
            "taps": len(self._read_fds),
            "pipe_bytes": self.pipe_bytes,
            "waiting_bytes": waiting,
            # How old the newest exchange diffed is (it includes the join's wait for the shadows).
            "lag_s": round(max(0.0, time.time() - last_ns / 1e9), 3) if last_ns else None,
            # The live analysis process (``/diff``, the live results): a process of its own.
            "view": self.view.stats(),
            "noise": {
                "secondary": secondary,
                "pairs": pairs,
                "needed": needed,
                "state": "no secondary shadow"
                if secondary is None
                else ("warming up" if pairs < needed else "learning"),
            },
        }
