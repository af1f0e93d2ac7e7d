"""``--workers``: the proxy and the replayer run as N processes under one ``Supervisor``.

``serve_proxy`` runs the proxy until SIGTERM/SIGINT: in this process, or in ``config.workers``
processes that share the listen port through SO_REUSEPORT and the runtime flags through shared
memory, the parent serving the configured admin address for all of them and running the one live
differ their tape writers feed (with no tape, writing nothing), each through a pipe of its own
(``shadowtap.proxy.live``), and the one live analysis process (``shadowtap.proxy.live_view``) that
builds ``/diff`` and whose readings each worker's ``diff.*`` trip rules judge (its socket travels
in ``WorkerLive``). A worker that ends on its own stops the others.

``run_replay`` runs one replay sharded by session across N processes that share one start time:
each builds the same plan and keeps the sessions whose stable hash falls on its index
(``PlanOptions.shard``), says it is ready, and starts at the time the parent chose. Each writes its
own results segments into the shared results directory (segment names carry the pid) and sends its
stats back encoded; the parent merges them. Ctrl-C reaches every process of the terminal's group:
the workers stop scheduling, finish what is in flight and report, like a single-process replay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, Final, TextIO

from shadowtap.proxy.app import ProxyApp, WorkersAdmin, serve_app
from shadowtap.proxy.config import ListenAddress, ProxyConfig
from shadowtap.proxy.flags import RuntimeFlags
from shadowtap.proxy.live import LiveDiff, WorkerLive, live_plan, live_summary
from shadowtap.recorder.errors import ConfigError, ShadowtapError
from shadowtap.replayer.job import ReplayJob, run_job
from shadowtap.replayer.result import JobResult
from shadowtap.replayer.runner import Progress
from shadowtap.supervisor import LoopRunner, Supervisor, WorkerLink
from shadowtap.wire import native

__all__ = ["run_replay", "serve_proxy"]

log = logging.getLogger(__name__)

#: How long a proxy worker may take to import, open its tape and bind before it is an error.
PROXY_READY_TIMEOUT_S: Final = 30.0
#: How long a replay worker may take to import, read its first batch and connect.
REPLAY_READY_TIMEOUT_S: Final = 60.0
#: Delay between "every replay worker is ready" and t0, so every worker is back from waiting and
#: sleeping on the schedule before the first request is due.
REPLAY_START_DELAY_NS: Final = 200_000_000
#: Progress snapshots in flight to the parent; old ones are worthless, so a full queue drops.
_PROGRESS_QUEUE_SIZE: Final = 64


# -- the proxy ---------------------------------------------------------------------------------------


def _announce(out: TextIO, listen_url: str, admin_urls: list[str], workers: int, live: str) -> None:
    """The start-up line: where it listens, which data path runs (compiled or not, and why), and
    whether live diff runs (``shadowtap.proxy.live.live_summary``)."""
    admin = ",".join(admin_urls) if admin_urls else "off"
    print(f"shadowtap proxy: listening on {listen_url} admin {admin} workers {workers} pid {os.getpid()} "
          f"data path {native.STATUS} live diff {live}", file=out, flush=True)  # fmt: skip


def _proxy_worker(link: WorkerLink, config: ProxyConfig, flags_array: Any, run: LoopRunner, live: WorkerLive) -> None:
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s worker {link.index} %(levelname)s %(name)s: %(message)s"
    )
    # The parent forwards SIGINT as SIGTERM; a terminal's Ctrl-C must not hit workers twice.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_ready(app: ProxyApp) -> None:
        link.ready((app.port, app.admin_url))

    try:
        run(
            serve_app(config, worker=link.index, flags_array=flags_array, reuse_port=True, on_ready=on_ready, live=live)
        )
    except OSError as exc:
        raise ShadowtapError(f"worker {link.index}: {exc.strerror or exc}") from None


def _reserve_port(config: ProxyConfig) -> tuple[socket.socket, int]:
    """Bind (not listen) with SO_REUSEPORT so ``:0`` becomes one port every worker can share."""
    family = socket.AF_INET6 if ":" in config.listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((config.listen.host, config.listen.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {config.listen}: {exc.strerror or exc}", field="listen") from exc
    return sock, sock.getsockname()[1]


def serve_proxy(config: ProxyConfig, out: TextIO = sys.stdout, run: LoopRunner = asyncio.run) -> int:
    """Run the proxy until SIGTERM/SIGINT; one line on ``out`` once listening. Returns an exit code.

    ``run`` runs a coroutine to completion on an event loop (the CLI passes its uvloop runner); it
    must be a module-level function, as worker processes receive it by reference.
    """
    if config.workers == 1:

        def on_ready(app: ProxyApp) -> None:
            live = "off" if app.live_plan is None else live_summary(app.live_plan)
            _announce(out, app.listen_url, [app.admin_url] if app.admin_url else [], 1, live)

        run(serve_app(config, worker=0, flags_array=None, reuse_port=False, on_ready=on_ready))
        return 0
    reserved, port = _reserve_port(config)
    live: LiveDiff | None = None
    parent: WorkersAdmin | None = None
    try:
        config = dataclasses.replace(config, listen=dataclasses.replace(config.listen, port=port))
        flags = RuntimeFlags(config)
        plan = live_plan(config)  # live.enabled: true that cannot be met fails here
        if plan.why_not is None:
            # One pipe per worker, made before they start: each worker's tape writer feeds its own.
            live = LiveDiff(config, plan, flags, taps=config.workers)
            live.prepare()  # an unusable live.db fails before any worker starts
            flags.live_diff_shown = True
            if plan.tapeless:  # the workers' tape writer processes run for it, writing nothing
                flags.recording = True
        elif config.shadows and config.live.enabled is None:
            log.info("live diff off: %s", plan.why_not)
        worker_live = [WorkerLive(plan) if live is None else live.worker_live(i) for i in range(config.workers)]
        worker_config = config
        if config.admin.listen is not None:
            # Each worker's own admin server is private: loopback, a free port; the parent serves
            # the configured address for all of them.
            loopback = "::1" if ":" in config.admin.listen.host else "127.0.0.1"
            admin = dataclasses.replace(config.admin, listen=ListenAddress(loopback, 0))
            worker_config = dataclasses.replace(config, admin=admin)
        supervisor = Supervisor(
            "shadowtap-proxy",
            config.workers,
            _proxy_worker,
            lambda index: (worker_config, flags.shared_array, run, worker_live[index]),
            forward={signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGTERM},
            grace_s=config.shutdown_timeout_s + 5.0,
            ready_timeout_s=PROXY_READY_TIMEOUT_S,
        )
        with supervisor:
            ready = supervisor.wait_ready()
            reserved.close()
            admin_urls = [admin_url for _, admin_url in ready if admin_url]
            if config.admin.listen is not None or live is not None:
                parent = WorkersAdmin(
                    config, flags, admin_urls, PROXY_READY_TIMEOUT_S, live=live, live_off=plan.why_not
                )
                admin_url = parent.start()
                admin_urls = [] if admin_url is None else [admin_url]
            scheme = "https" if config.tls.enabled else "http"
            _announce(out, f"{scheme}://{config.listen}", admin_urls, config.workers, live_summary(plan))
            return supervisor.wait_exit()
    finally:
        # After every worker has exited: the live differ reads its pipes to their end.
        reserved.close()
        if parent is not None:
            parent.stop()
        elif live is not None:
            asyncio.run(live.close(config.shutdown_timeout_s))


# -- the replayer ------------------------------------------------------------------------------------


def _replay_worker(link: WorkerLink, job: ReplayJob, run: LoopRunner, log_level: int) -> None:
    # A spawned interpreter starts without the parent's logging set-up.
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s worker {link.index} %(name)s: %(message)s")

    async def main() -> JobResult:
        link.ready()
        t0_ns = link.start_time_ns(REPLAY_READY_TIMEOUT_S)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        progress = link.progress if link.wants_progress else None
        return await run_job(job, t0_ns=t0_ns, progress=progress, stop=stop)

    link.result(run(main()).encode())


def run_replay(
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
    level = logging.getLogger().getEffectiveLevel()
    supervisor = Supervisor(
        "shadowtap-replay",
        count,
        _replay_worker,
        lambda i: (dataclasses.replace(job, plan=dataclasses.replace(job.plan, shard=(i, count))), loop_runner, level),
        # The workers handle Ctrl-C themselves (they stop and report) while the parent collects; an
        # interrupt sent to the parent alone is passed on to them.
        forward={signal.SIGINT: signal.SIGINT},
        grace_s=5.0,
        ready_timeout_s=REPLAY_READY_TIMEOUT_S,
        # No listener, no queue: the workers then skip computing live figures altogether.
        progress_size=_PROGRESS_QUEUE_SIZE if progress is not None else 0,
    )
    with supervisor:
        supervisor.wait_ready()
        supervisor.go(REPLAY_START_DELAY_NS)
        merged: JobResult | None = None
        for _, encoded in supervisor.results(progress):
            part = JobResult.decode(encoded)
            if merged is None:
                merged = part
            else:
                merged.merge(part)
        assert merged is not None
        return merged
