"""`shadowtap diff` and `shadowtap report` as a user runs them: real tapes, real subprocesses."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from shadowtap.recorder import Exchange, Failure, FailureKind, Request, Response, SyncTapeWriter, TapeOptions
from tests.differ.corpus.traffic import CANDIDATE, CONFIG, PLANTED, T0_NS, traffic


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowtap", *map(str, args)], capture_output=True, text=True, timeout=100, check=False
    )


def write_tape(directory: Path, exchanges: list[Exchange] | None = None, *, planted: bool = True) -> Path:
    with SyncTapeWriter(directory, TapeOptions(fsync="none")) as writer:
        for exchange in exchanges if exchanges is not None else traffic(1200, planted=planted):
            writer.write(exchange)
    return directory


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("diff")
    tape = write_tape(root / "tape")
    (root / "diff.yaml").write_text(yaml.safe_dump(CONFIG))
    result = run_cli(
        "diff", tape, "--candidate", CANDIDATE, "--config", root / "diff.yaml", "--db", root / "results.sqlite",
        "--json", root / "report.json", "--html", root / "report.html", "--markdown", root / "report.md",
        "--junit", root / "junit.xml", "--no-color",
    )  # fmt: skip
    return root, result


def test_diff_finds_the_planted_regressions_and_exits_1(
    planted_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, result = planted_run
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "verdict: exit 1" in result.stdout
    assert "POST /checkout" in result.stdout
    document = json.loads((root / "report.json").read_text())
    assert document["candidate_name"] == CANDIDATE and document["secondary_name"] == "secondary"
    live = {
        (s["endpoint"], s["path"], s["kind"], s["transition"])
        for e in document["endpoints"]
        for s in e["signatures"]
        if not s["suppressed"]
    }
    assert live == PLANTED
    assert (root / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert "POST /checkout" in (root / "report.md").read_text()
    suites = ET.parse(root / "junit.xml").getroot()
    assert len(suites.findall(".//testcase")) == len(document["endpoints"])


def test_store_has_one_row_per_compared_exchange(planted_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = planted_run
    with closing(sqlite3.connect(root / "results.sqlite")) as db:
        pairs = db.execute("SELECT count(*) FROM pairs").fetchone()[0]
        endpoints = {row[0] for row in db.execute("SELECT DISTINCT endpoint FROM routes")}
        signature_rows = db.execute("SELECT count(*) FROM signatures").fetchone()[0]
    assert pairs == 1200
    assert "GET /users/{id}" in endpoints
    assert signature_rows > len(PLANTED)


def test_report_rebuilds_from_the_store_alone(planted_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = planted_run
    result = run_cli("report", "--db", root / "results.sqlite", "--json", root / "again.json", "--quiet")
    assert result.returncode == 1, result.stderr
    again = json.loads((root / "again.json").read_text())
    first = json.loads((root / "report.json").read_text())
    again.pop("generated_at_ns")
    first.pop("generated_at_ns")
    assert again == first

    window_end_s = (T0_NS + 100 * 1_000_000) / 1e9
    windowed = run_cli(
        "report", "--db", root / "results.sqlite", "--until", str(window_end_s), "--json", root / "w.json",
        "--endpoint", "POST /checkout", "--min-samples", "1", "--quiet",
    )  # fmt: skip
    assert windowed.returncode in (0, 1), windowed.stderr
    document = json.loads((root / "w.json").read_text())
    assert [e["endpoint"] for e in document["endpoints"]] == ["POST /checkout"]
    assert document["pairs"] < 100


def test_fail_on_never_passes_and_min_samples_gates(planted_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = planted_run
    db = root / "results.sqlite"
    assert run_cli("report", "--db", db, "--fail-on", "never", "--quiet").returncode == 0
    assert run_cli("report", "--db", db, "--fail-on", "critical&rate>0.5", "--quiet").returncode == 0
    assert run_cli("report", "--db", db, "--fail-on", "kind=added", "--quiet").returncode == 1
    gated = run_cli("report", "--db", db, "--min-samples", "100000", "--quiet")
    assert gated.returncode == 2
    assert "fewer than 100000" in gated.stdout


def test_clean_candidate_exits_0(tmp_path: Path) -> None:
    tape = write_tape(tmp_path / "tape", planted=False)
    (tmp_path / "diff.yaml").write_text(yaml.safe_dump(CONFIG))
    result = run_cli("diff", tape, "--candidate", CANDIDATE, "--config", tmp_path / "diff.yaml", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr


def test_replay_tape_is_read_the_same_way(tmp_path: Path) -> None:
    body = b'{"ok": true}'
    exchanges = [
        Exchange(
            id=f"r{i}",
            started_at_ns=T0_NS + i,
            request=Request("GET", f"/items/{i}"),
            primary=Response(200, "OK", ((b"Content-Type", b"application/json"),), body),
            shadows={"replay": Response(200 if i % 2 else 503, "", ((b"Content-Type", b"application/json"),), body)},
        )
        for i in range(40)
    ]
    result = run_cli("diff", write_tape(tmp_path / "tape", exchanges), "--json", tmp_path / "r.json", "--quiet")
    assert result.returncode == 1
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["candidate_name"] == "replay"
    [endpoint] = document["endpoints"]
    assert endpoint["endpoint"] == "GET /items/{id}"
    assert endpoint["signatures"][0]["transition"] == "200->503"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("diff", "/nonexistent/tape"), "no such tape"),
        (("diff", "TAPE", "--fail-on", "sometimes"), "--fail-on"),
        (("diff", "TAPE"), "several shadows"),
        (("diff", "TAPE", "--candidate", "v2", "--config", "BADCONFIG"), "diff.noise.relative"),
        (("report", "--db", "/nonexistent/db.sqlite"), "no such results database"),
    ],
)
def test_user_mistakes_are_one_line(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    # Two candidates and no 'secondary': the differ cannot guess which one is under test.
    two_shadows = [
        Exchange(e.id, e.started_at_ns, e.request, e.primary, {"v2": e.shadows[CANDIDATE], "v3": e.shadows[CANDIDATE]})
        for e in traffic(5)
    ]
    tape = write_tape(tmp_path / "tape", two_shadows)
    (tmp_path / "bad.yaml").write_text("diff:\n  noise:\n    relative: -1\n")
    resolved = [str(tape) if a == "TAPE" else str(tmp_path / "bad.yaml") if a == "BADCONFIG" else a for a in args]
    result = run_cli(*resolved)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert needle in result.stderr


def test_noise_tape_teaches_noise_without_a_secondary_shadow(tmp_path: Path) -> None:
    exchanges = list(traffic(1200))
    main = [Exchange(e.id, e.started_at_ns, e.request, e.primary, {CANDIDATE: e.shadows[CANDIDATE]}) for e in exchanges]
    replays = [
        Exchange(e.id, e.started_at_ns, e.request, e.primary, {"replay": e.shadows["secondary"]}) for e in exchanges
    ]
    (tmp_path / "diff.yaml").write_text(yaml.safe_dump(CONFIG))
    result = run_cli(
        "diff", write_tape(tmp_path / "tape", main), "--noise-tape", write_tape(tmp_path / "replayed", replays),
        "--config", tmp_path / "diff.yaml", "--json", tmp_path / "r.json", "--quiet",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["candidate_name"] == CANDIDATE
    reasons = {
        s["path"]: s["suppression_reason"] for e in document["endpoints"] for s in e["signatures"] if s["suppressed"]
    }
    assert reasons["body.score"] == "learned-noise"


def test_mostly_failing_candidate_is_exit_2(tmp_path: Path) -> None:
    ok = Response(200, "OK", ((b"Content-Type", b"application/json"),), b"{}")
    exchanges = [
        Exchange(
            id=f"f{i}",
            started_at_ns=T0_NS + i,
            request=Request("GET", "/slow"),
            primary=ok,
            shadows={"v2": ok if i % 4 == 0 else Failure(FailureKind.TIMEOUT, "5s")},
        )
        for i in range(40)
    ]
    result = run_cli("diff", write_tape(tmp_path / "tape", exchanges), "--quiet")
    assert result.returncode == 2
    assert "30 of 40 pairs failed" in result.stdout


def test_torn_tail_is_noted_and_the_rest_is_diffed(tmp_path: Path) -> None:
    # Uncompressed, so that a torn last frame is one exchange (in zstd it is the last block's).
    tape = tmp_path / "tape"
    with SyncTapeWriter(tape, TapeOptions(fsync="none", compression="none")) as writer:
        writer.write_many(traffic(1200, planted=True))
    [segment] = sorted(tape.glob("*.stape"))
    with segment.open("r+b") as f:
        f.truncate(segment.stat().st_size - 7)  # a crash in the middle of the last frame
    result = run_cli("diff", tape, "--candidate", CANDIDATE, "--json", tmp_path / "r.json", "--quiet")
    assert result.returncode == 1, result.stderr
    assert "torn tail" in result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["pairs"] == 1199


def test_a_record_of_the_wrong_shape_is_one_line_and_salvage_skips_it(tmp_path: Path) -> None:
    from tests.recorder.test_reader import frame_offsets, mutated_record, plain_record, write_records

    # A status stored as str: the differ crashed on it with a traceback.
    records = [plain_record(i) for i in range(12)]
    records[5] = mutated_record("shadows['v2'].status", 5)
    segment = write_records(tmp_path / "tape", records)
    offset = frame_offsets(segment)[5]
    result = run_cli("diff", tmp_path / "tape", "--candidate", "v2", "--min-samples", "1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"{segment} at byte {offset}, field \"shadows['v2'].status\"" in result.stderr
    result = run_cli(
        "diff", tmp_path / "tape", "--candidate", "v2", "--min-samples", "1", "--salvage", "--json", tmp_path / "r.json"
    )
    assert result.returncode in (0, 1), result.stderr
    assert f"skipped {frame_offsets(segment)[6] - offset} corrupt bytes at {offset}" in result.stderr
    assert "shadows['v2'].status" in result.stderr and "Traceback" not in result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["pairs"] == 11


def run_into_closed_pipe(*args: str | Path) -> tuple[int, str]:
    """Run the CLI with its stdout a pipe nobody reads any more (`shadowtap diff ... | head -0`)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowtap", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.close()  # before the first byte: every write the command makes meets EPIPE
    _, err = proc.communicate(timeout=100)
    return proc.returncode, err.decode()


def test_a_closed_stdout_keeps_the_verdict_and_writes_every_report(tmp_path: Path) -> None:
    # `diff ... | head -1` exited 0 on a failing gate, without writing the reports it was asked for.
    tape = write_tape(tmp_path / "tape")
    (tmp_path / "diff.yaml").write_text(yaml.safe_dump(CONFIG))
    outputs = {name: tmp_path / name for name in ("r.html", "r.json", "r.md", "junit.xml")}
    code, err = run_into_closed_pipe(
        "diff", tape, "--candidate", CANDIDATE, "--config", tmp_path / "diff.yaml", "--html", outputs["r.html"],
        "--json", outputs["r.json"], "--markdown", outputs["r.md"], "--junit", outputs["junit.xml"],
    )  # fmt: skip
    assert code == 1, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert all(path.stat().st_size > 0 for path in outputs.values())
    assert json.loads(outputs["r.json"].read_text())["verdict"]["exit_code"] == 1


@pytest.mark.parametrize("kind", ["empty", "short", "foreign"])
def test_diff_of_a_file_that_is_not_a_tape_says_so(tmp_path: Path, kind: str) -> None:
    from tests.shadowtap.test_cmd_tape import not_a_tape

    # An empty file got "field '--candidate': the tape holds no shadow or replay responses".
    path = not_a_tape(tmp_path, kind)
    result = run_cli("diff", path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"{path}" in result.stderr and "not a shadowtap tape" in result.stderr
    assert "--candidate" not in result.stderr


def test_diff_of_an_empty_tape_says_it_is_empty(tmp_path: Path) -> None:
    (tmp_path / "tape").mkdir()  # a proxy that recorded nothing leaves this
    result = run_cli("diff", tmp_path / "tape")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "the tape holds no exchanges" in result.stderr
    assert "--candidate" not in result.stderr


@pytest.mark.parametrize("count", [20, 1200])  # the tape's start (1,000 exchanges) holds them all, or not
@pytest.mark.parametrize("flag", ["--candidate", "--secondary"])
def test_a_name_not_on_the_tape_lists_the_names_that_are(tmp_path: Path, count: int, flag: str) -> None:
    # --candidate v3 on a tape of v2 and secondary compared nothing and said only "0 pairs compared".
    tape = write_tape(tmp_path / "tape", list(traffic(count)))
    names = ["--candidate", CANDIDATE, "--secondary", "secondary"]
    names[names.index(flag) + 1] = "v3"
    result = run_cli("diff", tape, *names)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"field '{flag}': no response named 'v3' on the tape; it holds: primary, secondary, v2" in result.stderr
