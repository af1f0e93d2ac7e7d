"""`shadowtap tape info|cat|merge`, driven through the CLI entry point."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from shadowtap.cli import main
from shadowtap.commands.tape import format_ns, parse_time_ns
from shadowtap.recorder import Exchange, Request, Response, SyncTapeWriter, TapeOptions, TapeReader, _frames
from tests.recorder.tape_samples import BASE_NS, make_exchange

PLAIN = TapeOptions(redaction=None, fsync="none", compression="none")


def write(directory: Path, exchanges: list[Exchange], options: TapeOptions = PLAIN) -> Path:
    with SyncTapeWriter(directory, options) as writer:
        writer.write_many(exchanges)
    return directory


@pytest.fixture
def tape(tmp_path: Path) -> Path:
    exchanges = [make_exchange(i, method="POST" if i % 4 == 0 else "GET") for i in range(12)]
    return write(tmp_path / "tape", exchanges)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_info_json_counts_everything(tape: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "tape", "info", str(tape), "--json")
    assert code == 0 and err == ""
    info = json.loads(out)
    assert info["exchanges"] == 12
    assert info["methods"] == {"GET": 9, "POST": 3}
    assert info["hosts"] == {"api.local": 12}
    assert info["primary_statuses"] == {"200": 12}
    assert info["shadows"] == {"v2": {"200": 12}, "v3": {"failure:timeout": 12}}
    assert info["first_started_at"] == format_ns(BASE_NS)
    assert info["span_s"] == pytest.approx(0.011)
    (segment,) = info["segments"]
    assert segment["bytes"] == sum(p.stat().st_size for p in tape.glob("*.stape"))
    assert (segment["format_version"], segment["compression"], segment["torn_tail"]) == (
        _frames.FORMAT_VERSION,
        "none",
        None,
    )


def test_info_text_and_torn_tail_note(tape: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (segment,) = tape.glob("*.stape")
    segment.write_bytes(segment.read_bytes()[:-10])
    code, out, err = run(capsys, "tape", "info", str(tape))
    assert code == 0
    assert "exchanges   11" in out
    assert "methods     GET 8, POST 3" in out
    assert "shadow v2   200 11" in out
    assert "torn tail" in out
    assert err.count("\n") == 1 and "torn tail of" in err and str(segment) in err


def test_info_text_keeps_long_shadow_names_apart_from_their_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ex = make_exchange(0)
    long_named = Exchange(
        id=ex.id, started_at_ns=ex.started_at_ns, request=ex.request, primary=ex.primary,
        shadows={"secondary": Response(200)},
    )  # fmt: skip
    code, out, _ = run(capsys, "tape", "info", str(write(tmp_path / "t", [long_named])))
    assert code == 0
    assert "shadow secondary 200 1" in out


def test_cat_prints_json_lines_with_filters(tape: Path, capsys: pytest.CaptureFixture[str]) -> None:
    since = format_ns(BASE_NS + 2_000_000)
    code, out, _ = run(capsys, "tape", "cat", str(tape), "--method", "post", "--since", since)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["id"] for line in lines] == ["ex-000004", "ex-000008"]
    first = lines[0]
    assert first["request"]["method"] == "POST"
    assert first["request"]["headers"][2:] == [["X-Dup", "1"], ["x-dup", "2"]]
    assert first["request"]["body"] == '{"n":4}'
    assert first["shadows"]["v3"] == {"failure": "timeout", "message": "2s"}
    assert first["timings"]["primary"] == {"sent_ns": 10, "first_byte_ns": 200, "done_ns": 300}


def test_cat_bodies_text_base64_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = b"\x00\xff\xfe"
    tape = write(
        tmp_path,
        [Exchange(id="b", started_at_ns=1, request=Request("GET", "/"), primary=Response(200, "OK", (), binary))],
    )
    _, out, _ = run(capsys, "tape", "cat", str(tape))
    primary = json.loads(out)["primary"]
    assert primary["body_base64"] is True and base64.b64decode(primary["body"]) == binary
    _, out, _ = run(capsys, "tape", "cat", str(tape), "--bodies", "none")
    assert json.loads(out)["primary"]["body_bytes"] == 3
    _, out, _ = run(capsys, "tape", "cat", str(tape), "--bodies", "base64")
    assert json.loads(out)["request"]["body"] == ""


def test_cat_limit_and_path_regex(tape: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "tape", "cat", str(tape), "--path-regex", r"^/users/1\d$", "--limit", "1")
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["ex-000010"]


def test_corrupt_tape_is_one_line_naming_file_and_offset(tape: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (segment,) = tape.glob("*.stape")
    data = bytearray(segment.read_bytes())
    data[_frames.SEGMENT_HEADER_SIZE + 40] ^= 0x55
    segment.write_bytes(bytes(data))
    code, out, err = run(capsys, "tape", "cat", str(tape))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert f"{segment} at byte {_frames.SEGMENT_HEADER_SIZE}" in err
    code, out, err = run(capsys, "tape", "cat", str(tape), "--salvage")
    assert code == 0
    assert len(out.splitlines()) == 11
    assert "skipped" in err


@pytest.mark.parametrize("when", ["yesterday-ish", "inf", "nan"])
def test_bad_time_is_a_clear_error(tape: Path, capsys: pytest.CaptureFixture[str], when: str) -> None:
    code, _, err = run(capsys, "tape", "cat", str(tape), "--since", when)
    assert code == 2
    assert "--since" in err and repr(when) in err and err.count("\n") == 1


def test_merge_interleaves_by_time_and_keeps_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path / "a", [make_exchange(i) for i in range(0, 30, 2)])
    b = write(
        tmp_path / "b", [make_exchange(i) for i in range(1, 30, 2)], TapeOptions(redaction=None, compression="zstd")
    )
    code, out, _ = run(capsys, "tape", "merge", str(tmp_path / "all"), str(a), str(b), "--no-redaction")
    assert code == 0
    assert "merged 30 exchanges from 2 tape(s)" in out
    merged = list(TapeReader(tmp_path / "all"))
    assert [e.id for e in merged] == [f"ex-{i:06d}" for i in range(30)]
    assert merged[3] == make_exchange(3)


def test_merge_refuses_to_write_into_an_input(tape: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tape", "merge", str(tape), str(tape))
    assert code == 2
    assert "also an input" in err


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        ("inf", "not a finite number"),
        ("-Infinity", "not a finite number"),
        ("nan", "not a finite number"),
        ("1e300", "out of range"),
        ("1e20", "out of range"),
        ("-1e20", "out of range"),
        ("9999-12-31T00:00:00", "out of range"),
        ("0001-01-01T00:00:00+14:00", "out of range"),
    ],
)
def test_a_time_beyond_the_tapes_clock_is_refused_naming_why(
    tape: Path, capsys: pytest.CaptureFixture[str], when: str, reason: str
) -> None:
    # Tape times are ns since the epoch in a signed 64-bit int: 1677-09-21 to 2262-04-11.
    for command in ("info", "cat"):
        code, _, err = run(capsys, "tape", command, str(tape), f"--until={when}")
        assert code == 2
        assert "field '--until'" in err and reason in err and repr(when) in err and err.count("\n") == 1


def test_times_parse_iso_and_epoch() -> None:
    assert parse_time_ns("1700000000.5", "t") == 1_700_000_000_500_000_000
    # Exact to the nanosecond, as a float of epoch seconds is not.
    assert parse_time_ns("1700000000.123456789", "t") == 1_700_000_000_123_456_789
    assert parse_time_ns("-1.5", "t") == -1_500_000_000
    assert parse_time_ns("9223372036.854775807", "t") == 2**63 - 1
    assert parse_time_ns("2262-04-11T23:47:16.854775Z", "t") == 9_223_372_036_854_775_000
    assert parse_time_ns("1677-09-21T00:12:43.145225Z", "t") == -9_223_372_036_854_775_000
    assert parse_time_ns("2023-11-14T22:13:20Z", "t") == 1_700_000_000_000_000_000
    assert parse_time_ns("2023-11-14T22:13:20", "t") == 1_700_000_000_000_000_000
    assert format_ns(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"


@pytest.mark.parametrize(
    ("flags", "named"),
    [(("--path-regex", "(unclosed"), "--path-regex"), (("--since", "2026-01-02", "--until", "2026-01-01"), "--until")],
)
def test_bad_filters_name_the_flag(
    tape: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], named: str
) -> None:
    code, _, err = run(capsys, "tape", "info", str(tape), *flags)
    assert code == 2
    assert f"field '{named}'" in err and err.count("\n") == 1


def malformed_tape(directory: Path, field: str) -> tuple[Path, int]:
    """A tape of 4 exchanges whose third record has valid checksums but ``field`` of the wrong type."""
    from tests.recorder.test_reader import frame_offsets, mutated_record, plain_record, write_records

    records = [plain_record(i) for i in range(4)]
    records[2] = mutated_record(field, 2)
    segment = write_records(directory, records)
    return segment, frame_offsets(segment)[2]


def _mutations() -> list[str]:
    from tests.recorder.test_reader import MUTATIONS

    return list(MUTATIONS)


@pytest.mark.parametrize("field", _mutations())
def test_cat_of_a_record_of_the_wrong_shape_is_one_line_naming_file_offset_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str
) -> None:
    segment, offset = malformed_tape(tmp_path / "tape", field)
    code, out, err = run(capsys, "tape", "cat", str(tmp_path / "tape"))
    assert code == 2
    assert len(out.splitlines()) == 2 and err.count("\n") == 1
    assert err.startswith(f"shadowtap tape: error: {segment} at byte {offset}, field {field!r}: malformed")
    code, out, err = run(capsys, "tape", "cat", str(tmp_path / "tape"), "--salvage")
    assert code == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["ex-000000", "ex-000001", "ex-000003"]
    assert err.count("\n") == 1 and f"{segment} at byte {offset}: skipped" in err and field in err


def test_info_and_merge_of_a_record_of_the_wrong_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    segment, offset = malformed_tape(tmp_path / "tape", "primary.status")
    where = f"{segment} at byte {offset}, field 'primary.status'"
    for argv in (["info"], ["merge", str(tmp_path / "merged")]):
        code, _, err = run(capsys, "tape", *argv, str(tmp_path / "tape"))
        assert code == 2
        assert err.count("\n") == 1 and where in err
    code, out, err = run(capsys, "tape", "info", str(tmp_path / "tape"), "--salvage", "--json")
    assert code == 0 and json.loads(out)["exchanges"] == 3
    assert "skipped" in err and "primary.status" in err
    code, out, err = run(capsys, "tape", "merge", str(tmp_path / "salvaged"), str(tmp_path / "tape"), "--salvage")
    assert code == 0 and "merged 3 exchanges" in out
    assert f"{segment} at byte {offset}: skipped" in err and "primary.status" in err and "1 skipped range" in err
    assert [e.id for e in TapeReader(tmp_path / "salvaged")] == ["ex-000000", "ex-000001", "ex-000003"]


def not_a_tape(tmp_path: Path, kind: str) -> Path:
    """A file a user might mistake for a tape."""
    path = tmp_path / {"empty": "empty.stape", "short": "magic-start.bin", "foreign": "notes.txt"}[kind]
    path.write_bytes({"empty": b"", "short": _frames.MAGIC[:3], "foreign": b"hello, this is not a tape\n" * 4}[kind])
    return path


@pytest.mark.parametrize("kind", ["empty", "short", "foreign"])
@pytest.mark.parametrize("action", ["info", "cat", "merge"])
def test_a_file_that_is_not_a_tape_is_said_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, action: str
) -> None:
    # An empty file was reported as a tape with a torn segment, and exit 0.
    path = not_a_tape(tmp_path, kind)
    out_dir = [str(tmp_path / "merged")] if action == "merge" else []
    code, out, err = run(capsys, "tape", action, *out_dir, str(path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"{path}" in err and "not a shadowtap tape" in err, err
    assert not (tmp_path / "merged").exists()


def test_a_tape_directory_keeps_its_crash_artefacts_as_torn_segments(
    tape: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found in a tape directory, an empty segment is what a writer killed at birth leaves: torn, fine.
    (tape / "seg-zzzz.stape").write_bytes(b"")
    code, out, err = run(capsys, "tape", "info", str(tape))
    assert code == 0 and "exchanges   12" in out and "torn tail" in err
