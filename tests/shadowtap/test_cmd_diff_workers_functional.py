"""`shadowtap diff --workers` inside: the worker processes' stores handed over in pieces and merged
between the command's own chunks, workers forked or spawned, report files written by forked
processes; each gives the one-worker report, byte for byte."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

import shadowtap.commands.diff as diff_command
from shadowtap.cli import main
from shadowtap.differ import DiffStore, RunMeta, build_report
from shadowtap.differ.pipeline import relearn_endpoints
from shadowtap.differ.reports import write_json
from shadowtap.recorder import SyncTapeWriter, TapeOptions, TapeReader
from tests.differ.corpus.traffic import CANDIDATE, CONFIG, traffic
from tests.differ.scale_tape import scale_exchange
from tests.shadowtap.test_cmd_diff_scale_functional import without_timings

#: Pairs per worker store in these tests: a tape of 2,700 exchanges hands over several.
PIECE_PAIRS = 150


#: A fresh process runs no other thread: the workers, the report built beside the learning and
#: the report writers are forked. It prints how many stores the workers handed over and whether
#: the report built beside the learning stood.
FORKING = textwrap.dedent(f"""
    import sys
    import shadowtap.commands.diff as command
    from shadowtap.cli import main

    command._PIECE_PAIRS = {PIECE_PAIRS}
    assert command._start_method() == "fork"
    run_workers, take = command._run_workers, command._Speculation.take
    def counting(*args):
        store, done = run_workers(*args)
        print("pieces", done.pieces, file=sys.stderr)
        return store, done
    def taking(self, *, holds):
        taken = take(self, holds=holds)
        print("stood", taken is not None, file=sys.stderr)
        return taken
    command._run_workers, command._Speculation.take = counting, taking
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def tape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    # Uncompressed: 8 MiB, cut in 128 chunks of whole frames (about 21 exchanges each).
    options = TapeOptions(fsync="none", compression="none")
    with SyncTapeWriter(root / "tape", options) as writer:
        writer.write_many(traffic(1200, planted=True))
        writer.write_many(scale_exchange(i, 300) for i in range(1500))
    (root / "diff.yaml").write_text(yaml.safe_dump(CONFIG))
    return root


def arguments(tape: Path, out: Path, workers: int) -> list[str]:
    return [
        "diff", str(tape / "tape"), "--candidate", CANDIDATE, "--config", str(tape / "diff.yaml"),
        "--workers", str(workers), "--db", str(out / "r.sqlite"), "--json", str(out / "r.json"),
        "--html", str(out / "r.html"), "--no-color", "--full",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def one_worker(tape: Path) -> dict[str, str]:
    out = tape / "w1"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "shadowtap", *arguments(tape, out, 1)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1, result.stderr
    return {"stdout": result.stdout, **reports(out)}


def reports(out: Path) -> dict[str, str]:
    return {name: without_timings((out / name).read_text()) for name in ("r.json", "r.html")}


def test_a_worker_hands_its_stores_over_in_pieces_that_merge_into_the_one_worker_report(
    tape: Path, one_worker: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One worker process's part, run here and alone: it claims every chunk of the tape.
    config = diff_command.load_config(tape / "diff.yaml")
    meta = RunMeta("primary", CANDIDATE, "secondary", (str(tape / "tape"),))
    job = diff_command._Job(
        tapes=(str(tape / "tape"),), noise_tapes=(), noise_name="replay", salvage=False, config=tape / "diff.yaml",
        proto_descriptor=None, proto_reflection=None, meta=meta, shard=0, shards=2, db="", progress=False,
        collect_names=False,
    )  # fmt: skip
    worker = diff_command._worker_jobs(job, TapeReader(tape / "tape"), None, 2, str(tmp_path))[1]
    assert worker.ranged
    monkeypatch.setattr(diff_command, "_next_chunk", multiprocessing.Value("q", 0))
    done = diff_command._diff_shard(replace(worker, piece_pairs=PIECE_PAIRS))
    assert done.stats.exchanges == 2700
    # A store handed over once it holds 150 pairs or more (whole chunks), then the last one.
    assert 2700 // (PIECE_PAIRS + 30) <= done.pieces <= 2700 // PIECE_PAIRS + 1
    store = DiffStore(tmp_path / "merged.sqlite")
    store.set_meta(meta)
    for index in range(done.pieces):
        assert store.merge_from(diff_command._piece(worker.db, index)) == 0
    relearn_endpoints(store, config)
    write_json(build_report(store, config), tmp_path / "r.json")
    store.close()
    assert without_timings((tmp_path / "r.json").read_text()) == one_worker["r.json"]


def test_spawned_workers_hand_their_stores_over_in_pieces(
    tape: Path, one_worker: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setattr(diff_command, "_PIECE_PAIRS", PIECE_PAIRS)
    monkeypatch.setattr(diff_command, "_start_method", lambda: "spawn")
    merged: list[int] = []
    run_workers = diff_command._run_workers

    def counting(*args: Any) -> Any:
        store, done = run_workers(*args)
        merged.append(done.pieces)
        return store, done

    monkeypatch.setattr(diff_command, "_run_workers", counting)
    assert main(arguments(tape, tmp_path, 2)) == 1
    # However few chunks the spawned worker got (it starts slowly), its last store is merged.
    assert merged and merged[0] >= 1
    assert {"stdout": capsys.readouterr().out, **reports(tmp_path)} == one_worker
    assert not list(tmp_path.glob("shard-*")), "every worker store is merged and removed"


def test_forked_workers_hand_their_stores_over_and_forked_writers_write_the_files(
    tape: Path, one_worker: dict[str, str], tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FORKING, *arguments(tape, tmp_path, 2)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1, result.stderr
    assert int(result.stderr.split()[1]) >= 1, result.stderr
    # The planted traffic's long tail of slugs folds late: the learning changes endpoints, so the
    # report built beside it is dropped (its files removed) and built again.
    assert result.stderr.split()[3] == "False", result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json", "r.sqlite"]
    assert {"stdout": result.stdout, **reports(tmp_path)} == one_worker
    assert json.loads((tmp_path / "r.json").read_text())["pairs"] == 2700


def test_a_report_file_a_forked_writer_cannot_write_fails_as_with_one_process(tmp_path: Path) -> None:
    small = tmp_path / "small"
    with SyncTapeWriter(small / "tape", TapeOptions(fsync="none")) as writer:
        writer.write_many(traffic(300, planted=True))
    (small / "diff.yaml").write_text(yaml.safe_dump(CONFIG))
    errors = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        args = arguments(small, out, workers)
        args[args.index("--json") + 1] = str(tmp_path / "missing" / "r.json")  # written by a forked process
        result = subprocess.run(
            [sys.executable, "-m", "shadowtap", *args, "--quiet"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 2, result.stderr
        errors[workers] = result.stderr
        assert (out / "r.html").is_file()  # the other file is written all the same
    assert errors[1] == errors[2]
    assert "cannot write report" in errors[2] and "missing/r.json" in errors[2]


def test_the_report_built_beside_the_learning_stands_when_it_changes_no_endpoint(tmp_path: Path) -> None:
    # Ids are digits from the first request on: every route is stored under its final template.
    options = TapeOptions(fsync="none", compression="none")
    with SyncTapeWriter(tmp_path / "tape", options) as writer:
        writer.write_many(scale_exchange(i, 300) for i in range(2000))
    (tmp_path / "diff.yaml").write_text(yaml.safe_dump(CONFIG))
    outputs = {}
    for workers, command in ((1, ["-m", "shadowtap"]), (2, ["-c", FORKING])):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        result = subprocess.run(
            [sys.executable, *command, *arguments(tmp_path, out, workers)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 1, result.stderr
        outputs[workers] = {"stdout": result.stdout, **reports(out)}
    assert result.stderr.split()[3] == "True", result.stderr
    assert outputs[1] == outputs[2]
    assert sorted(p.name for p in (tmp_path / "w2").iterdir()) == ["r.html", "r.json", "r.sqlite"]
