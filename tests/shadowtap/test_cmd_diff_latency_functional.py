"""`shadowtap diff` on latency as a user runs it: timed tapes, every report format, latency gates,
workers, the store rebuilt by `shadowtap report`, and a real replay's results tape."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shadowtap.recorder import Exchange, SyncTapeWriter, TapeOptions
from shadowtap.recorder.model import Request, Response, Timing
from tests.differ.test_pipeline_latency import T0_NS, traffic
from tests.shadowtap.test_cmd_proxy_functional import processes, start, stop  # noqa: F401 (a fixture)


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowtap", *map(str, args)], capture_output=True, text=True, timeout=200, check=False
    )


def write_tape(directory: Path, exchanges: list[Exchange], segment_bytes: int = 64 * 2**20) -> Path:
    options = TapeOptions(fsync="none", compression="none", max_segment_bytes=segment_bytes)
    with SyncTapeWriter(directory, options) as writer:
        writer.write_many(exchanges)
    return directory


def without_timings(text: str) -> str:
    """A report with its generation time blanked: the only thing allowed to differ between runs."""
    text = re.sub(r'"generated_at_ns": \d+', '"generated_at_ns": 0', text)
    text = re.sub(r'timestamp="[\d:T-]+"', 'timestamp="-"', text)
    return re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", "generated -", text)


@pytest.fixture(scope="module")
def slower_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The candidate 30 % slower at GET /slow, the same at GET /same, 20 pairs at GET /rare."""
    root = tmp_path_factory.mktemp("latency")
    tape = write_tape(root / "tape", traffic([("/slow", 600, 1.3), ("/same", 600, 1.0), ("/rare", 20, 1.3)]))
    result = run_cli(
        "diff", tape, "--fail-on", "high,latency.p50>+20%", "--db", root / "r.sqlite", "--json", root / "r.json",
        "--html", root / "r.html", "--markdown", root / "r.md", "--junit", root / "r.xml", "--no-color",
    )  # fmt: skip
    return root, result


def test_a_30_percent_slower_endpoint_fails_a_p50_term_in_every_report(
    slower_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, result = slower_run
    assert result.returncode == 1, result.stdout + result.stderr
    assert "verdict: exit 1: 1 latency term(s) fail, first: latency.p50>+20% at GET /slow: p50 " in result.stdout

    report = json.loads((root / "r.json").read_text())
    latency = report["latency"]
    assert (latency["pairs"], latency["untimed"], latency["min_pairs"]) == (1220, 0, 50)
    slow = latency["comparisons"][0]
    assert (slow["endpoint"], slow["shadow"], slow["verdict"], slow["pairs"]) == ("GET /slow", "v2", "slower", 600)
    p50 = slow["quantiles"][0]
    assert p50["quantile"] == "p50" and 1.25 < p50["ratio"] < 1.35 and p50["ratio_ci95"][0] > 1
    assert slow["wilcoxon"]["p_value"] < 1e-6
    rare = next(c for c in latency["comparisons"] if c["endpoint"] == "GET /rare")
    assert rare["verdict"] == "too few samples" and rare["quantiles"] == [] and rare["wilcoxon"] is None
    assert [(f["term"], f["endpoint"]) for f in latency["failures"]] == [("latency.p50>+20%", "GET /slow")]
    assert report["verdict"]["failing_latency"] == ["latency.p50>+20% at GET /slow"]
    assert report["verdict"]["failing_signatures"] == []

    terminal = result.stdout
    section = terminal[terminal.index("Latency  1220 timed pairs") :]
    assert "1 endpoint(s) with fewer than 50 pairs: too few samples, no statement" in section
    rows = [line for line in section.splitlines() if "GET /" in line]
    assert rows[0].split()[:4] == ["SLOWER!", "GET", "/slow", "600"]  # slower first, failing the gate
    assert "GET /slow: the candidate is slower: median per request" in section
    assert "! latency.p50>+20% fails at GET /slow: p50 " in section

    page = (root / "r.html").read_text()
    latency_html = page[page.index('<section id="latency">') :]
    latency_html = latency_html[: latency_html.index("</section>")]
    assert latency_html.index('data-endpoint="GET /slow"') < latency_html.index('data-endpoint="GET /same"')
    assert '<tr class="lat-slower" data-endpoint="GET /slow"><td><b>SLOWER</b> <span class="lat-fail"' in latency_html
    assert "too few samples: 20 of the 50 pairs needed" in latency_html

    markdown = (root / "r.md").read_text()
    assert "| **SLOWER** (fails the gate) | `GET /slow` | 600 |" in markdown
    assert "- :x: `latency.p50>+20%` fails at `GET /slow`: p50 " in markdown

    cases = {c.attrib["name"]: c for c in ET.parse(root / "r.xml").getroot().iter("testcase")}
    failure = cases["latency latency.p50>+20%"].find("failure")
    assert failure is not None and failure.text is not None and failure.text.startswith("GET /slow: p50 ")


def test_report_rebuilds_the_latency_from_the_store_and_for_a_window(
    slower_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    root, _ = slower_run
    again = run_cli(
        "report", "--db", root / "r.sqlite", "--fail-on", "high,latency.p50>+20%", "--json", tmp_path / "a.json"
    )
    assert again.returncode == 1, again.stderr
    assert (
        json.loads((tmp_path / "a.json").read_text())["latency"] == json.loads((root / "r.json").read_text())["latency"]
    )
    # A window before any exchange started holds no timed pair: a latency gate there judges nothing.
    empty = run_cli(
        "report", "--db", root / "r.sqlite", "--until", str(T0_NS // 10**9 - 60), "--min-samples", "0",
        "--fail-on", "latency.p50>+20%", "--json", tmp_path / "w.json",
    )  # fmt: skip
    assert empty.returncode == 2, empty.stdout
    assert "no latency term could be judged: no compared pair has both sides timed" in empty.stdout
    assert json.loads((tmp_path / "w.json").read_text())["latency"]["pairs"] == 0


def test_a_no_change_tape_passes(tmp_path: Path) -> None:
    tape = write_tape(tmp_path / "tape", traffic([("/a", 500, 1.0), ("/b", 500, 1.0)], seed=5))
    result = run_cli("diff", tape, "--fail-on", "high,latency.p50>+5%,latency.p90>+10%", "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stdout
    latency = json.loads((tmp_path / "r.json").read_text())["latency"]
    assert [c["verdict"] for c in latency["comparisons"]] == ["no significant difference"] * 2
    assert latency["failures"] == []


def test_too_few_pairs_are_said_and_fail_nothing(tmp_path: Path) -> None:
    tape = write_tape(tmp_path / "tape", traffic([("/slow", 30, 2.0)]))
    result = run_cli("diff", tape, "--markdown", tmp_path / "r.md", "--no-color")
    assert result.returncode == 0, result.stdout
    assert "1 endpoint(s) with fewer than 50 pairs: too few samples, no statement" in result.stdout
    assert "too few samples, no statement" in (tmp_path / "r.md").read_text()
    gated = run_cli("diff", tape, "--fail-on", "latency.p99>+20%")
    assert gated.returncode == 2
    assert "no latency term could be judged: all 1 endpoint(s) with timed pairs have too few of them" in gated.stdout


@pytest.mark.parametrize("segment_bytes", [64 * 2**20, 256 * 2**10])  # one segment; several, split by worker
def test_two_workers_give_the_one_worker_report_byte_for_byte(tmp_path: Path, segment_bytes: int) -> None:
    # More than the 1,000 sampled pairs per endpoint: the sample is a choice, and it must be the same.
    exchanges = traffic([("/slow", 1500, 1.1), ("/same", 1200, 1.0), ("/users/7", 40, 1.0)], seed=3)
    tape = write_tape(tmp_path / "tape", exchanges, segment_bytes)
    outputs: dict[int, dict[str, str]] = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        result = run_cli(
            "diff", tape, "--workers", workers, "--fail-on", "high,latency.p50>+5%", "--json", out / "r.json",
            "--html", out / "r.html", "--markdown", out / "r.md", "--junit", out / "r.xml", "--no-color", "--full",
        )  # fmt: skip
        assert result.returncode == 1, result.stdout + result.stderr
        outputs[workers] = {"terminal": result.stdout} | {
            p.suffix: without_timings(p.read_text()) for p in sorted(out.glob("r.*"))
        }
    assert outputs[1] == outputs[2]
    latency = json.loads(outputs[2][".json"])["latency"]
    assert latency["comparisons"][0]["sampled_pairs"] == 1000 and latency["comparisons"][0]["pairs"] == 1500


class SlowTarget:
    """A server that answers every request after ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay_s)
        return web.Response(text="recorded", content_type="text/plain")

    async def __aenter__(self) -> SlowTarget:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_a_replay_results_tape_compares_recorded_with_replayed_latency(tmp_path: Path) -> None:
    """Recorded at 1 ms, replayed against a target that takes 20 ms: the replay is slower."""
    recorded = [
        Exchange(
            id=f"rec-{i}",
            started_at_ns=T0_NS + i * 2_000_000,
            request=Request("GET", "/item"),
            primary=Response(200, "OK", ((b"Content-Type", b"text/plain"),), b"recorded"),
            timings={"primary": Timing(10_000, 500_000, 1_010_000)},
        )
        for i in range(80)
    ]
    tape = write_tape(tmp_path / "tape", recorded)
    async with SlowTarget(0.02) as target:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowtap", "replay", str(tape), "--target", target.url,
            "--results", str(tmp_path / "results"), "--no-progress",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, out.decode() + err.decode()
    result = await asyncio.to_thread(
        run_cli, "diff", tmp_path / "results", "--fail-on", "high,latency.p50>+20%", "--json", tmp_path / "r.json"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    (only,) = json.loads((tmp_path / "r.json").read_text())["latency"]["comparisons"]
    assert (only["endpoint"], only["shadow"], only["pairs"], only["verdict"]) == ("GET /item", "replay", 80, "slower")
    p50 = only["quantiles"][0]
    assert 0.99 < p50["primary_ms"] < 1.02 and p50["shadow_ms"] >= 20  # recorded 1 ms, replayed at least the delay


async def test_a_proxy_tape_compares_the_shadow_with_the_primary_on_the_same_requests(
    tmp_path: Path,
    processes: list[asyncio.subprocess.Process],  # noqa: F811 (the fixture)
) -> None:
    """A real proxy in front of a primary that answers at once and a shadow that takes 15 ms more on
    GET /item: the recorded tape's diff finds the shadow slower there, by about those 15 ms."""

    async def primary(request: web.Request) -> web.Response:
        return web.Response(text=f"answer {request.path}")

    async def shadow(request: web.Request) -> web.Response:
        if request.path == "/item":
            await asyncio.sleep(0.015)
        return web.Response(text=f"answer {request.path}")

    runners: list[web.AppRunner] = []
    urls: list[str] = []
    for handler in (primary, shadow):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    tape = tmp_path / "tape"
    try:
        process, match = await start(
            processes, "--primary", urls[0], "--shadow", f"v2={urls[1]}", "--tape", str(tape), "--no-live-diff"
        )
        async with aiohttp.ClientSession() as client:
            for _ in range(70):
                for path in ("/item", "/other"):
                    async with client.get(f"{match.group(1)}{path}") as resp:
                        assert resp.status == 200
            await asyncio.sleep(0.1)  # the last shadow copies answer
        code, stderr = await stop(process)
        assert code == 0, stderr
    finally:
        for runner in runners:
            await runner.cleanup()
    result = await asyncio.to_thread(
        run_cli, "diff", tape, "--fail-on", "high,latency.p50>+5ms", "--json", tmp_path / "r.json"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    by_endpoint = {c["endpoint"]: c for c in report["latency"]["comparisons"]}
    item = by_endpoint["GET /item"]
    assert (item["shadow"], item["pairs"], item["verdict"]) == ("v2", 70, "slower")
    assert item["median_difference_ms"]["value"] >= 14  # the shadow's 15 ms, measured from its copy's send
    assert by_endpoint["GET /other"]["pairs"] == 70
    assert report["verdict"]["failing_latency"] == ["latency.p50>+5ms at GET /item"]
