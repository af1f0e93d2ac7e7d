"""shadowtap's locustfile: the replay plan on a Locust master and its workers (gevent edge).

Master (one machine; it sends no requests)::

    locust -f replayer/locustfile.py --headless --master --expect-workers 2 --users 2 --spawn-rate 2 \\
        --host http://target:8080 --shadowtap-job job.json --shadowtap-out merged.json --run-time 10m

Workers (any machines that can reach the master and the target, with the tapes at the job's paths)::

    locust -f replayer/locustfile.py --worker --master-host master.example

``--users`` must equal ``--expect-workers``: each worker runs one ReplayUser, which replays the
sessions whose stable hash falls on the worker's index, open loop, from the t0 the master
broadcasts with the job. Each worker sends its three HdrHistograms (encoded) to the master, which
merges them, writes ``--shadowtap-out`` and stops the test. ``shadowtap replay --locust`` writes the
job and runs all of this locally.

Each request goes over the HTTP version the asyncio replayer would send it in (``LocustJob.sends_http2``):
HTTP/1.1 through Locust's ``FastHttpSession``, HTTP/2 (h2c by prior knowledge, or TLS with ALPN
``h2``) through ``shadowtap.replayer.h2blocking``, whose answers (status, trailers, gRPC messages) and
failures are classed as the asyncio replayer classes them (``error_class``: a gRPC call that failed
counts as ``grpc-<STATUS>``) and go to the results tape the same way.

Runs under gevent: it must never run asyncio code (it imports the plan, stats and result modules,
and from the transports only pure helpers), and never block the hub on anything but the network.
Nor may it leave an error to Locust, which logs a failed task into a worker's log and carries on:
every error ends in the worker's report, so ``shadowtap replay --locust`` fails (exit 2).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
from gevent.event import AsyncResult
from gevent.pool import Group
from locust import User, constant, events, task
from locust.contrib.fasthttp import FastHttpSession
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from shadowtap.recorder import RedactionRules, SyncTapeWriter, TapeOptions
from shadowtap.recorder.errors import ShadowtapError
from shadowtap.recorder.model import Failure, FailureKind, Outcome, Response
from shadowtap.recorder.private import open_private
from shadowtap.replayer.h2blocking import BlockingH2Client
from shadowtap.replayer.locust_plan import MSG_STATS, MSG_T0, LocustJob, merge_reports, shard_plan, t0_monotonic_ns
from shadowtap.replayer.plan import PlannedRequest, PlanStats
from shadowtap.replayer.result import JobResult, replay_exchange
from shadowtap.replayer.stats import ErrorExample, ReplayStats
from shadowtap.replayer.transport import describe_outcome, error_class

log = logging.getLogger("shadowtap.locust")

# Set once per process by the master's broadcast (or locally without a master): the job and t0.
_START: AsyncResult = AsyncResult()
# The master's collected worker reports; the test ends when every worker has reported.
_REPORTS: list[dict[str, Any]] = []
# Below this much time to a deadline the scheduler yields instead of arming a (ms) timer.
_SPIN_NS = 200_000
# A worker that hears no start from the master within this long gives up (raises, test ends).
_START_TIMEOUT_S = 120.0


def _add_arguments(parser: Any) -> None:
    parser.add_argument("--shadowtap-job", default="", help="replay job JSON (written by shadowtap replay --locust)")
    parser.add_argument("--shadowtap-out", default="", help="where the master writes the merged results JSON")


def _on_init(environment: Any, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message(MSG_STATS, _on_stats)
    elif isinstance(runner, WorkerRunner):
        runner.register_message(MSG_T0, lambda environment, msg, **_: _START.set(msg.data))


def _load_job(environment: Any) -> str:
    path = environment.parsed_options.shadowtap_job
    if not path:
        raise SystemExit("shadowtap locustfile: --shadowtap-job FILE is required on the master")
    text = Path(path).read_text(encoding="utf-8")
    LocustJob.from_json(text, path=path)  # fail on the master, before any worker starts
    return text


def _on_test_start(environment: Any, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return
    text = _load_job(environment)
    job = LocustJob.from_json(text)
    workers = environment.parsed_options.expect_workers if isinstance(runner, MasterRunner) else 1
    start = {"t0_wall_ns": time.time_ns() + int(job.start_delay_s * 1e9), "workers": workers, "job": text}
    if isinstance(runner, MasterRunner):
        runner.send_message(MSG_T0, start)
    else:
        _START.set(start)


# Registered through an Any alias: locust's hook methods are untyped, the listeners are not.
_events: Any = events
_events.init_command_line_parser.add_listener(_add_arguments)
_events.init.add_listener(_on_init)
_events.test_start.add_listener(_on_test_start)


def _on_stats(environment: Any, msg: Any, **_: Any) -> None:
    _REPORTS.append(msg.data)
    if len(_REPORTS) >= environment.parsed_options.expect_workers:
        _finish(environment, _REPORTS)


def _finish(environment: Any, reports: list[dict[str, Any]]) -> None:
    merged = merge_reports(reports)
    out = environment.parsed_options.shadowtap_out
    if out:
        per_worker = {str(r.get("worker")): r["stats"]["overall"]["requests"] for r in reports}
        document = {"workers": len(reports), "requests_per_worker": per_worker, "result": merged.encode()}
        with open_private(out, "w", encoding="utf-8") as file:
            file.write(json.dumps(document))
    log.info("shadowtap: %d workers reported %d requests", len(reports), merged.stats.overall.requests)
    # Quit from a fresh greenlet: quitting kills the greenlet that delivered this message.
    gevent.spawn(environment.runner.quit)


def _error_class(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError) or getattr(error, "errno", None) == errno.ECONNREFUSED:
        return "connect"
    if isinstance(error, socket.timeout | gevent.Timeout | TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionResetError | BrokenPipeError):
        return "reset"
    return "other"


def _sleep_until(deadline_ns: int) -> None:
    while True:
        remaining_ns = deadline_ns - time.monotonic_ns()
        if remaining_ns <= 0:
            return
        gevent.sleep(0 if remaining_ns <= _SPIN_NS else remaining_ns / 1e9)


class _Session:
    __slots__ = ("last_done_ns", "queue", "running")

    def __init__(self) -> None:
        self.queue: deque[PlannedRequest] = deque()
        self.last_done_ns: int | None = None
        self.running = False


class _GeventReplay:
    """The runner's schedule under gevent: open-loop sessions, due = max(slot, previous done + gap)."""

    def __init__(
        self,
        client: FastHttpSession | None,
        h2_client: BlockingH2Client | None,
        job: LocustJob,
        t0_ns: int,
        results: SyncTapeWriter | None,
        request_event: Any = None,
    ) -> None:
        self.client = client
        self.h2_client = h2_client
        # Locust's own per-request event (its console and web stats): FastHttpSession fires it for
        # HTTP/1.1; the HTTP/2 requests fire it here.
        self.request_event = request_event
        self.job = job
        self.t0_ns = t0_ns
        # Disk writes block the hub briefly: the writer buffers a block (1 MiB) between writes.
        self.results = results
        self.results_failed = 0
        self.wall_offset_ns = time.time_ns() - time.monotonic_ns()
        # Bugs met in a session or the plan (with the first one's place): they fail the job.
        self.internal_errors = 0
        self.first_internal_error = ""
        self.stats = ReplayStats()
        self.sessions: dict[str, _Session] = {}
        self.group = Group()
        self.pending = 0

    def run(self, plan: Iterator[PlannedRequest]) -> JobResult:
        result = JobResult(self.stats, {})
        lookahead_ns = int(self.job.lookahead_s * 1e9)
        try:
            for request in plan:
                _sleep_until(self.t0_ns + request.slot_ns - lookahead_ns)
                while self.pending >= self.job.max_pending:
                    gevent.sleep(0.001)  # bounded memory: wait for requests to finish
                result.planned += 1
                self.stats.record_planned(request.slot_ns)
                session = self.sessions.setdefault(request.session, _Session())
                session.queue.append(request)
                self.pending += 1
                if not session.running:
                    session.running = True
                    self.group.spawn(self._run_session, request.session, session)
        except ShadowtapError as exc:
            result.error, result.error_type = str(exc), type(exc).__name__
        except Exception as exc:  # a bug in the plan: end as for a bad tape, keeping what was sent
            self._internal_error(exc, "reading the plan")
        self.group.join()
        if result.error is None and self.internal_errors:
            count = self.internal_errors
            result.error = (
                f"the replayer failed {count} time{'s' if count > 1 else ''}, first on {self.first_internal_error}"
            )
            result.error_type = "ShadowtapError"
        return result

    def _internal_error(self, exc: Exception, where: str) -> None:
        self.internal_errors += 1
        if not self.first_internal_error:
            self.first_internal_error = f"{where}: {type(exc).__name__}: {exc}"
        log.debug("replayer failed on %s", where, exc_info=exc)

    def _run_session(self, key: str, session: _Session) -> None:
        try:
            while session.queue:
                request = session.queue[0]
                due_ns = self.t0_ns + request.slot_ns
                if session.last_done_ns is not None:
                    due_ns = max(due_ns, session.last_done_ns + request.gap_ns)
                _sleep_until(due_ns)
                session.last_done_ns = self._send(request, due_ns)
                session.queue.popleft()
                self.pending -= 1
        except Exception as exc:  # a bug: this session ends, its requests unsent, and the job fails
            self._internal_error(exc, f"session {key!r}")
            self.pending -= len(session.queue)
            session.queue.clear()
        finally:
            session.running = False
            if key.startswith("exchange="):
                del self.sessions[key]

    def _send(self, request: PlannedRequest, due_ns: int) -> int:
        if self.h2_client is not None and self.job.sends_http2(request.source.request.http_version):
            return self._send_h2(self.h2_client, request, due_ns)
        assert self.client is not None  # made whenever a request may go over HTTP/1.1
        sent_ns = time.monotonic_ns()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        response = self.client.request(
            request.method,
            request.target,
            name=request.endpoint,
            # geventhttpclient sends a bytes payload as is; locust's annotation is narrower than that.
            data=request.body or None,  # type: ignore[arg-type]
            headers=headers,
            allow_redirects=False,
        )
        done_ns = time.monotonic_ns()
        error: BaseException | None = getattr(response, "error", None)
        status: int | None = response.status_code or None
        error_class = None
        if status is None:
            # No status: the request failed before a response head (refused, timed out, reset).
            error_class = "other" if error is None else _error_class(error)
        kind = error_class if status is None else "5xx" if status >= 500 else None
        detail = "" if kind is None else str(status) if status is not None else f"{kind}: {error}" if error else kind
        self._count(request, due_ns, sent_ns, done_ns, status, error_class, kind, detail)
        if self.results is not None:
            try:
                self._record_result(request, due_ns, sent_ns, done_ns, response, error, status)
            except Exception as exc:  # a broken results path must not stop the replay (but fails the job)
                self.results_failed += 1
                self._internal_error(exc, f"{request.method} {request.target} (its result)")
        return done_ns

    def _count(
        self,
        request: PlannedRequest,
        due_ns: int,
        sent_ns: int,
        done_ns: int,
        status: int | None,
        error: str | None,
        example: str | None,
        detail: str,
    ) -> None:
        """A request done, in the stats (``error``: its class, None when it was answered), and kept as
        an example of ``example`` (a class of error, or "5xx") while that kind wants one."""
        self.stats.record_done(
            request.endpoint,
            t0_ns=self.t0_ns,
            due_ns=due_ns,
            released_ns=sent_ns,
            sent_ns=sent_ns,
            done_ns=done_ns,
            status=status,
            error=error,
        )
        if example is not None and self.stats.wants_example(example):
            path = request.target.partition("?")[0]
            self.stats.record_example(ErrorExample(example, done_ns - self.t0_ns, f"{request.method} {path}", detail))

    def _send_h2(self, client: BlockingH2Client, request: PlannedRequest, due_ns: int) -> int:
        """One request over HTTP/2: counted, its example kept and its result taped as the asyncio
        runner does (``shadowtap.replayer.runner``)."""
        sent_ns = time.monotonic_ns()
        result = client.send(request.method, request.target, request.headers, request.body, request.source.request)
        done_ns = time.monotonic_ns()
        outcome = result.outcome
        error = error_class(outcome)
        status = outcome.status if isinstance(outcome, Response) else None
        detail = "" if error is None else describe_outcome(outcome)
        self._count(request, due_ns, sent_ns, done_ns, status, error, error, detail)
        if self.request_event is not None:
            self.request_event.fire(
                request_type=request.method,
                name=request.endpoint,
                response_time=(done_ns - sent_ns) / 1e6,
                response_length=len(outcome.body) if isinstance(outcome, Response) else 0,
                exception=None if error is None else RuntimeError(describe_outcome(outcome)),
                context={},
            )
        if self.results is not None:
            try:
                exchange = replay_exchange(
                    request, due_ns, sent_ns, result.first_byte_ns, done_ns, outcome, self.wall_offset_ns
                )
                self.results.write(exchange)
            except ShadowtapError:
                self.results_failed += 1
            except Exception as exc:  # a broken results path must not stop the replay (but fails the job)
                self.results_failed += 1
                self._internal_error(exc, f"{request.method} {request.target} (its result)")
        return done_ns

    def _record_result(
        self,
        request: PlannedRequest,
        due_ns: int,
        sent_ns: int,
        done_ns: int,
        response: Any,
        error: BaseException | None,
        status: int | None,
    ) -> None:
        assert self.results is not None
        outcome: Outcome
        if status is None:
            kind = {"connect": FailureKind.CONNECT_ERROR, "timeout": FailureKind.TIMEOUT, "reset": FailureKind.RESET}
            outcome = Failure(kind.get(_error_class(error) if error else "other", FailureKind.OTHER), str(error or ""))
        else:
            raw_headers = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items())
            # geventhttpclient hands the body back decompressed: drop the encoding (and the length
            # of the encoded body) so the record says what the body is and the differ decodes nothing.
            if any(k.lower() == b"content-encoding" for k, _ in raw_headers):
                raw_headers = tuple(
                    (k, v) for k, v in raw_headers if k.lower() not in (b"content-encoding", b"content-length")
                )
            outcome = Response(status, "", raw_headers, response.content or b"")
        exchange = replay_exchange(request, due_ns, sent_ns, None, done_ns, outcome, self.wall_offset_ns)
        try:
            self.results.write(exchange)
        except ShadowtapError:
            self.results_failed += 1


class ReplayUser(User):
    """One per worker: replays this worker's shard of the job once, reports, and stops."""

    wait_time = constant(0)

    @task
    def replay_shard(self) -> None:
        environment = self.environment
        start = _START.get(timeout=_START_TIMEOUT_S)
        job = LocustJob.from_json(start["job"])
        runner = environment.runner
        index = runner.worker_index if isinstance(runner, WorkerRunner) else 0
        plan_stats = PlanStats()
        results: SyncTapeWriter | None = None
        h2_client: BlockingH2Client | None = None
        try:
            client = None
            if not job.sends_http2("1.1"):
                client = FastHttpSession(
                    job.target,
                    request_event=environment.events.request,
                    user=self,
                    concurrency=job.max_connections,
                    network_timeout=job.timeout_s,
                    connection_timeout=job.connect_timeout_s,
                )
            if job.http_version != "1.1":
                h2_client = BlockingH2Client(job.target, job.client_settings())
            if job.results_dir is not None:
                redaction = RedactionRules() if job.redact_results else None
                results = SyncTapeWriter(job.results_dir, TapeOptions(redaction=redaction))
            plan = shard_plan(job, index, int(start["workers"]), plan_stats)
            t0_ns = t0_monotonic_ns(int(start["t0_wall_ns"]))
            replayer = _GeventReplay(client, h2_client, job, t0_ns, results, environment.events.request)
            result = replayer.run(plan)
            result.results_dropped = replayer.results_failed
        except ShadowtapError as exc:
            result = JobResult(ReplayStats(), {}, error=str(exc), error_type=type(exc).__name__)
        except Exception as exc:  # report it: Locust would log it in the worker and run the task again
            log.debug("replay worker %d failed", index, exc_info=exc)
            error = f"replay worker {index} crashed: {type(exc).__name__}: {exc}"
            result = JobResult(ReplayStats(), {}, error=error, error_type="ShadowtapError")
        finally:
            if h2_client is not None:
                h2_client.close()
            if results is not None:
                results.close()
        if results is not None:
            written = results.stats
            result.results_written = written.written
            result.results_dropped += written.write_errors + written.encode_errors
        result.plan_stats = plan_stats.as_dict()
        report = result.encode()
        report["worker"] = index
        if isinstance(runner, WorkerRunner):
            runner.send_message(MSG_STATS, report)
        else:
            _finish(environment, [report])
        raise StopUser()
