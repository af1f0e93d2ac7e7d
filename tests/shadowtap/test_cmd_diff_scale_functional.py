"""`shadowtap diff` at scale: several workers give the one-worker report, memory stays bounded."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import yaml

from shadowtap.recorder import Exchange, SyncTapeWriter, TapeOptions
from tests import peak_rss
from tests.differ.corpus.traffic import CANDIDATE, CONFIG, traffic
from tests.differ.scale_tape import RESOURCES, scale_exchange, write_tape
from tests.grpc_fixtures import CompiledShop
from tests.shadowtap.test_cmd_diff_grpc_functional import PLANTED_BY_NAME, check, shop, tape  # noqa: F401 (fixtures)

#: The budget of issue 25: a diff of any tape fits in this, whatever its number of distinct paths.
PEAK_RSS_LIMIT_BYTES = 300 * 2**20


def diff(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowtap", "diff", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def without_timings(text: str) -> str:
    """A report with its generation time blanked: the only thing allowed to differ between runs."""
    text = re.sub(r'"generated_at_ns": \d+', '"generated_at_ns": 0', text)
    text = re.sub(r'timestamp="[\d:T-]+"', 'timestamp="-"', text)
    return re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", "generated -", text)


@pytest.mark.parametrize(
    ("compression", "segment_bytes"),
    [
        ("zstd", 128 * 2**20),  # one segment: every worker reads it all and diffs its endpoints' exchanges
        ("none", 2**20),  # a dozen segments: each worker reads its own
    ],
)
def test_workers_give_the_one_worker_report_byte_for_byte(
    tmp_path: Path, compression: Literal["zstd", "none"], segment_bytes: int
) -> None:
    generated = tmp_path / "tape"
    options = TapeOptions(fsync="none", compression=compression, max_segment_bytes=segment_bytes)
    with SyncTapeWriter(generated, options) as writer:
        writer.write_many(traffic(1200, planted=True))
        # Maps keyed by ids and many endpoints, over the planted traffic with its secondary.
        writer.write_many(scale_exchange(i, 300) for i in range(1500))
    segments = len(list(generated.glob("*.stape")))
    assert segments == 1 if segment_bytes > 2**20 else segments >= 2 * 3
    (tmp_path / "diff.yaml").write_text(yaml.safe_dump(CONFIG))
    outputs: dict[int, dict[str, str]] = {}
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        result = diff(
            generated, "--candidate", CANDIDATE, "--config", tmp_path / "diff.yaml", "--workers", workers,
            "--db", out / "r.sqlite", "--json", out / "r.json", "--html", out / "r.html",
            "--markdown", out / "r.md", "--junit", out / "r.xml", "--no-color", "--full",
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        outputs[workers] = {
            "terminal": result.stdout,
            **{p.suffix: without_timings(p.read_text()) for p in sorted(out.glob("r.*")) if p.suffix != ".sqlite"},
        }
    assert outputs[1] == outputs[3]
    report = json.loads(outputs[3][".json"])
    # The planted traffic's endpoints and the scale tape's resources, with and without an id.
    assert len(report["endpoints"]) > 2 * len(RESOURCES)
    assert report["compared"] + report["errors"] == report["pairs"] > 1500
    keyed = [s for e in report["endpoints"] for s in e["signatures"] if ".{key}" in s["path"]]
    assert keyed and all("users.{key}" in s["path"] for s in keyed)


def test_memory_stays_bounded_with_a_distinct_path_per_exchange(tmp_path: Path) -> None:
    count = 40_000
    generated = write_tape(tmp_path / "tape", (scale_exchange(i, count) for i in range(count)))
    proc = subprocess.run(
        peak_rss.command(
            tmp_path / "peak", "diff", generated, "--candidate", "v2", "--workers", "1",
            "--json", tmp_path / "r.json", "--quiet", "--no-progress",
        ),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert peak_rss.peak_kib(tmp_path / "peak") * 1024 < PEAK_RSS_LIMIT_BYTES
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["pairs"], report["compared"]) == (count, count)
    assert report["differing"] == count - count // 4
    endpoints = {e["endpoint"] for e in report["endpoints"]}
    assert endpoints == {f"GET /api/v1/{r}" for r in RESOURCES} | {f"GET /api/v1/{r}/{{id}}/detail" for r in RESOURCES}
    # Twenty thousand distinct ids in paths and twelve thousand in maps: a few signatures per endpoint.
    assert max(len(e["signatures"]) for e in report["endpoints"]) <= 10
    assert any(s["path"] == "body.users.{key}.score" for e in report["endpoints"] for s in e["signatures"])


def test_workers_load_the_protobuf_schema_each(tape: Path, shop: CompiledShop, tmp_path: Path) -> None:  # noqa: F811
    report = tmp_path / "report.json"
    result = diff(
        tape, "--candidate", "v2", "--proto-descriptor", shop.descriptor_set, "--workers", 2, "--json", report
    )
    check(result, report, PLANTED_BY_NAME)


def test_workers_share_a_noise_tape_and_note_a_torn_tail_once(tmp_path: Path) -> None:
    exchanges = list(traffic(1500, planted=True))
    main = [Exchange(e.id, e.started_at_ns, e.request, e.primary, {CANDIDATE: e.shadows[CANDIDATE]}) for e in exchanges]
    replays = [
        Exchange(e.id, e.started_at_ns, e.request, e.primary, {"replay": e.shadows["secondary"]}) for e in exchanges
    ]
    tapes = {}
    for name, part in (("tape", main), ("replayed", replays)):
        # Small segments, cut inside by the workers' chunks as well as between them.
        options = TapeOptions(fsync="none", compression="none", max_segment_bytes=700 * 2**10)
        with SyncTapeWriter(tmp_path / name, options) as writer:
            writer.write_many(part)
        tapes[name] = tmp_path / name
    last = sorted(tapes["tape"].glob("*.stape"))[-1]
    with last.open("ab") as f:
        f.write(b"\xf5\x1d\x01\xff\xff")  # a frame header cut short by a crash
    (tmp_path / "diff.yaml").write_text(yaml.safe_dump(CONFIG))
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.json"
        result = diff(
            tapes["tape"], "--noise-tape", tapes["replayed"], "--config", tmp_path / "diff.yaml",
            "--workers", workers, "--json", out, "--no-color", "--full",
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        outputs[workers] = (result.stdout, result.stderr, without_timings(out.read_text()))
    assert outputs[1] == outputs[2]
    assert outputs[2][1].count("torn tail") == 1, outputs[2][1]
    document = json.loads(outputs[2][2])
    reasons = {
        s["path"]: s["suppression_reason"] for e in document["endpoints"] for s in e["signatures"] if s["suppressed"]
    }
    assert reasons["body.score"] == "learned-noise"
    assert document["pairs"] >= 1500


def test_salvaging_workers_share_by_endpoint_and_note_the_damage_once(tmp_path: Path) -> None:
    generated = tmp_path / "tape"
    options = TapeOptions(fsync="none", compression="none")
    with SyncTapeWriter(generated, options) as writer:
        writer.write_many(traffic(1200, planted=True))
    (segment,) = generated.glob("*.stape")
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a frame in the middle: its checksum fails
    segment.write_bytes(bytes(data))
    (tmp_path / "diff.yaml").write_text(yaml.safe_dump(CONFIG))
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.json"
        result = diff(
            generated, "--candidate", CANDIDATE, "--config", tmp_path / "diff.yaml", "--salvage",
            "--workers", workers, "--json", out, "--no-color", "--full",
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        outputs[workers] = (result.stdout, result.stderr, without_timings(out.read_text()))
    assert outputs[1] == outputs[2]
    assert outputs[2][1].count("corrupt bytes") == 1, outputs[2][1]
    assert 1000 < json.loads(outputs[2][2])["pairs"] < 1200


def test_a_corrupt_frame_fails_the_workers_as_it_fails_one(tmp_path: Path) -> None:
    generated = tmp_path / "tape"
    with SyncTapeWriter(generated, TapeOptions(fsync="none", compression="none")) as writer:
        writer.write_many(traffic(1200, planted=True))
    (segment,) = generated.glob("*.stape")
    data = bytearray(segment.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a frame: its checksum fails, whichever process reads it
    segment.write_bytes(bytes(data))
    errors = {}
    for workers in (1, 2):
        result = diff(generated, "--candidate", CANDIDATE, "--workers", workers, "--quiet", "--no-progress")
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
        errors[workers] = result.stderr
    assert errors[1] == errors[2] and "corrupt frame" in errors[2] and str(segment) in errors[2]
