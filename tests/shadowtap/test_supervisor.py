"""shadowtap.supervisor: real spawned workers, one start time, failures named, signals passed on."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from shadowtap.recorder.errors import ConfigError, ShadowtapError
from shadowtap.supervisor import Supervisor, WorkerLink

# -- worker targets (module level: spawned workers import them by name) ---------------------------------


def _clock_worker(link: WorkerLink, tag: str) -> None:
    link.ready(f"{tag}{link.index}")
    t0 = link.start_time_ns(30.0)
    early_ns = t0 - time.monotonic_ns()  # CLOCK_MONOTONIC is system-wide: the parent's clock too
    time.sleep(max(0, early_ns) / 1e9)
    for step in range(3):
        link.progress((step, os.getpid()))
    link.result({"index": link.index, "t0": t0, "early_ns": early_ns, "pid": os.getpid()})


def _failing_worker(link: WorkerLink, bad: int) -> None:
    if link.index == bad:
        raise ConfigError("no such shadow", field="shadows[1]")
    link.ready()
    time.sleep(60)  # stopped by the parent when the other worker's failure ends the start-up


def _silent_worker(link: WorkerLink) -> None:
    if link.index == 1:
        os._exit(3)  # no message, no traceback: a worker killed from outside looks like this
    link.ready()
    time.sleep(60)


def _crashing_worker(link: WorkerLink) -> None:
    link.ready()
    link.start_time_ns(30.0)
    empty: dict[str, int] = {}
    empty["missing"]  # noqa: B018  (a bug in a worker, not a ShadowtapError)


def _slow_worker(link: WorkerLink) -> None:
    time.sleep(60)


def _serving_worker(link: WorkerLink, pids: str) -> None:
    stopped = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, on_term)
    with open(pids, "a") as out:
        out.write(f"{os.getpid()}\n")
    link.ready()
    deadline = time.monotonic() + 60
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.02)
    raise SystemExit(0 if stopped else 9)


def _one_quits_worker(link: WorkerLink, pids: str) -> None:
    if link.index == 0:
        link.ready()
        time.sleep(0.3)
        raise SystemExit(0)  # ends on its own, unasked
    _serving_worker(link, pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive: the supervisor has not reaped it only if it still runs.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


# -- tests --------------------------------------------------------------------------------------------


def test_every_worker_is_ready_then_starts_at_the_one_time_the_parent_chose() -> None:
    seen: list[tuple[int, tuple[int, int]]] = []
    supervisor = Supervisor("t", 3, _clock_worker, lambda i: ("w",), progress_size=64)
    with supervisor:
        assert supervisor.wait_ready() == ["w0", "w1", "w2"]
        t0 = supervisor.go(50_000_000)
        results = dict(supervisor.results(lambda index, snapshot: seen.append((index, snapshot))))
    assert sorted(results) == [0, 1, 2]
    assert {r["t0"] for r in results.values()} == {t0}
    # The time was chosen after every worker was ready, 50 ms ahead: each got it before it was due.
    assert all(r["early_ns"] > 0 for r in results.values())
    assert len({r["pid"] for r in results.values()}) == 3 and os.getpid() not in {r["pid"] for r in results.values()}
    # Progress came from the workers themselves (drops are allowed, but not here: 9 in a 64 queue).
    assert {index for index, _ in seen} <= {0, 1, 2}
    assert all(snapshot[1] == results[index]["pid"] for index, snapshot in seen)


def test_a_shadowtap_error_in_a_worker_reaches_the_parent_as_itself_and_stops_the_rest() -> None:
    supervisor = Supervisor("t", 2, _failing_worker, lambda i: (1,), grace_s=5.0)
    with pytest.raises(ConfigError) as caught, supervisor:
        supervisor.wait_ready()
    assert str(caught.value) == "field 'shadows[1]': no such shadow"
    assert not any(_alive(pid) for pid in supervisor.pids if pid is not None)


def test_a_worker_that_dies_silently_is_named() -> None:
    supervisor = Supervisor("shadowtap-test", 2, _silent_worker, lambda i: ())
    with pytest.raises(ShadowtapError, match=r"^shadowtap-test worker 1 exited before it started$"), supervisor:
        supervisor.wait_ready()
    assert not any(_alive(pid) for pid in supervisor.pids if pid is not None)


def test_a_crash_is_reported_with_its_cause_not_lost() -> None:
    supervisor = Supervisor("t", 1, _crashing_worker, lambda i: ())
    with pytest.raises(ShadowtapError, match=r"^worker 0 crashed: KeyError: 'missing'$"), supervisor:
        supervisor.wait_ready()
        supervisor.go()
        list(supervisor.results())


def test_a_worker_slower_than_the_deadline_is_an_error_and_is_stopped() -> None:
    supervisor = Supervisor("t", 1, _slow_worker, lambda i: (), ready_timeout_s=1.0, grace_s=5.0)
    started = time.monotonic()
    with pytest.raises(ShadowtapError, match=r"^t worker 0 did not start within 1 s$"), supervisor:
        supervisor.wait_ready()
    assert time.monotonic() - started < 30
    assert not any(_alive(pid) for pid in supervisor.pids if pid is not None)


def test_a_signal_to_the_parent_is_passed_on_and_workers_drain(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    supervisor = Supervisor("t", 2, _serving_worker, lambda i: (str(pids),), forward={signal.SIGINT: signal.SIGTERM})
    previous = signal.getsignal(signal.SIGINT)
    with supervisor:
        supervisor.wait_ready()
        assert signal.getsignal(signal.SIGINT) != previous  # the supervisor's handler
        os.kill(os.getpid(), signal.SIGINT)  # what a terminal's Ctrl-C does to the parent
        assert supervisor.wait_exit() == 0  # every worker saw SIGTERM and ended cleanly
    assert signal.getsignal(signal.SIGINT) == previous
    assert len(pids.read_text().split()) == 2


def test_a_worker_that_ends_on_its_own_stops_the_others(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    supervisor = Supervisor("t", 3, _one_quits_worker, lambda i: (str(pids),))
    with supervisor:
        supervisor.wait_ready()
        # The others exit 0 (they drained on SIGTERM); the run still fails: capacity was lost.
        assert supervisor.wait_exit() == 1
        assert supervisor.stopping
    served = [int(p) for p in pids.read_text().split()]
    assert len(served) == 2 and not any(_alive(pid) for pid in served)
