"""`shadowtap export`: tape -> HAR / mitmproxy flows / .gor, format from --to or the file suffix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mitmproxy.io import FlowReader

from shadowtap.cli import main
from shadowtap.recorder import Exchange, Failure, FailureKind, Request, Response, SyncTapeWriter, TapeOptions
from shadowtap.recorder.formats import GorReader


def make_tape(directory: Path) -> None:
    exchanges = [
        Exchange(
            id=f"ex{i}",
            started_at_ns=1_700_000_000_000_000_000 + i * 1_000_000,
            request=Request("GET", f"/items/{i}", ((b"Host", b"shop.test"),), authority="shop.test"),
            primary=Response(200, "OK", ((b"Content-Type", b"application/json"),), b'{"id": %d}' % i),
            shadows={"v2": Response(500)},
        )
        for i in range(3)
    ]
    exchanges.append(
        Exchange(id="bad", started_at_ns=1, request=Request("GET", "/x"), primary=Failure(FailureKind.RESET, "rst"))
    )
    with SyncTapeWriter(directory, TapeOptions(fsync="none")) as writer:
        writer.write_many(exchanges)


@pytest.mark.parametrize("name", ["out.har", "out.gor", "out.mitm", "out.gor.gz"])
def test_format_from_suffix(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    make_tape(tmp_path / "tape")
    out = tmp_path / name
    assert main(["export", str(tmp_path / "tape"), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "4 exchanges exported" in line and "3 shadow responses" in line
    assert out.stat().st_size > 0


def test_har_export_is_valid_har(tmp_path: Path) -> None:
    make_tape(tmp_path / "tape")
    out = tmp_path / "any.json"
    assert main(["export", "--to", "har", str(tmp_path / "tape"), "--out", str(out)]) == 0
    entries = json.loads(out.read_text())["log"]["entries"]
    assert [e["request"]["url"] for e in entries[:3]] == [f"http://shop.test/items/{i}" for i in range(3)]
    assert entries[3]["response"]["status"] == 0 and entries[3]["response"]["_error"] == "rst"


def test_gor_and_mitm_exports_read_back(tmp_path: Path) -> None:
    make_tape(tmp_path / "tape")
    assert main(["export", "--to", "gor", str(tmp_path / "tape"), "--out", str(tmp_path / "o.gor")]) == 0
    back = list(GorReader(tmp_path / "o.gor"))
    assert [ex.request.target for ex in back] == ["/items/0", "/items/1", "/items/2", "/x"]
    assert back[3].primary is None  # a failure has no record in .gor
    assert main(["export", "--to", "mitm", str(tmp_path / "tape"), "--out", str(tmp_path / "o.mitm")]) == 0
    with (tmp_path / "o.mitm").open("rb") as stream:
        flows = list(FlowReader(stream).stream())
    assert len(flows) == 4 and flows[3].error is not None


def test_unknown_suffix_and_missing_tape_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_tape(tmp_path / "tape")
    assert main(["export", str(tmp_path / "tape"), "--out", str(tmp_path / "out.txt")]) == 2
    assert "name it with --to" in capsys.readouterr().err
    assert main(["export", "--to", "har", str(tmp_path / "nope"), "--out", str(tmp_path / "o.har")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err


@pytest.mark.parametrize("fmt", ["har", "gor", "mitm"])
def test_an_unwritable_output_is_one_line(tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    make_tape(tmp_path / "tape")
    out = tmp_path / "missing-dir" / f"out.{fmt}"
    assert main(["export", str(tmp_path / "tape"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}: cannot write: No such file or directory" in err


def test_a_full_disk_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/dev/full").exists():
        pytest.fail("/dev/full is missing on this Linux machine")
    make_tape(tmp_path / "tape")
    assert main(["export", "--to", "har", str(tmp_path / "tape"), "--out", "/dev/full"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/dev/full: cannot write: No space left on device" in err


@pytest.mark.parametrize("fmt", ["har", "gor", "mitm"])
def test_a_record_of_the_wrong_shape_is_one_line_and_salvage_skips_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    from tests.recorder.test_reader import frame_offsets, mutated_record, plain_record, write_records

    # A header value stored as str: the exporters crashed on it with a traceback.
    records = [plain_record(i) for i in range(3)]
    records[1] = mutated_record("request.headers[1][1]", 1)
    segment = write_records(tmp_path / "tape", records)
    offset = frame_offsets(segment)[1]
    out = tmp_path / f"out.{fmt}"
    assert main(["export", "--to", fmt, str(tmp_path / "tape"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{segment} at byte {offset}, field 'request.headers[1][1]'" in err
    assert main(["export", "--to", fmt, str(tmp_path / "tape"), "--out", str(out), "--salvage"]) == 0
    captured = capsys.readouterr()
    assert "2 exchanges exported" in captured.out
    assert f"skipped {frame_offsets(segment)[2] - offset} corrupt bytes at {offset}" in captured.out
    assert "request.headers[1][1]" in captured.out


def broken_tape(directory: Path) -> None:
    """A tape whose third of four records is malformed: the export fails after two are written."""
    from tests.recorder.test_reader import mutated_record, plain_record, write_records

    records = [plain_record(i) for i in range(4)]
    records[2] = mutated_record("request.headers[1][1]", 2)
    write_records(directory, records)


@pytest.mark.parametrize("name", ["out.har", "out.gor", "out.gor.gz", "out.mitm"])
def test_a_tape_that_breaks_midway_leaves_no_partial_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    broken_tape(tmp_path / "tape")
    out = tmp_path / "exports" / name
    out.parent.mkdir()
    assert main(["export", str(tmp_path / "tape"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "request.headers[1][1]" in err
    assert list(out.parent.iterdir()) == []  # neither a half-written file nor its temporary


@pytest.mark.parametrize("name", ["out.har", "out.gor", "out.mitm"])
def test_a_failed_export_leaves_the_previous_output_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    make_tape(tmp_path / "good")
    broken_tape(tmp_path / "broken")
    out = tmp_path / "exports" / name
    out.parent.mkdir()
    assert main(["export", str(tmp_path / "good"), "--out", str(out)]) == 0
    before = out.read_bytes()
    assert main(["export", str(tmp_path / "broken"), "--out", str(out)]) == 2
    capsys.readouterr()
    assert out.read_bytes() == before
    assert [p.name for p in out.parent.iterdir()] == [name]


def test_a_finished_export_replaces_the_output_privately_and_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import gzip
    import stat

    make_tape(tmp_path / "tape")
    out = tmp_path / "exports" / "out.gor.gz"
    out.parent.mkdir()
    out.write_bytes(b"an older export")
    out.chmod(0o644)
    assert main(["export", str(tmp_path / "tape"), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"{out} (gor): 4 exchanges exported")
    assert [p.name for p in out.parent.iterdir()] == ["out.gor.gz"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    raw = out.read_bytes()
    assert gzip.decompress(raw).startswith(b"1 ")
    if raw[3] & 0x08:  # FNAME: the name in the gzip header, if any, is not the temporary's
        assert raw[10 : raw.index(b"\0", 10)] == b"out.gor"


def test_an_export_through_a_symlink_replaces_the_file_it_points_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_tape(tmp_path / "tape")
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "out.har"
    real.write_text("old")
    link = tmp_path / "link.har"
    link.symlink_to(real)
    assert main(["export", str(tmp_path / "tape"), "--out", str(link)]) == 0
    capsys.readouterr()
    assert link.is_symlink() and link.resolve() == real
    assert len(json.loads(real.read_text())["log"]["entries"]) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.har", "real", "tape"]
