"""`shadowtap replay` end to end: a real tape, a real server, the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web

from shadowtap.recorder import PRIMARY, REPLAY, Exchange, Response, SyncTapeWriter, TapeOptions, TapeReader
from tests.replayer.tapes import make_exchange


def write_tape(directory: Path, exchanges: list[Exchange]) -> Path:
    with SyncTapeWriter(directory, TapeOptions(redaction=None, compression="none")) as writer:
        for ex in exchanges:
            writer.write(ex)
    return directory


async def shadowtap(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shadowtap",
        "replay",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Target:
    """An in-test server that records what it was sent."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.delay_s = delay_s
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path_qs, dict(request.headers)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(text=f"replayed {request.path_qs}")

    async def __aenter__(self) -> Target:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def read_results(path: Path) -> list[Exchange]:
    return list(TapeReader(path))


async def test_replay_rewrites_skips_writes_and_records_results(tmp_path: Path) -> None:
    tape = write_tape(
        tmp_path / "tape",
        [make_exchange(i, i * 4, target=f"/v1/items/{i}") for i in range(30)]
        + [make_exchange(100, 200, method="POST", target="/v1/items")],
    )
    async with Target() as target:
        code, out, err = await shadowtap(
            str(tape),
            "--target",
            target.url,
            "--speed",
            "4",
            "--rewrite-path",
            "^/v1/",
            "/v2/",
            "--header",
            "Authorization: Bearer ${REPLAY_TOKEN}",
            "--results",
            str(tmp_path / "results"),
            "--json",
            str(tmp_path / "out.json"),
            "--html",
            str(tmp_path / "out.html"),
            "--no-progress",
            env={"REPLAY_TOKEN": "t0k3n"},
        )
    assert code == 0, err
    assert "requests 30" in out and "skipped  1 with unsafe methods (--allow-writes replays them)" in out
    assert sorted(path for _, path, _ in target.seen) == sorted(f"/v2/items/{i}" for i in range(30))
    assert {method for method, _, _ in target.seen} == {"GET"}
    assert all(headers["Authorization"] == "Bearer t0k3n" for _, _, headers in target.seen)
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["summary"]["requests"] == 30 and document["plan"]["skipped_unsafe_method"] == 1
    assert document["results_tape"] == {"written": 30, "dropped": 0} and document["slo"]["passed"]
    assert set(document["latency_ms"]) == {"service", "corrected", "start_lag"}
    results = read_results(tmp_path / "results")
    assert len(results) == 30
    first = next(e for e in results if e.id == "ex3")
    assert first.primary == Response(200, "OK", ((b"Content-Type", b"text/plain"),), b"recorded 3")
    replayed = first.response(REPLAY)
    assert replayed is not None and replayed.body == b"replayed /v2/items/3"
    assert first.tags["replay_target"] == "/v2/items/3" and REPLAY in first.timings
    assert first.outcome(PRIMARY) is not None
    page = (tmp_path / "out.html").read_text()
    assert page.count("<svg") == 4 and "No errors." in page  # rate, latency, statuses over time; percentiles
    assert "Not replayed: 1 with unsafe methods" in page and 'SLO <b class="pass">passed</b> (error rate' in page
    assert "<script" not in page and "src=" not in page


async def test_slo_gate_fails_the_exit_code(tmp_path: Path) -> None:
    tape = write_tape(tmp_path / "tape", [make_exchange(i, i) for i in range(5)])
    async with Target(delay_s=0.05) as target:
        code, _, err = await shadowtap(str(tape), "--target", target.url, "--max-p99-ms", "10", "--no-progress")
    assert code == 1
    assert "SLO failed: p99 response time" in err and "Traceback" not in err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_refusing_target_is_reported_and_results_still_written(tmp_path: Path) -> None:
    tape = write_tape(tmp_path / "tape", [make_exchange(i, i) for i in range(8)])
    code, _, err = await shadowtap(
        str(tape),
        "--target",
        f"http://127.0.0.1:{closed_port()}",
        "--results",
        str(tmp_path / "results"),
        "--json",
        str(tmp_path / "out.json"),
        "--max-error-rate",
        "0.5",
        "--no-progress",
    )
    assert code == 1
    assert "error rate 100.00%" in err
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["summary"]["errors"] == {"connect": 8}
    results = read_results(tmp_path / "results")
    assert len(results) == 8 and all(e.response(REPLAY) is None and e.outcome(REPLAY) for e in results)


async def test_a_target_that_is_down_fails_by_default_and_the_summary_leads_with_it(tmp_path: Path) -> None:
    # Every request failed, yet the replay exited 0 and printed latency percentiles of the failures.
    tape = write_tape(tmp_path / "tape", [make_exchange(i, i) for i in range(8)])
    target = f"http://127.0.0.1:{closed_port()}"
    code, out, err = await shadowtap(
        str(tape), "--target", target, "--json", str(tmp_path / "out.json"), "--no-progress"
    )
    assert code == 1, err
    assert "SLO failed: error rate 100.00% is above 1.00%" in err and "Traceback" not in err
    lines = out.splitlines()
    assert lines[0] == "ERRORS   8 of 8 requests failed (100.00%): connect 8"
    assert lines[1].startswith("  connect  GET /r/") and "connect-error" in lines[1]
    assert "latency: not shown, no request succeeded" in out and "p99.9" not in out
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["errors"]["failed"] == 8 and document["errors"]["by_kind"] == {"connect": 8}
    assert len(document["errors"]["examples"]) == 3 and document["slo"]["gates"]["max_error_rate"] == 0.01

    # --max-error-rate 1 turns the gate off; the errors still lead the summary.
    code, out, err = await shadowtap(str(tape), "--target", target, "--max-error-rate", "1", "--no-progress")
    assert code == 0, err
    assert out.startswith("ERRORS   8 of 8 requests failed")


async def test_a_tape_corrupt_midway_is_one_line_and_partial_results_are_written(tmp_path: Path) -> None:
    tape = write_tape(tmp_path / "tape", [make_exchange(i, i * 0.1, body=b"x" * 200) for i in range(400)])
    (segment,) = tape.glob("*.stape")
    data = bytearray(segment.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff" * 64
    segment.write_bytes(bytes(data))
    async with Target() as target:
        code, _, err = await shadowtap(
            str(tape),
            "--target",
            target.url,
            "--results",
            str(tmp_path / "results"),
            "--json",
            str(tmp_path / "out.json"),
            "--no-progress",
        )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert segment.name in lines[0] and "at byte" in lines[0]
    written = read_results(tmp_path / "results")
    assert 100 < len(written) < 400 and len(written) == len(target.seen)
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["summary"]["requests"] == len(written) and document["error"]

    # With --salvage the damaged range is skipped and reported, and the rest is replayed.
    async with Target() as target:
        code, _, err = await shadowtap(
            str(tape), "--target", target.url, "--salvage", "--json", str(tmp_path / "salvaged.json"), "--no-progress"
        )
    assert code == 0, err
    salvaged = json.loads((tmp_path / "salvaged.json").read_text())
    assert salvaged["plan"]["skipped_ranges"] >= 1 and salvaged["error"] is None
    assert len(written) < salvaged["summary"]["requests"] < 400 and len(target.seen) == salvaged["summary"]["requests"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--rewrite-path", "([", "x"], "rewrite-path"),
        (["--header", "Authorization: ${SHADOWTAP_TEST_UNSET_VAR}"], "SHADOWTAP_TEST_UNSET_VAR"),
        (["--clones", "0"], "clones"),
        # The target goes through the proxy's URL check: nothing it refuses reaches a client.
        (["--target", "http://[::1"], "field '--target': not a valid URL"),
        (["--target", "http://127.0.0.1:99999"], "field '--target': not a valid URL"),
        (["--target", "http://stag ing:8080"], "field '--target': URL must not contain spaces"),
        (["--target", "http://127.0.0.1:9/a b"], "field '--target': URL must not contain spaces"),
        (["--target", "http://127.0.0.1:9/?x=1"], "field '--target': URL must not have a query"),
        (["--target", "http://user:pw@127.0.0.1:9"], "field '--target': URL must not carry credentials"),
        (["--target", "ftp://127.0.0.1:9"], "field '--target': URL must start with http"),
        # Rewrites go into the request head as they are: nothing may split a line or fail to encode.
        (["--host", "staging\r\nX-Injected: 1"], "field '--host': must not contain control characters"),
        (["--host", "stag ing"], "field '--host': not a valid host name"),
        (["--host", "staging:0"], "field '--host': port must be within 1..65535"),
        (["--host", "staging/v2"], "field '--host'"),
        (["--host", "::1"], "field '--host'"),
        (["--header", "X-A: 1\r\nX-Injected: 1"], "field '--header': must not contain control characters"),
        (["--header", "X-A: \u65e5\u672c"], "field '--header': must not contain control characters or char"),
        (["--header", "X A: 1"], "field '--header': not a valid header name"),
        (["--remove-header", "\u65e5\u672c"], "field '--remove-header': not a valid header name"),
        (["--rewrite-path", "^/r", "/a b"], "field '--rewrite-path'"),
        (["--rewrite-path", "^/r", "/\u65e5"], "field '--rewrite-path'"),
        (["--clone-id", "header:X-User", "--clone-id-template", "{value}\r\nX-Injected: 1"], "--clone-id-template"),
        (["--clone-id", "header:X-User", "--clone-id-template", "{value}-\u65e5"], "--clone-id-template"),
        (["--duration", "inf"], "argument --duration: not a finite number: 'inf'"),
        (["--rate", "1e-310"], "argument --rate: "),
    ],
)
async def test_bad_flags_are_one_line(tmp_path: Path, flags: list[str], expected: str) -> None:
    tape = write_tape(tmp_path / "tape", [make_exchange(0, 0)])
    code, _, err = await shadowtap(str(tape), "--target", "http://127.0.0.1:9", *flags, "--no-progress")
    assert code == 2
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "host"),
    [
        (["--host", "staging.internal:8443"], "staging.internal:8443"),
        (["--host", "[::1]:8080"], "[::1]:8080"),
        (["--host", "b\u00fccher.example"], "xn--bcher-kva.example"),
        (["--host", "${STAGING_HOST}"], "${STAGING_HOST}"),
    ],
)
def test_good_rewrites_are_kept_and_a_unicode_host_goes_out_as_idna(flags: list[str], host: str) -> None:
    from shadowtap.cli import build_parser
    from shadowtap.commands.replay import build_job

    args = build_parser().parse_args(
        ["replay", "TAPE", "--target", "http://[::1]:9000/prefix", *flags, "--header", "X-A: a\tb ${T}",
         "--remove-header", "Cookie", "--rewrite-path", "^/v1/(.*)", "/v2/\\1?x=%20"]
    )  # fmt: skip
    rewrites = build_job(args).plan.rewrites
    assert rewrites.host == host
    assert rewrites.set_headers == (("X-A", "a\tb ${T}"),) and rewrites.remove_headers == ("Cookie",)


_SECONDS_FLAGS = ["--clone-offset", "--duration", "--ramp", "--from-offset", "--to-offset", "--timeout",
                  "--connect-timeout", "--locust-timeout", "--since", "--until"]  # fmt: skip
_NUMBER_FLAGS = ["--speed", "--rate", "--sample-percent", "--max-error-rate", "--max-p99-ms", "--max-start-lag-ms"]


@pytest.mark.parametrize(
    ("flag", "value", "reason"),
    [(flag, value, "not a finite number") for flag in _SECONDS_FLAGS + _NUMBER_FLAGS for value in ("inf", "nan")]
    # Seconds become 64-bit nanoseconds in the plan and on the clock.
    + [(flag, value, "out of range") for flag in _SECONDS_FLAGS for value in ("1e308", "-1e12")]
    # Slower than this, the gap between two requests outgrows the clock.
    + [(flag, "1e-310", "too slow") for flag in ("--speed", "--rate")],
)
def test_numbers_are_finite_and_fit_the_clock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, reason: str
) -> None:
    from shadowtap.cli import main

    # Refused while the flags are parsed: before any tape is opened (this one does not exist).
    with pytest.raises(SystemExit) as exited:
        main(["replay", str(tmp_path / "no-tape"), "--target", "http://127.0.0.1:9", f"{flag}={value}"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert f"argument {flag}: {reason}" in err and repr(value) in err and err.count("\n") == 1


@pytest.mark.parametrize("data", [b"this is not a tape at all" * 10, b""])
async def test_unreadable_tape_is_one_line(tmp_path: Path, data: bytes) -> None:
    # An empty file replayed nothing and exited 0, as if it were an empty tape.
    garbage = tmp_path / "garbage.stape"
    garbage.write_bytes(data)
    code, _, err = await shadowtap(str(garbage), "--target", "http://127.0.0.1:9", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "garbage.stape" in err and "Traceback" not in err
    assert "not a shadowtap tape" in err


async def test_workers_shard_sessions_with_nothing_lost_or_duplicated(tmp_path: Path) -> None:
    tape = write_tape(tmp_path / "tape", [make_exchange(i, i * 2, session=f"s{i % 9}") for i in range(120)])
    async with Target() as target:
        code, out, err = await shadowtap(
            str(tape),
            "--target",
            target.url,
            "--workers",
            "2",
            "--clones",
            "2",
            "--clone-offset",
            "0.01",
            "--clone-id",
            "header:X-Seq",
            "--results",
            str(tmp_path / "results"),
            "--json",
            str(tmp_path / "out.json"),
            "--no-progress",
        )
    assert code == 0, err
    sent = Counter(headers["X-Seq"] for _, _, headers in target.seen)
    assert len(sent) == 240 and set(sent.values()) == {1}
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["summary"]["requests"] == 240 and document["workers"] == 2
    results = read_results(tmp_path / "results")
    assert len({e.id for e in results}) == 240
    assert len({e.tags.get("replay_clone") for e in results}) == 2


async def test_locust_mode_runs_master_and_workers_and_reports(tmp_path: Path) -> None:
    tape = write_tape(tmp_path / "tape", [make_exchange(i, i * 2, session=f"s{i % 5}") for i in range(60)])
    async with Target() as target:
        code, out, err = await shadowtap(
            str(tape),
            "--target",
            target.url,
            "--locust",
            "--locust-workers",
            "2",
            "--locust-timeout",
            "60",
            "--json",
            str(tmp_path / "out.json"),
            "--results",
            str(tmp_path / "results"),
        )
    assert code == 0, err
    assert len(target.seen) == 60
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["summary"]["requests"] == 60 and document["workers"] == 2 and document["planned"] == 60
    assert document["results_tape"] == {"written": 60, "dropped": 0}
    results = read_results(tmp_path / "results")
    assert sorted(e.id for e in results) == sorted(f"ex{i}" for i in range(60))
    replayed = results[0].response(REPLAY)
    assert replayed is not None and replayed.body.startswith(b"replayed /r/") and results[0].primary is not None


async def test_locust_job_out_writes_the_job_for_other_machines(tmp_path: Path) -> None:
    from shadowtap.replayer.locust_plan import LocustJob

    tape = write_tape(tmp_path / "tape", [make_exchange(0, 0)])
    code, _, err = await shadowtap(
        str(tape), "--target", "http://10.0.0.9:8080", "--rate", "500", "--locust-job-out", str(tmp_path / "job.json")
    )
    assert code == 0, err
    job = LocustJob.from_json((tmp_path / "job.json").read_text())
    assert job.target == "http://10.0.0.9:8080" and job.plan.scaling.rate_per_s == 500.0
    assert job.tapes == (str(tape.resolve()),)


async def test_the_results_tape_is_what_shadowtap_diff_reads(tmp_path: Path) -> None:
    tape = write_tape(tmp_path / "tape", [make_exchange(i, i, target=f"/items/{i}") for i in range(12)])
    async with Target() as target:
        code, _, err = await shadowtap(
            str(tape), "--target", target.url, "--results", str(tmp_path / "results"), "--no-progress"
        )
    assert code == 0, err
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shadowtap",
        "diff",
        str(tmp_path / "results"),
        "--candidate",
        "replay",
        "--json",
        str(tmp_path / "diff.json"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, diff_err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode in (0, 1), diff_err.decode()
    report = json.loads((tmp_path / "diff.json").read_text())
    # Every replayed exchange pairs the recorded response ("recorded i") with the replayed one.
    assert report["baseline_name"] == "primary" and report["candidate_name"] == "replay"
    assert report["pairs"] == 12 and report["compared"] == 12 and report["differing"] == 12


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_ctrl_c_stops_scheduling_and_still_writes_outputs(tmp_path: Path, workers: str) -> None:
    tape = write_tape(tmp_path / "tape", [make_exchange(i, i * 20) for i in range(500)])  # 10 s of schedule
    async with Target() as target:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shadowtap",
            "replay",
            str(tape),
            "--target",
            target.url,
            "--workers",
            workers,
            "--json",
            str(tmp_path / "out.json"),
            "--results",
            str(tmp_path / "results"),
            "--no-progress",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, like a terminal's foreground job
        )
        for _ in range(300):  # wait until requests flow, at most 30 s
            if len(target.seen) >= 5:
                break
            await asyncio.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["stopped"] and 5 <= document["summary"]["requests"] < 500
    assert document["summary"]["requests"] == len(target.seen)
    assert len(read_results(tmp_path / "results")) == len(target.seen)


async def test_json_to_stdout_moves_the_summary_to_stderr(tmp_path: Path) -> None:
    tape = write_tape(tmp_path / "tape", [make_exchange(i, i) for i in range(3)])
    async with Target() as target:
        code, out, err = await shadowtap(str(tape), "--target", target.url, "--json", "-", "--no-progress")
    assert code == 0, err
    assert json.loads(out)["summary"]["requests"] == 3
    assert "requests 3" in err


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_record_of_the_wrong_shape_is_one_line_naming_the_field(tmp_path: Path, workers: str) -> None:
    from tests.recorder.test_reader import mutated_record, plain_record, write_records

    # A header value stored as str went through to the client, which logged a traceback and exited 0.
    records = [plain_record(i) for i in range(6)]
    records[3] = mutated_record("request.headers[1][1]", 3)
    segment = write_records(tmp_path / "tape", records)
    args = ["--workers", workers, "--speed", "0", "--json", str(tmp_path / "out.json"), "--no-progress"]
    async with Target() as target:
        code, _, err = await shadowtap(str(tmp_path / "tape"), "--target", target.url, *args)
        assert code == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"{segment} at byte " in err and "field 'request.headers[1][1]'" in err
        assert json.loads((tmp_path / "out.json").read_text())["error"]

        code, _, err = await shadowtap(str(tmp_path / "tape"), "--target", target.url, "--salvage", *args)
        assert code == 0, err
        assert "skipped range" in err and "Traceback" not in err
        document = json.loads((tmp_path / "out.json").read_text())
        assert document["plan"]["skipped_ranges"] == 1 and document["summary"]["requests"] == 5


#: Put on the PYTHONPATH of a replay (and so of its --workers and Locust processes, which start
#: fresh interpreters): a bug in the replayer's client or its results path, on the requests it
#: names. It patches the modules as they are imported, so a Locust process imports nothing early.
#: It patches only what runs interpreted (the job's wiring, the Locust edge): the runner, the
#: transport and the results record may run compiled, where a patched class or module attribute is
#: never called.
_FAULT_INJECTOR = """
import importlib.abc
import importlib.util
import os
import sys

FAULT = os.environ.get("SHADOWTAP_TEST_FAULT")


class BrokenTransport:
    def __init__(self, inner):
        self.inner = inner

    async def __aenter__(self):
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info):
        await self.inner.__aexit__(*exc_info)

    async def send(self, method, target, headers, body, recorded=None):
        if target.endswith("/2"):
            raise TypeError("injected transport bug")
        return await self.inner.send(method, target, headers, body, recorded)


def patch(module):
    if FAULT == "transport" and module.__name__ == "shadowtap.replayer.job":
        make_transport = module.make_transport
        module.make_transport = lambda *args: BrokenTransport(make_transport(*args))
    if FAULT == "results" and module.__name__ == "shadowtap.replayer.job":

        class BrokenWriter(module.TapeWriter):
            def submit(self, exchange):
                if exchange.tags.get("replay_target", "").endswith("/2"):
                    raise KeyError("injected results bug")
                return super().submit(exchange)

        module.TapeWriter = BrokenWriter
    if FAULT == "results" and module.__name__ == "shadowtap.replayer.result":
        record = module.replay_exchange

        def broken_record(request, *args):
            if request.target.endswith("/2"):
                raise KeyError("injected results bug")
            return record(request, *args)

        module.replay_exchange = broken_record  # the Locust edge's (its runner is never compiled)


class PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in ("shadowtap.replayer.job", "shadowtap.replayer.result"):
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


if FAULT:
    sys.meta_path.insert(0, PatchOnImport())
"""


@pytest.mark.parametrize(
    ("fault", "mode"),
    [
        ("transport", ["--workers", "1"]),
        ("transport", ["--workers", "2"]),
        ("results", ["--workers", "1"]),
        ("results", ["--workers", "2"]),
        ("results", ["--locust", "--locust-workers", "2", "--locust-timeout", "60"]),
    ],
)
async def test_an_error_inside_the_replayer_never_exits_0(tmp_path: Path, fault: str, mode: list[str]) -> None:
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(_FAULT_INJECTOR)
    python_path = os.pathsep.join(p for p in (str(tmp_path / "inject"), os.environ.get("PYTHONPATH")) if p)
    tape = write_tape(tmp_path / "tape", [make_exchange(i, i, session=f"s{i % 3}") for i in range(9)])
    async with Target() as target:
        code, out, err = await shadowtap(
            str(tape),
            "--target",
            target.url,
            *mode,
            "--results",
            str(tmp_path / "results"),
            "--json",
            str(tmp_path / "out.json"),
            "--no-progress",
            env={"SHADOWTAP_TEST_FAULT": fault, "PYTHONPATH": python_path},
        )
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert f"injected {fault} bug" in err and "GET /r/2" in err
    # The outputs are written before the error, as for a tape that breaks mid-way.
    document = json.loads((tmp_path / "out.json").read_text())
    assert f"injected {fault} bug" in document["error"]
    assert document["summary"]["requests"] >= 1 and "requests" in out


async def test_reports_and_results_are_private(tmp_path: Path) -> None:
    import stat

    tape = write_tape(tmp_path / "tape", [make_exchange(i, i, target=f"/p/{i}") for i in range(3)])
    (tmp_path / "out.json").write_text("old")
    (tmp_path / "out.json").chmod(0o644)
    (tmp_path / "results").mkdir()
    (tmp_path / "results").chmod(0o755)
    previous = os.umask(0o022)  # the child inherits it
    try:
        async with Target() as target:
            code, _out, err = await shadowtap(
                str(tape), "--target", target.url, "--rate", "100", "--no-progress",
                "--results", str(tmp_path / "results"), "--json", str(tmp_path / "out.json"),
                "--html", str(tmp_path / "out.html"), "--locust-job-out", str(tmp_path / "job.json"),
            )  # fmt: skip
            assert code == 0, err
            code, _out, err = await shadowtap(
                str(tape), "--target", target.url, "--rate", "100", "--no-progress",
                "--results", str(tmp_path / "results"), "--json", str(tmp_path / "out.json"),
                "--html", str(tmp_path / "out.html"),
            )  # fmt: skip
    finally:
        os.umask(previous)
    assert code == 0, err
    assert "results" in err and "open to other users (mode 755)" in err
    outputs = [tmp_path / "out.json", tmp_path / "out.html", tmp_path / "job.json", *(tmp_path / "results").iterdir()]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in outputs} == {p.name: 0o600 for p in outputs}


def run_into_closed_pipe(*args: str) -> tuple[int, str]:
    """`shadowtap replay ARGS | head -0`: stdout a pipe nobody reads, closed before the first byte."""
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowtap", "replay", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode()


async def test_a_closed_stdout_still_writes_the_html_and_enforces_the_slo(tmp_path: Path) -> None:
    # `replay --html x ... | head -1` exited 0 without writing the HTML or enforcing the SLO.
    tape = write_tape(tmp_path / "tape", [make_exchange(i, i) for i in range(5)])
    async with Target(delay_s=0.05) as target:
        code, err = await asyncio.to_thread(
            run_into_closed_pipe, str(tape), "--target", target.url, "--max-p99-ms", "10",
            "--html", str(tmp_path / "out.html"), "--json", str(tmp_path / "out.json"), "--no-progress",
        )  # fmt: skip
    assert code == 1, err
    assert "SLO failed: p99 response time" in err and "Traceback" not in err and "Exception ignored" not in err
    assert (tmp_path / "out.html").read_text().lstrip().startswith("<!doctype html")
    assert json.loads((tmp_path / "out.json").read_text())["slo"]["passed"] is False


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("flag", ["--header", "--host"])
async def test_a_bad_value_from_the_environment_is_one_line_naming_the_variable(
    tmp_path: Path, workers: str, flag: str
) -> None:
    tape = write_tape(tmp_path / "tape", [make_exchange(i, i) for i in range(3)])
    value = "X-Auth: ${STAGING_TOKEN}" if flag == "--header" else "${STAGING_TOKEN}"
    async with Target() as target:
        code, _, err = await shadowtap(
            str(tape), "--target", target.url, flag, value, "--workers", workers, "--no-progress",
            env={"STAGING_TOKEN": "s3cr3t\r\nX-Injected: 1"},
        )  # fmt: skip
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "environment variable STAGING_TOKEN holds a control character" in err and "s3cr3t" not in err
    assert target.seen == []


def test_the_help_states_the_error_rate_gate_the_replay_applies(capsys: pytest.CaptureFixture[str]) -> None:
    from shadowtap.cli import main
    from shadowtap.replayer.report import DEFAULT_MAX_ERROR_RATE

    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    assert f"(default {DEFAULT_MAX_ERROR_RATE:g}; 1 = off)" in " ".join(capsys.readouterr().out.split())


def two_recordings_an_hour_apart(directory: Path) -> Path:
    return write_tape(
        directory, [make_exchange(i, i * 20 + (3_600_000 if i >= 5 else 0), session=f"s{i % 2}") for i in range(10)]
    )


async def test_a_long_idle_gap_is_announced_before_the_replay_starts(tmp_path: Path) -> None:
    # At --speed 5 this tape idles for 12 minutes between its two halves, and nothing said so.
    tape = two_recordings_an_hour_apart(tmp_path / "tape")
    async with Target() as target:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowtap", "replay", str(tape), "--target", target.url, "--speed", "5",
            "--json", str(tmp_path / "out.json"), "--no-progress",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        assert proc.stderr is not None
        first = (await asyncio.wait_for(proc.stderr.readline(), timeout=30)).decode()
        for _ in range(300):  # the first half goes out, then the replay idles
            if len(target.seen) >= 5:
                break
            await asyncio.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        rest = (await asyncio.wait_for(proc.stderr.read(), timeout=60)).decode()
        await proc.wait()
    assert first == (
        "shadowtap replay: warning: plan: 10 requests over 12m 00s at --speed 5; longest with nothing to send: "
        "12m 00s, from 0.0 s in (a gap in the recording: --max-gap S cuts such gaps to S seconds)\n"
    )
    assert proc.returncode == 130, rest
    assert len(target.seen) == 5


async def test_max_gap_cuts_the_idle_stretch_and_keeps_every_request(tmp_path: Path) -> None:
    tape = two_recordings_an_hour_apart(tmp_path / "tape")
    async with Target() as target:
        code, out, err = await shadowtap(
            str(tape), "--target", target.url, "--speed", "5", "--max-gap", "0.3",
            "--json", str(tmp_path / "out.json"),
        )  # fmt: skip
    assert code == 0, err
    assert sorted(path for _, path, _ in target.seen) == sorted(f"/r/{i}" for i in range(10))
    # Progress on: the plan is said before it starts, with the cap.
    assert err.startswith("shadowtap replay: plan: 10 requests over 0.3 s at --speed 5; ") and "--max-gap" in err
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["summary"]["requests"] == 10 and document["summary"]["elapsed_s"] < 5


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--max-gap", "0"], "field 'max-gap': must be > 0"),
        (["--max-gap", "1", "--rate", "10"], "field 'max-gap': a replay at a fixed --rate has no recorded gaps"),
        (["--max-gap", "1", "--speed", "0"], "field 'max-gap': a replay at --speed 0 has no recorded gaps"),
        (["--max-gap", "inf"], "argument --max-gap: not a finite number"),
    ],
)
async def test_max_gap_is_refused_where_it_means_nothing(tmp_path: Path, flags: list[str], expected: str) -> None:
    tape = write_tape(tmp_path / "tape", [make_exchange(0, 0)])
    code, _, err = await shadowtap(str(tape), "--target", "http://127.0.0.1:9", *flags, "--no-progress")
    assert code == 2
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err
