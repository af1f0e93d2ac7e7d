"""The live analysis process: the live view's heavy work, out of the proxy's process.

``/diff`` builds a whole report from a live store (``shadowtap.differ.aggregate.build_report``: its
cost grows with the store, hundreds of milliseconds of CPU on an hour's pairs) and the live results
judge every new pair (``shadowtap.proxy.live_results.LiveReader``). Done in the proxy's process,
both would take the interpreter from the data path while a reviewer watches the page. They run
here instead, in ``python -m shadowtap.proxy.live_view``: one process beside the live differ, at its
CPU priority (``live.priority``, idle by default), started, restarted with a growing back-off and
stopped with it (``LiveView``, owned by ``shadowtap.proxy.live.LiveDiff``: with ``--workers N``, one
in the parent).

The process serves a Unix socket in a private temporary directory; each frame is a 4-byte length
then a msgpack array. A client (``ViewClient``: the proxy's admin and ``LiveResults``; with
``--workers N`` the parent's admin and each worker's ``LiveResults``) asks:

- ``diff``: the JSON document of ``GET /diff`` for a window, answered as bytes the admin relays
  unread; the same query within ``DIFF_CACHE_S`` gets the same bytes without a second build;
- ``tick``: a reading of the live stores with the windows the caller's trip rules want
  (``shadowtap.proxy.live_results.pack_reading``): the metrics' counters, the windows, the wait
  reason and the serialised ``diff`` events. Every client reads the same followed stores: a reading
  within ``_FRESH_S`` of the last adds up the asked windows without reading new pairs, so N workers
  asking each second cost one reading; the events go to the client that asks for them (the
  publishing worker), bounded, drops counted;
- ``stats``: its pid and counters.

While the process is away every request fails at once with ``ViewUnavailable`` naming why (``/diff``
answers 503 with it, the trip rules wait with it), and one that gets no answer within its timeout
fails the same way: never a hang. The proxy's own work for the live view is relaying bytes and
applying one summary a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import pickle
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgpack

from shadowtap.differ.config import DifferConfig
from shadowtap.proxy.restarts import Restarting
from shadowtap.recorder.errors import ShadowtapError

if TYPE_CHECKING:
    from shadowtap.proxy.live_results import Reading

__all__ = ["DIFF_CACHE_S", "LiveView", "ViewClient", "ViewOptions", "ViewUnavailable", "child_main"]

log = logging.getLogger(__name__)

#: The same ``/diff`` query within this long is answered with the document built for the first.
DIFF_CACHE_S: Final = 1.0
#: A reading this soon after the last reads no new pairs (another client's tick just did).
_FRESH_S: Final = 0.5
#: How long a client waits for an answer before saying the process does not answer.
DIFF_TIMEOUT_S: Final = 30.0
TICK_TIMEOUT_S: Final = 10.0
_STATS_TIMEOUT_S: Final = 5.0
#: How long a request waits for a process that is starting (its imports) before saying so.
_START_WAIT_S: Final = 10.0
#: Documents kept in the cache at most (distinct queries polled within ``DIFF_CACHE_S``).
_CACHE_ENTRIES: Final = 32
_FRAME: Final = struct.Struct("!I")
_MAX_FRAME: Final = 1 << 30
_READY: Final = b"ready"
_SOCKET_NAME: Final = "view.sock"
#: A Unix socket's path must fit ``sun_path`` (108 bytes on Linux, with its NUL).
_SOCKET_PATH_MAX: Final = 107


def _socket_directory() -> str:
    """A new private (0700) directory for the socket: under ``TMPDIR`` as usual, or under /tmp when
    ``TMPDIR`` is too deep for a socket path (bind would fail with "AF_UNIX path too long")."""
    directory = tempfile.mkdtemp(prefix="shadowtap-view-")
    if len(os.fsencode(os.path.join(directory, _SOCKET_NAME))) <= _SOCKET_PATH_MAX:
        return directory
    os.rmdir(directory)
    return tempfile.mkdtemp(prefix="shadowtap-view-", dir="/tmp")


class ViewUnavailable(ShadowtapError):
    """The live analysis process cannot answer now; the message says why."""


@dataclass(frozen=True, slots=True)
class ViewOptions:
    """What the live analysis process is started with (pickled on its stdin)."""

    socket: str
    databases: tuple[tuple[str, str], ...]
    config: DifferConfig
    #: Seconds of pairs kept for the ``diff.*`` rules' windows (``live_results.keep_seconds``).
    keep_s: int = 0
    priority: str = "idle"
    #: Endpoint templates labelled per shadow (``live_results.MAX_ENDPOINT_LABELS``).
    max_labels: int | None = None
    #: Events only for pairs that started from then on (the proxy's start).
    started_ns: int | None = None
    #: ``DIFF_CACHE_S`` as the proxy had it.
    cache_s: float = DIFF_CACHE_S


def _frame(obj: Any) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    return _FRAME.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    if size > _MAX_FRAME:
        raise ValueError(f"a frame of {size} bytes")
    return msgpack.unpackb(await reader.readexactly(size), raw=False, strict_map_key=False)


# --- the process --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Counters:
    builds: int = 0
    cache_hits: int = 0
    readings: int = 0
    reads: int = 0


class _Analysis:
    """The process's state: the reader of the live stores and the ``/diff`` cache."""

    def __init__(self, options: ViewOptions) -> None:
        from shadowtap.differ.live import with_live_schema
        from shadowtap.proxy.live_results import LiveReader

        self._options = options
        #: With the protobuf schema the config names loaded (in this process: it does not pickle).
        self._config = with_live_schema(options.config)
        self._databases = dict(options.databases)
        self._reader = LiveReader(
            options.databases,
            self._config,
            options.keep_s,
            max_labels=options.max_labels,
            started_ns=options.started_ns,
        )
        self._last_read = -math.inf
        self._cache: dict[tuple[Any, ...], tuple[float, int, bytes]] = {}
        self.counters = _Counters()

    def answer(self, request: list[Any]) -> list[Any]:
        kind, ident = request[0], request[1]
        try:
            if kind == "diff":
                return [ident, True, self._diff(*request[2:])]
            if kind == "tick":
                return [ident, True, self._tick(*request[2:])]
            if kind == "stats":
                return [ident, True, {"pid": os.getpid(), **_counters_dict(self.counters)}]
            return [ident, False, f"unknown request {kind!r}"]
        except Exception as exc:  # a bug answers its caller; the process goes on
            log.exception("%s request failed", kind)
            return [ident, False, f"{type(exc).__name__}: {exc}"]

    def _tick(self, queries: list[list[Any]], with_events: bool, marks: dict[str, int]) -> list[Any]:
        from shadowtap.proxy.live_results import pack_reading

        now = time.monotonic()
        fresh = now - self._last_read >= _FRESH_S
        if fresh:
            self._last_read = now
            self.counters.reads += 1
        self.counters.readings += 1
        reading = self._reader.read([(str(n), int(s)) for n, s in queries], bool(with_events), fresh, marks)
        return pack_reading(reading)

    def _diff(
        self,
        key: list[Any],
        shadow: str,
        since_ns: int | None,
        until_ns: int | None,
        endpoint: str | None,
        examples: int | None,
    ) -> list[Any]:
        cache_key = tuple(key)
        now = time.monotonic()
        cached = self._cache.get(cache_key)
        if cached is not None and now - cached[0] < self._options.cache_s:
            self.counters.cache_hits += 1
            return [cached[1], cached[2]]
        status, body = self._build(shadow, since_ns, until_ns, endpoint, examples)
        self.counters.builds += 1
        self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self._options.cache_s}
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache.clear()
        self._cache[cache_key] = (time.monotonic(), status, body)
        return [status, body]

    def _build(
        self, shadow: str, since_ns: int | None, until_ns: int | None, endpoint: str | None, examples: int | None
    ) -> tuple[int, bytes]:
        from shadowtap.differ.aggregate import build_report
        from shadowtap.differ.reports import proto_schema
        from shadowtap.differ.reports.json_report import report_to_dict
        from shadowtap.differ.store import DiffStore

        path = self._databases.get(shadow)
        if path is None:
            return 404, _json_bytes({"error": f"no live diff for shadow {shadow!r}"})
        try:
            store = DiffStore(path, create=False)
            try:
                report = build_report(store, self._config, since_ns=since_ns, until_ns=until_ns, endpoint=endpoint)
            finally:
                store.close()
        except ShadowtapError as exc:
            return 503, _json_bytes({"error": str(exc)})
        with proto_schema(self._config.compare.proto):
            document = report_to_dict(report)
        if examples is not None:
            for entry in document["endpoints"]:
                for signature in entry["signatures"]:
                    del signature["examples"][examples:]
        return 200, _json_bytes(document)


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data) + "\n").encode()


def _counters_dict(counters: _Counters) -> dict[str, int]:
    return {name: getattr(counters, name) for name in _Counters.__slots__}


async def _serve(options: ViewOptions, stdin: int, stdout: int) -> None:
    from shadowtap.differ.live import _set_priority

    analysis = _Analysis(options)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_frame(reader)
                # One request at a time, in this thread: a build holds up the other clients' requests
                # (they wait, within their timeouts), never the proxy.
                writer.write(_frame(analysis.answer(request)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(options.socket)
    server = await asyncio.start_unix_server(client, path=options.socket)
    os.chmod(options.socket, 0o600)
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def on_stdin() -> None:
        try:
            data = os.read(stdin, 4096)
        except OSError:
            data = b""
        if not data and not gone.done():
            gone.set_result(None)

    loop.add_reader(stdin, on_stdin)
    # Started (imports) at the normal priority; from now on (by default) below the proxy.
    _set_priority(options.priority)
    os.write(stdout, _READY + b"\n")
    try:
        await gone  # the proxy closed our stdin, or is gone
    finally:
        loop.remove_reader(stdin)
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(options.socket)


def child_main(stdin: int = 0, stdout: int = 1) -> int:
    """Serve the live view until ``stdin`` ends; options first on ``stdin``, ``ready`` on ``stdout``."""
    from shadowtap.differ.live import _read_exactly

    # The proxy decides when this process ends (by closing its stdin), not a signal to the group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, format="shadowtap live view [%(process)d]: %(message)s")
    (length,) = _FRAME.unpack(_read_exactly(stdin, _FRAME.size))
    options = pickle.loads(_read_exactly(stdin, length))
    if not isinstance(options, ViewOptions):
        raise TypeError(f"expected ViewOptions on the live view's input, got {options!r:.200}")
    asyncio.run(_serve(options, stdin, stdout))
    return 0


# --- the proxy's side ---------------------------------------------------------------------------


class ViewClient:
    """Requests to the live analysis process over its socket, several in flight on one connection,
    (re)connected when needed. ``why_away``: the owner's word on why the process is not there (a
    client of another process's ``LiveView`` has none)."""

    def __init__(
        self,
        path: str,
        why_away: Callable[[], str | None] | None = None,
        until_started: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.path = path
        self._why_away = why_away
        self._until_started = until_started
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)

    def _reason(self, what: str) -> str:
        away = None if self._why_away is None else self._why_away()
        return away or f"the live analysis process {what}"

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None:
                return self._writer
            if self._until_started is not None:
                await self._until_started()
            away = None if self._why_away is None else self._why_away()
            if away:
                raise ViewUnavailable(away)
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
            except OSError as exc:
                raise ViewUnavailable(self._reason(f"cannot be reached: {exc.strerror or exc}")) from None
            self._writer = writer
            self._reader_task = asyncio.get_running_loop().create_task(self._read(reader, writer))
            return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                ident, ok, payload = await _read_frame(reader)
                future = self._pending.get(ident)
                if future is None or future.done():
                    continue  # its caller gave up waiting
                if ok:
                    future.set_result(payload)
                else:
                    future.set_exception(ViewUnavailable(f"the live analysis process failed: {payload}"))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, OSError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            error = ViewUnavailable(self._reason("ended"))
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)

    async def request(self, kind: str, *args: Any, timeout_s: float) -> Any:
        """The answer to one request, or ``ViewUnavailable`` saying why there is none."""
        writer = await self._connect()
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            writer.write(_frame([kind, ident, *args]))
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise ViewUnavailable(f"the live analysis process did not answer within {timeout_s:g} s") from None
        except (ConnectionError, OSError) as exc:
            raise ViewUnavailable(self._reason(f"cannot be reached: {exc}")) from None
        finally:
            del self._pending[ident]

    async def diff(
        self,
        key: tuple[Any, ...],
        shadow: str,
        since_ns: int | None,
        until_ns: int | None,
        endpoint: str | None,
        examples: int | None,
    ) -> tuple[int, bytes]:
        """``GET /diff``'s status and JSON body, built (or taken from the cache) by the process."""
        status, body = await self.request(
            "diff", list(key), shadow, since_ns, until_ns, endpoint, examples, timeout_s=DIFF_TIMEOUT_S
        )
        return int(status), bytes(body)

    async def reading(self, queries: list[tuple[str, int]], with_events: bool, marks: dict[str, int]) -> Reading:
        """A live-results reading (``shadowtap.proxy.live_results.ReadingSource``)."""
        from shadowtap.proxy.live_results import unpack_reading

        packed = await self.request("tick", [list(q) for q in queries], with_events, marks, timeout_s=TICK_TIMEOUT_S)
        return unpack_reading(packed)

    async def stats(self) -> dict[str, Any]:
        return dict(await self.request("stats", timeout_s=_STATS_TIMEOUT_S))

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass(slots=True)
class _Child:
    process: asyncio.subprocess.Process
    started_s: float
    ready: bool = False
    #: Set when it is ready or has exited.
    started: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    watcher: asyncio.Task[None] | None = None
    exited: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class LiveView(Restarting):
    """The live analysis process's life (module docstring): ``await start()``, ``await close()``.
    ``socket``: where its clients connect (known before it starts: a worker of ``--workers N`` is
    told it when spawned); ``client``: this process's own ``ViewClient``."""

    what = "the live analysis process"

    def __init__(
        self,
        databases: tuple[tuple[str, str], ...],
        config: DifferConfig,
        keep_s: int = 0,
        priority: str = "idle",
        max_labels: int | None = None,
    ) -> None:
        super().__init__()
        self._directory = _socket_directory()
        self.socket = str(Path(self._directory) / _SOCKET_NAME)
        self._options = ViewOptions(
            self.socket, databases, config, keep_s, priority, max_labels, time.time_ns(), DIFF_CACHE_S
        )
        self._child: _Child | None = None
        self._client: ViewClient | None = None

    @property
    def client(self) -> ViewClient:
        if self._client is None:
            self._client = ViewClient(self.socket, self.why_away, self.until_started)
        return self._client

    async def until_started(self) -> None:
        """Wait (at most ``_START_WAIT_S``) while the process is starting."""
        child = self._child
        if child is not None and not child.ready:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(child.started), _START_WAIT_S)

    def why_away(self) -> str | None:
        """Why the process cannot answer now (None when it runs)."""
        if self._closing:
            return "the live analysis process is stopping"
        child = self._child
        if child is None:
            last = f" (it {self._last_exit})" if self._last_exit else ""
            return f"the live analysis process is restarting{last}"
        if not child.ready:
            return "the live analysis process is starting"
        return None

    @property
    def pid(self) -> int | None:
        child = self._child
        return None if child is None or not child.ready else child.process.pid

    def stats(self) -> dict[str, Any]:
        """The ``view`` part of ``/stats``' ``live_diff`` section."""
        child = self._child
        state = "running" if self.pid is not None else "starting" if child is not None else "restarting"
        return {"state": state, "pid": self.pid, "restarts": self._restarts, "last_exit": self._last_exit}

    async def start(self) -> None:
        """Start the process; one that cannot start or dies is retried with a growing back-off."""
        try:
            await self._spawn()
        except OSError as exc:
            self._spawn_failed(exc)

    async def close(self, timeout_s: float = 5.0) -> None:
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart
            self._restart = None
        if self._client is not None:
            await self._client.close()
        child = self._child
        if child is not None:
            stdin = child.process.stdin
            if stdin is not None:
                stdin.close()
            try:
                await asyncio.wait_for(asyncio.shield(child.exited), timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.exited
        self.remove()

    def remove(self) -> None:
        """Remove the socket's directory (``close`` does; for a view never started)."""
        shutil.rmtree(self._directory, ignore_errors=True)

    async def _spawn(self) -> None:
        from shadowtap.proxy.live import spawn_module

        process = await spawn_module("shadowtap.proxy.live_view")
        data = pickle.dumps(self._options)
        assert process.stdin is not None
        process.stdin.write(_FRAME.pack(len(data)) + data)
        child = _Child(process, time.monotonic())
        self._child = child
        child.watcher = asyncio.get_running_loop().create_task(self._watch(child), name="live-view:child")

    async def _watch(self, child: _Child) -> None:
        stdout = child.process.stdout
        assert stdout is not None
        with contextlib.suppress(Exception):
            if (await stdout.readline()).strip() == _READY:
                child.ready = True
        child.started.set_result(None)
        code = await child.process.wait()
        if self._child is child:
            self._child = None
        child.exited.set_result(code)
        if self._closing:
            return
        self._exited(child.process.pid, code, child.ready, child.started_s)


if __name__ == "__main__":
    # Through the module's own name: the pickled options name their class there, not in __main__.
    from shadowtap.proxy import live_view

    sys.exit(live_view.child_main())
