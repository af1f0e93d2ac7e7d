"""``shadowtap replay --locust``: run the replay on a local Locust master and N Locust workers.

It writes the job as JSON, starts ``locust`` as subprocesses (master bound to loopback, workers
connecting to it), waits for the master to write the merged results, and returns them. Locust
and gevent are only ever imported in those subprocesses: gevent monkey-patches on import, so it
must never be imported here or anywhere in shadowtap's asyncio processes. Every process started
here is stopped before returning, whatever happened, and the whole run is bounded by a timeout.

Workers send each request over the HTTP version the asyncio replayer would use (the job carries
``--http2``/``--http1`` and an ``h2c://`` target): exchanges recorded over HTTP/2 (gRPC calls, HTTP/2
clients) go over HTTP/2 (``shadowtap.replayer.locustfile``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from shadowtap.recorder.errors import ConfigError, UpstreamError
from shadowtap.recorder.objectstore import is_object_url
from shadowtap.replayer.job import ReplayJob
from shadowtap.replayer.locust_plan import LocustJob
from shadowtap.replayer.result import JobResult

__all__ = ["LOCUSTFILE", "locust_job", "run_locust"]

LOCUSTFILE: Final = Path(__file__).with_name("locustfile.py")
# How long workers get to exit after the master has quit (they follow its quit message).
_WORKER_EXIT_S: Final = 10.0


def _absolute(path: str) -> str:
    """A tape path as every worker reads it: absolute, or an ``s3://`` URL as it is."""
    return path if is_object_url(path) else str(Path(path).resolve())


def locust_job(job: ReplayJob) -> LocustJob:
    """The Locust form of a replay job (paths made absolute: workers may run elsewhere)."""
    return LocustJob(
        tapes=tuple(_absolute(str(t)) for t in job.tapes),
        target=job.target,
        plan=job.plan,
        max_connections=job.client.max_connections,
        timeout_s=job.client.timeout_s,
        connect_timeout_s=job.client.connect_timeout_s,
        lookahead_s=job.runner.lookahead_s,
        max_pending=job.runner.max_pending,
        salvage=job.salvage,
        results_dir=None if job.results_dir is None else _absolute(job.results_dir),
        redact_results=job.redact_results,
        http_version=job.client.http_version,
        message_speed=job.client.message_speed,
        max_message_gap_s=job.client.max_message_gap_s,
    )


def _locust_binary() -> str:
    beside = Path(sys.executable).with_name("locust")
    found = str(beside) if beside.exists() else shutil.which("locust")
    if found is None:
        raise ConfigError("locust is not installed (pip install 'shadowtap[locust]')", field="locust")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return "no output"


def run_locust(
    job: ReplayJob, *, workers: int, timeout_s: float, environ: Mapping[str, str] | None = None
) -> JobResult:
    """Run ``job`` on a local Locust master with ``workers`` worker processes; merged results."""
    if workers < 1:
        raise ConfigError(f"must be >= 1, got {workers}", field="locust-workers")
    spec = locust_job(job)
    binary = _locust_binary()
    with tempfile.TemporaryDirectory(prefix="shadowtap-locust-") as tmp:
        work = Path(tmp)
        job_path, out_path = work / "job.json", work / "merged.json"
        job_path.write_text(spec.to_json(), encoding="utf-8")
        port = _free_port()
        common = [binary, "-f", str(LOCUSTFILE), "--loglevel", "WARNING"]
        master_cmd = [
            *common,
            "--headless",
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--expect-workers",
            str(workers),
            "--users",
            str(workers),
            "--spawn-rate",
            str(workers),
            "--host",
            spec.target,
            "--run-time",
            f"{max(1, int(timeout_s))}s",
            "--exit-code-on-error",
            "0",
            "--only-summary",
            "--shadowtap-job",
            str(job_path),
            "--shadowtap-out",
            str(out_path),
        ]
        worker_cmd = [*common, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
        env = None if environ is None else dict(environ)
        processes: list[subprocess.Popen[bytes]] = []
        logs = []
        try:
            for i, cmd in enumerate([master_cmd] + [worker_cmd] * workers):
                log_path = work / ("master.log" if i == 0 else f"worker-{i - 1}.log")
                logs.append(log_path)
                with log_path.open("wb") as log_file:
                    processes.append(
                        subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=work)
                    )
            deadline = time.monotonic() + timeout_s + 30.0
            master = processes[0]
            try:
                master.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise UpstreamError(f"Locust did not finish within {timeout_s:g} s", field="locust-timeout") from None
            for worker in processes[1:]:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(timeout=_WORKER_EXIT_S)
            if not out_path.exists():
                raise UpstreamError(f"the Locust master wrote no results: {_last_line(logs[0])}", field="locust")
            document = json.loads(out_path.read_text(encoding="utf-8"))
            return JobResult.decode(document["result"])
        finally:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=5.0)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
