"""Assembly of a running proxy: the data path with its stages, the tape, events, admin, workers.

``ProxyApp`` builds one process's proxy from a ``ProxyConfig`` (``ProxyServer`` from the data path,
the metrics as its primary observer, the mirror and record stages, the tape writer, the wide-event
log and the admin server) and shuts it down in the order that loses nothing: stop accepting and
finish in-flight requests up to the deadline, drain the mirrors, complete the joins, close the tape
and the event log.
``serve_app`` runs one until SIGTERM/SIGINT; ``WorkersAdmin`` serves the admin API for every worker
of ``--workers N`` from the parent (``shadowtap.workers`` starts and supervises the processes). This
module must never import ``shadowtap`` (the CLI composes it), and never start anything it does not stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric

from shadowtap.proxy.admin import AdminServer, LocalSource, WorkersSource
from shadowtap.proxy.config import ProxyConfig
from shadowtap.proxy.events import EventLog
from shadowtap.proxy.flags import RuntimeFlags
from shadowtap.proxy.forward import ForwardSettings
from shadowtap.proxy.join import JoinIntake, JoinSettings
from shadowtap.proxy.live import LiveDiff, LivePlan, WorkerLive, live_plan
from shadowtap.proxy.live_admin import LiveAdmin
from shadowtap.proxy.live_results import LiveResults
from shadowtap.proxy.live_view import ViewClient
from shadowtap.proxy.metrics import MetricsStage, ProxyMetrics
from shadowtap.proxy.mirror import MirrorStage
from shadowtap.proxy.record import RecordStage
from shadowtap.proxy.rules import RouteTable
from shadowtap.proxy.server import ProxyServer
from shadowtap.proxy.stages import Stage
from shadowtap.proxy.trips import TripGuard
from shadowtap.proxy.worker_stats import merge_workers_stats
from shadowtap.recorder import TapeOptions, TapeWriter
from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.objectstore import UploadOptions, is_object_url
from shadowtap.recorder.settings import settings_from_mapping
from shadowtap.recorder.tape_process import ProcessTapeWriter, TapStats
from shadowtap.recorder.writer import tape_target
from shadowtap.wire import native

__all__ = ["ProxyApp", "WorkersAdmin", "build_forward_settings", "listen_ssl_context", "serve_app"]

log = logging.getLogger(__name__)

#: Runs a coroutine to completion on a fresh event loop (``asyncio.run``, ``uvloop.run``).

#: How long the parent waits for every worker to report that it is listening.


def build_forward_settings(config: ProxyConfig) -> ForwardSettings:
    """The data path's settings: ``primary`` plus the ``forward`` section, validated by the data path."""
    return settings_from_mapping(ForwardSettings, {**config.forward, "primary": config.primary}, "forward")


def listen_ssl_context(config: ProxyConfig) -> ssl.SSLContext | None:
    """A server TLS context from ``tls.cert_file`` / ``tls.key_file``, or None for plain HTTP."""
    if config.tls.cert_file is None or config.tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load certificate and key: {exc}", field="tls.cert_file") from exc
    # HTTP/2 by ALPN when the client offers it, HTTP/1.1 otherwise (shadowtap.proxy.h2server).
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def tape_options(config: ProxyConfig) -> TapeOptions:
    r = config.record
    return TapeOptions(
        max_segment_bytes=r.max_segment_bytes,
        max_segment_age_s=r.max_segment_age_s,
        compression="zstd" if r.compression == "zstd" else "none",
        fsync="every" if r.fsync == "every" else "none" if r.fsync == "none" else "interval",
        queue_size=r.queue_size,
        queue_bytes=r.queue_bytes,
        redaction=r.redaction if r.redaction.enabled else None,
        upload=UploadOptions(r.tape, keep_uploaded=r.keep_uploaded, max_spool_bytes=r.max_spool_bytes)
        if r.tape is not None and is_object_url(r.tape)
        else None,
    )


#: The live differ's metric families (name, help): one process's, or the parent's with --workers N.
_LIVE_EXCHANGES: Final = (
    "shadowtap_live_diff_exchanges",
    "Exchanges of the live differ: tapped or dropped (tap full), then compared, errors, skipped or paused",
)
_LIVE_RESULTS: Final = ("compared", "errors", "skipped", "paused", "tapped", "dropped")
_LIVE_RESTARTS: Final = ("shadowtap_live_diff_restarts", "Live differ processes restarted")
#: How long the parent's live differ gets to finish when the parent's admin could not start.
_FAILED_CLOSE_S: Final = 1.0


class ProxyApp:
    """One process's proxy, built from a config; ``start`` then ``shutdown``."""

    def __init__(
        self, config: ProxyConfig, *, worker: int = 0, flags_array: Any | None = None, live: WorkerLive | None = None
    ) -> None:
        self.config = config
        self.worker = worker
        self.flags = RuntimeFlags(config, flags_array)
        self.metrics = ProxyMetrics(worker)
        self.tape: TapeWriter | ProcessTapeWriter | None = None
        self.events: EventLog | None = None
        self.admin: AdminServer | None = None
        self.server: ProxyServer | None = None
        self.mirror: MirrorStage | None = None
        self.record: RecordStage | None = None
        self.trips: TripGuard | None = None
        #: The live stores read back once a second (diff trip rules, diff metrics, diff events).
        self.results: LiveResults | None = None
        #: The live differ beside the tape writer (shadowtap.proxy.live), and why not when off.
        self.live: LiveDiff | None = None
        self._live_off: str | None = None
        #: Live diff's plan, once ``start`` has made it (or been given it, with --workers N).
        self.live_plan: LivePlan | None = None
        #: Whether this process owns the runtime flags (with --workers N the parent does).
        self._owns_flags = flags_array is None
        #: With --workers N: the parent runs the live differ; this worker's tape writer feeds it.
        self._worker_live = live
        #: The live analysis process (``/diff``, the live results): this process's live differ's,
        #: or with --workers N the parent's.
        self._view: ViewClient | None = None
        self._stages: list[Stage] = []
        self._ready = False
        self._started_at_s = 0.0

    async def start(self, *, reuse_port: bool = False) -> None:
        """Build and start everything; on failure, stop what was started and re-raise."""
        config = self.config
        forward = build_forward_settings(config)
        ssl_context = await asyncio.to_thread(listen_ssl_context, config)  # reads the key files
        try:
            tap_fd: int | None = None
            if self._worker_live is not None:  # the parent runs the differ (and logged why not)
                live, tap_fd = self._worker_live.plan, self._worker_live.tap_fd
                self._live_off = live.why_not
            else:
                live = live_plan(config)  # live.enabled: true that cannot be met fails here
                self._live_off = live.why_not
                if live.why_not is None:
                    self.live = LiveDiff(config, live, self.flags)
                    tap_fd = self.live.tap_fd
                elif config.shadows and config.live.enabled is None:
                    log.info("live diff off: %s", live.why_not)
            self.live_plan = live
            # No tape, live diff on: the tape writer process runs for the differ alone (its
            # ``tap_fd``), writing nothing; recording switches it on (the owner of the flags does).
            tapeless = config.record.tape is None and tap_fd is not None
            if tapeless and self._owns_flags:
                self.flags.recording = True
            if config.record.tape is not None or tapeless:
                # The writer hosts the join, unless the event log needs the joined exchanges here
                # (then the record stage hosts it on the loop and sends the writer whole records).
                intake = None
                if config.events.path is None:
                    r = config.record
                    intake = JoinIntake(JoinSettings(r.join_timeout_s, r.max_pending, r.max_pending_bytes))
                if config.record.tape is None:  # the thread writer cannot tap: the process writer
                    self.tape = ProcessTapeWriter(None, tape_options(config), intake, tap_fd=tap_fd)
                else:
                    directory, options = tape_target(config.record.tape, tape_options(config), config.record.spool)
                    if config.record.writer == "process":
                        self.tape = ProcessTapeWriter(directory, options, intake, tap_fd=tap_fd)
                    else:
                        self.tape = TapeWriter(directory, options, intake)
                await self.tape.start()
                writer = self.tape
                if self.live is not None and isinstance(writer, ProcessTapeWriter):
                    self.live.set_tap_stats(lambda: writer.tap_stats)
                    await self.live.start()
                    self._view = self.live.view.client
                    self.flags.live_diff_shown = True
                elif tap_fd is not None:
                    self.flags.live_diff_shown = True
                    if self._worker_live is not None and self._worker_live.view_socket is not None:
                        self._view = ViewClient(self._worker_live.view_socket)
            if config.events.path is not None:
                self.events = EventLog(config.events.path, RouteTable(config.mirror.routes), config.events.queue_size)
                try:
                    await self.events.start()
                except OSError as exc:
                    self.events = None
                    raise ConfigError(f"cannot open: {exc.strerror or exc}", field="events.path") from exc
            record: RecordStage | None = None
            if self.tape is not None or self.events is not None:
                record = RecordStage(
                    config.record,
                    self.flags,
                    self.metrics,
                    self.tape,
                    None if self.events is None else self.events.on_joined,
                    config.mirror.sample_key,
                )
            stages: list[Stage] = []
            if config.shadows:
                self.mirror = MirrorStage(
                    config.shadows,
                    config.mirror,
                    self.flags,
                    self.metrics,
                    None if record is None else record.on_shadow_outcome,
                    config.record.redaction,
                    forward,
                )
                await self.mirror.start()
                stages.append(self.mirror)
            if record is not None:
                # After the mirror stage: the record stage reads the mirror decisions it wrote.
                self.record = record
                await record.start()
                stages.append(record)
            self._stages = stages
            if config.trips and config.shadows:
                self.trips = TripGuard(config.trips, self.flags, self.metrics)
                self.trips.start()
            if live.databases or (self.trips is not None and self.trips.has_diff_rules):
                self.results = LiveResults(
                    live.databases, live.differ, self.metrics, self.trips, self.events,
                    live_stats=lambda: self.stats()["live_diff"], publish=self.worker == 0, source=self._view,
                )  # fmt: skip
                self.results.start()
            self._register_sources()
            self.server = ProxyServer(forward, stages, ssl_context, observers=[MetricsStage(self.metrics)])
            try:
                await self.server.start(config.listen.host, config.listen.port, reuse_port=reuse_port)
            except OSError as exc:
                raise ConfigError(f"cannot listen on {config.listen}: {exc.strerror or exc}", field="listen") from exc
            if config.admin.listen is not None:
                source = LocalSource(self.metrics, self.stats, lambda: self._ready)
                live_admin = LiveAdmin(live.databases, self._view, self._live_off)
                self.admin = AdminServer(
                    self.flags,
                    source,
                    config.admin.token(),
                    public_metrics=config.admin.public_metrics,
                    live=live_admin,
                )
                port = config.admin.listen.port
                try:
                    await self.admin.start(config.admin.listen.host, port)
                except OSError as exc:
                    where = f"{config.admin.listen.host}:{port}"
                    raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}", field="admin.listen") from exc
        except BaseException:
            await self.shutdown()
            raise
        self._started_at_s = time.monotonic()
        self._ready = True

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def listen_url(self) -> str:
        scheme = "https" if self.config.tls.enabled else "http"
        host = self.config.listen.host
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def admin_url(self) -> str | None:
        if self.admin is None or self.config.admin.listen is None:
            return None
        return _url(self.config.admin.listen.host, self.admin.port)

    def _register_sources(self) -> None:
        m = self.metrics

        def server_counts() -> dict[str, float]:
            if self.server is None:
                return {}
            s = self.server.stats
            return {"in_flight": float(s.in_flight), "connections": float(s.connections)}

        def primary_failures() -> dict[str, float]:
            return {} if self.server is None else {k: float(v) for k, v in self.server.stats.primary_failures.items()}

        def stage_errors() -> dict[str, float]:
            if self.server is None:
                return {}
            return {k: float(v) for k, v in self.server.stats.stage_errors.by_stage.items()}

        def client_errors() -> dict[str, float]:
            return {} if self.server is None else {str(k): float(v) for k, v in self.server.stats.client_errors.items()}

        def client_timeouts() -> dict[str, float]:
            return {} if self.server is None else {k: float(v) for k, v in self.server.stats.client_timeouts.items()}

        def connection_limits() -> dict[str, float]:
            if self.server is None:
                return {}
            s = self.server.stats
            return {"refused": float(s.connections_refused), "evicted": float(s.connections_evicted)}

        def h2_errors() -> dict[str, float]:
            return {} if self.server is None else {k: float(v) for k, v in self.server.stats.h2_errors.items()}

        m.add_source("gauge", "shadowtap_proxy_open", "Requests in flight and client connections open", "kind",
                     server_counts)  # fmt: skip
        m.add_source("counter", "shadowtap_primary_failures", "Primary exchanges that failed, by kind", "kind",
                     primary_failures)  # fmt: skip
        m.add_source("counter", "shadowtap_stage_errors", "Stage calls that raised (a bug; never a lost request)",
                     "stage", stage_errors)  # fmt: skip
        m.add_source("counter", "shadowtap_client_errors", "Requests refused before the primary, by status",
                     "status", client_errors)  # fmt: skip
        m.add_source("counter", "shadowtap_client_timeouts",
                     "Client connections closed at a deadline, by what was awaited (head, body, send, linger)",
                     "wait", client_timeouts)  # fmt: skip
        m.add_source("counter", "shadowtap_connection_limit",
                     "Client connections closed at max_client_connections: refused new, evicted idle", "action",
                     connection_limits)  # fmt: skip
        m.add_source("counter", "shadowtap_h2_errors", "HTTP/2 connections or streams ended for bad input, by cause",
                     "cause", h2_errors)  # fmt: skip
        m.add_source("counter", "shadowtap_capture_budget_cuts",
                     "Request or response copies cut because capture_budget_bytes was held", "",
                     lambda: {"": float(self.server.stats.capture_budget_cuts) if self.server else 0.0})  # fmt: skip
        tape = self.tape
        if tape is not None and self.config.record.tape is not None:
            m.add_source("counter", "shadowtap_tape_writes", "Exchanges written to the tape", "",
                         lambda: {"": float(tape.stats.written)})  # fmt: skip
            m.add_source("counter", "shadowtap_tape_dropped", "Exchanges the tape writer dropped, by reason", "reason",
                         lambda: {"queue_full": float(tape.stats.dropped_queue_full),
                                  "queue_bytes_full": float(tape.stats.dropped_queue_bytes_full),
                                  "closed": float(tape.stats.dropped_closed),
                                  "write_error": float(tape.stats.write_errors),
                                  "encode_error": float(tape.stats.encode_errors)})  # fmt: skip
            m.add_source("gauge", "shadowtap_tape_queue_depth", "Exchanges waiting for the tape writer", "",
                         lambda: {"": float(tape.stats.queue_depth)})  # fmt: skip
            m.add_source("gauge", "shadowtap_tape_queue_bytes", "Bytes of the exchanges waiting for the tape writer",
                         "", lambda: {"": float(tape.stats.queue_bytes)})  # fmt: skip
            if self.config.record.tape is not None and is_object_url(self.config.record.tape):
                # The segment uploader's figures (an s3:// tape): each failed attempt is retried.
                m.add_source("counter", "shadowtap_tape_uploads", "Tape segments uploaded to object storage", "",
                             lambda: {"": float(tape.stats.uploaded_segments)})  # fmt: skip
                m.add_source("counter", "shadowtap_tape_upload_failures",
                             "Failed tape segment uploads, each retried with backoff", "",
                             lambda: {"": float(tape.stats.upload_failures)})  # fmt: skip
                m.add_source("gauge", "shadowtap_tape_upload_spool_bytes",
                             "Bytes of closed tape segments in the spool waiting for upload", "",
                             lambda: {"": float(tape.stats.upload_pending_bytes)})  # fmt: skip
                m.add_source("counter", "shadowtap_tape_spool_full",
                             "Tape batches refused because the upload spool held max_spool_bytes", "",
                             lambda: {"": float(tape.stats.spool_full)})  # fmt: skip
        live = self.live
        if live is not None:

            def live_counts() -> dict[str, float]:
                figures = live.stats()
                return {k: float(figures[k]) for k in _LIVE_RESULTS}

            m.add_source("counter", *_LIVE_EXCHANGES, "result", live_counts)
            m.add_source("counter", *_LIVE_RESTARTS, "", lambda: {"": float(live.stats()["restarts"])})
        events = self.events
        if events is not None:
            m.add_source("counter", "shadowtap_events", "Wide events written or dropped", "result",
                         lambda: {"written": float(events.written), "dropped": float(events.dropped)})  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """The ``/stats`` document."""
        out: dict[str, Any] = {
            "worker": self.worker,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started_at_s, 3) if self._started_at_s else 0.0,
            "ready": self._ready,
            "flags": self.flags.snapshot(),
            "gc": {"frozen": gc.get_freeze_count(), "collections": [g["collections"] for g in gc.get_stats()]},
            # Whether the data path runs compiled (mypyc) or interpreted, and why (shadowtap.wire.native).
            "data_path": native.STATUS,
        }
        if self.server is not None:
            s = self.server.stats
            out["server"] = {
                "requests": s.requests,
                "in_flight": s.in_flight,
                "connections": s.connections,
                "upgrades": s.upgrades,
                "primary_failures": dict(s.primary_failures),
                "client_errors": {str(k): v for k, v in s.client_errors.items()},
                "client_timeouts": dict(s.client_timeouts),
                "connections_refused": s.connections_refused,
                "connections_evicted": s.connections_evicted,
                "capture_budget_cuts": s.capture_budget_cuts,
                "stage_errors": dict(s.stage_errors.by_stage),
                "h2": {"connections": s.h2_connections, "streams": s.h2_streams, "errors": dict(s.h2_errors)},
            }
        out["requests_by_status"] = dict(self.metrics.requests_by_status)
        if self.mirror is not None:
            outcomes: dict[str, dict[str, int]] = {}
            for (shadow, outcome), n in self.metrics.mirror_outcomes.items():
                outcomes.setdefault(shadow, {})[outcome] = n
            out["mirror"] = {
                name: {**shadow, "outcomes": outcomes.get(name, {})} for name, shadow in self.mirror.stats().items()
            }
        if self.trips is not None:
            out["trips"] = self.trips.snapshot()
        if self.record is not None:
            out["record"] = self.record.snapshot()
        if self.config.record.tape is None and self.tape is not None:
            out["tape"] = None  # the tape writer process runs for live diff alone, writing nothing
        elif self.tape is not None:
            out["tape"] = dataclasses.asdict(self.tape.stats)
        if self.events is not None:
            out["events"] = self.events.snapshot()
        out["live_diff"] = self._live_stats()
        return out

    def _live_stats(self) -> dict[str, Any]:
        if self.live is not None:
            return self.live.stats()
        if self._live_off is not None or self._worker_live is None:
            return {"state": "off", "why": self._live_off}
        # --workers N: the parent's /stats has the differ's figures; this worker's tap counts its own
        # (and the pause flag is shared).
        tape = self.tape
        tap = tape.tap_stats if isinstance(tape, ProcessTapeWriter) else TapStats()
        state = "in the parent process" if self.flags.live_diff else "paused"
        return {"state": state, "tapped": tap.frames, "dropped": tap.dropped}

    async def shutdown(self) -> None:
        """Stop accepting, finish in-flight requests, drain mirrors, write the joins, close the tape."""
        self._ready = False
        if self.trips is not None:
            self.trips.stop()
        if self.results is not None:
            await self.results.stop()
            self.results = None
        if self._view is not None and self.live is None:
            await self._view.close()  # a worker's client (the parent's process stays)
        self._view = None
        deadline_s = self.config.shutdown_timeout_s
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s

        def left() -> float:
            return max(0.1, end - loop.time())

        if self.server is not None:
            await self.server.shutdown(left())
        for stage in self._stages:
            try:
                await stage.aclose(left())
            except Exception:
                log.exception("closing stage %s failed", stage.name)
        self._stages = []
        if self.tape is not None:
            await self.tape.close()
            self.tape = None
        if self.live is not None:
            # After the tape writer: its end of the tap is closed, so the differ reads to the end.
            await self.live.close(left())
            self.live = None
        if self.events is not None:
            await self.events.aclose(left())
            self.events = None
        if self.admin is not None:
            await self.admin.close()
            self.admin = None


# --- running until a signal ------------------------------------------------------------------------


async def serve_app(
    config: ProxyConfig,
    *,
    worker: int,
    flags_array: Any | None,
    reuse_port: bool,
    on_ready: Callable[[ProxyApp], None],
    live: WorkerLive | None = None,
) -> None:
    """Run one proxy process until SIGTERM/SIGINT: start, ``on_ready``, drain and shut down."""
    app = ProxyApp(config, worker=worker, flags_array=flags_array, live=live)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await app.start(reuse_port=reuse_port)
        # Everything alive now (modules, config, pools, the app) lives as long as the process: keep
        # the collector from walking it again in every full pass (the replayer does the same). On
        # the bench that pass cost recording proxies about 10 % of their throughput.
        gc.collect()
        gc.freeze()
        on_ready(app)
        await stop.wait()
        log.info("worker %d: signal received, draining", worker)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await app.shutdown()


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class _WorkersLiveSource(WorkersSource):
    """``WorkersSource`` with the parent's live differ in ``/stats`` (``live_diff``): its counters,
    and the tap's summed over the workers that answered (each worker's tape writer counts its own);
    and the workers' mirroring state merged in one process's shape (``merge_workers_stats``)."""

    def __init__(
        self,
        worker_urls: Sequence[str],
        token: str | None,
        live: LiveDiff | None,
        why_off: str | None,
        flags: RuntimeFlags,
    ) -> None:
        super().__init__(worker_urls, token)
        self._live = live
        self._why_off = why_off
        self._flags = flags

    async def stats(self) -> dict[str, Any]:
        out = await super().stats()
        out.update(merge_workers_stats(out["workers"], self._flags.snapshot()))
        if self._live is None:
            out["live_diff"] = {"state": "off", "why": self._why_off}
            return out
        frames = dropped = 0
        for entry in out["workers"]:
            tap = entry.get("stats", {}).get("live_diff", {})
            frames += int(tap.get("tapped", 0))
            dropped += int(tap.get("dropped", 0))
        out["live_diff"] = self._live.stats(TapStats(frames, dropped))
        return out

    async def metrics(self) -> bytes:
        """The workers' series, then the parent's live differ's (the tap's summed over the workers)."""
        merged = await super().metrics()
        if self._live is None:
            return merged
        figures = (await self.stats())["live_diff"]
        exchanges = CounterMetricFamily(*_LIVE_EXCHANGES, labels=["result"])
        for key in _LIVE_RESULTS:
            exchanges.add_metric([key], float(figures[key]))
        restarts = CounterMetricFamily(*_LIVE_RESTARTS, value=float(figures["restarts"]))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families([exchanges, restarts]))
        return merged + generate_latest(registry)


class _Families:
    """A collector over metric families already built."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class WorkersAdmin:
    """The parent's part of ``--workers N``, on an event loop in a thread of its own (the parent's
    main thread supervises the workers): the one live differ every worker's tape writer feeds
    (``live``, ``shadowtap.proxy.live``), and the admin API on the configured address for every
    worker at once (see ``shadowtap.proxy.admin.WorkersSource``), with ``/diff``, ``/live`` and the
    ``live_diff`` figures of ``/stats`` from that differ, and the workers' mirroring state merged
    into ``/stats`` (``shadowtap.proxy.worker_stats``). ``start`` once, and ``stop`` after the
    workers have exited: the differ then reads its pipes to their end and finishes its stores."""

    def __init__(
        self,
        config: ProxyConfig,
        flags: RuntimeFlags,
        worker_urls: Sequence[str],
        start_timeout_s: float = 30.0,
        *,
        live: LiveDiff | None = None,
        live_off: str | None = None,
    ) -> None:
        self._listen = config.admin.listen
        self._token = config.admin.token()
        self._public_metrics = config.admin.public_metrics
        self._flags = flags
        self._worker_urls = list(worker_urls)
        self._start_timeout_s = start_timeout_s
        self._live = live
        self._live_off = live_off
        self._close_timeout_s = config.shutdown_timeout_s
        self._started: Future[str | None] = Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="shadowtap-admin", daemon=True)

    def start(self) -> str | None:
        """Start the live differ and bind and serve the admin address; the admin URL (None without
        one). Raises ``ConfigError`` when the address cannot be had."""
        self._thread.start()
        return self._started.result(timeout=self._start_timeout_s)

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join(self._close_timeout_s + 10.0)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(), never lost in a thread
            if not self._started.done():
                self._started.set_exception(exc)
            else:
                log.exception("the workers' admin server stopped")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        live = self._live
        server: AdminServer | None = None
        try:
            if live is not None:
                await live.start()
            url: str | None = None
            if self._listen is not None:
                source = _WorkersLiveSource(self._worker_urls, self._token, live, self._live_off, self._flags)
                live_admin = LiveAdmin(
                    () if live is None else live.databases, None if live is None else live.view.client, self._live_off
                )
                server = AdminServer(
                    self._flags, source, self._token, public_metrics=self._public_metrics, live=live_admin
                )
                try:
                    port = await server.start(self._listen.host, self._listen.port)
                except OSError as exc:
                    where = f"{self._listen.host}:{self._listen.port}"
                    raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}", field="admin.listen") from exc
                url = _url(self._listen.host, port)
            self._started.set_result(url)
            await self._stop.wait()
        finally:
            if server is not None:
                await server.close()
            if live is not None:
                # Stopped, the workers have exited: the differ reads its pipes to their end. Failed
                # to start: the workers still hold their pipes, and nothing was served to keep.
                await live.close(self._close_timeout_s if self._started.done() else _FAILED_CLOSE_S)
