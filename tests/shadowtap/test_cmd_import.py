"""`shadowtap import`: every real fixture into a tape, redaction by default, clear one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadowtap.cli import main
from shadowtap.recorder import Failure, Response, TapeReader

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ALL = [
    FIXTURES / "goreplay" / "httpbin.gor",
    FIXTURES / "goreplay" / "httpbin-run2.gor",
    FIXTURES / "goreplay" / "httpbin-cut.gor",
    FIXTURES / "mitmproxy" / "httpbin.mitm",
    FIXTURES / "mitmproxy" / "httpbin.har",
    FIXTURES / "chromium" / "playwright.har",
    FIXTURES / "chromium" / "attach" / "playwright.har",
    FIXTURES / "mitmproxy" / "every-type.mitm",
    FIXTURES / "goreplay" / "keepalive-1.3.gor",
]


def test_all_fixtures_import_with_expected_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tape = tmp_path / "tape"
    assert main(["import", *map(str, ALL), "--out", str(tape), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [i["imported"] for i in report["inputs"]] == [14, 12, 12, 14, 14, 15, 15, 12, 6]
    assert [i["format"] for i in report["inputs"]] == ["gor", "gor", "gor", "mitm", "har", "har", "har", "mitm", "gor"]
    assert [i["records"] for i in report["inputs"]] == [28, 24, 23, 14, 14, 15, 15, 15, 13]
    assert [sum(i["failures"].values()) for i in report["inputs"]] == [0, 0, 0, 0, 0, 4, 4, 4, 0]
    torn = report["inputs"][2]["torn_tail"]
    assert torn == {"offset": 8629, "length_bytes": 371, "reason": "last record ends before its separator"}
    exchanges = list(TapeReader(tape))
    assert len(exchanges) == 66 + 15 + 15 + 12 + 6
    assert {ex.tags["source"] for ex in exchanges} == {"gor", "mitm", "har"}


def test_secrets_are_redacted_unless_asked_not_to(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gor = str(FIXTURES / "goreplay" / "httpbin.gor")
    assert main(["import", gor, "--out", str(tmp_path / "red")]) == 0
    assert main(["import", "--from", "gor", gor, "--out", str(tmp_path / "raw"), "--no-redaction"]) == 0
    out = capsys.readouterr().out
    assert "14 exchanges written" in out and "(not redacted)" in out

    def bearer(tape: Path) -> bytes:
        (delete,) = [ex for ex in TapeReader(tape) if ex.request.method == "DELETE"]
        return delete.request.header(b"authorization") or b""

    raw, redacted = bearer(tmp_path / "raw"), bearer(tmp_path / "red")
    assert raw.startswith(b"Bearer ") and b"redacted" not in raw
    assert b"redacted" in redacted and raw.split(b" ", 1)[1] not in redacted


def test_redaction_rules_from_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("redaction:\n  remove_headers: [X-Session]\n")
    har = str(FIXTURES / "mitmproxy" / "httpbin.har")
    assert main(["import", har, "--out", str(tmp_path / "t"), "--config", str(config)]) == 0
    first = next(iter(TapeReader(tmp_path / "t")))
    assert first.request.header(b"x-session") is None and first.request.header(b"host") == b"127.0.0.1:8001"
    assert isinstance(first.primary, Response)


def test_bad_input_is_one_line_and_no_tape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("hello")
    tape = tmp_path / "tape"
    assert main(["import", str(FIXTURES / "mitmproxy" / "httpbin.har"), str(junk), "--out", str(tape)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(junk) in err and "--from" in err
    assert not tape.exists()


def test_malformed_content_names_file_and_position(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.har"
    bad.write_text('{"log": {"entries": [{"request": {"method": "GET"}}]}}')
    assert main(["import", "--from", "har", str(bad), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert f"{bad} at byte 21, field 'log.entries[0].request.url': missing 'url'" in err


@pytest.mark.parametrize("fmt", ["har", "mitm", "gor"])
def test_a_read_error_is_one_line(tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Reading /proc/self/mem from offset 0 fails with EIO on Linux: a real I/O error on demand.
    unreadable = Path("/proc/self/mem")
    assert unreadable.exists()
    assert main(["import", "--from", fmt, str(unreadable), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/proc/self/mem at byte 0: cannot read: Input/output error" in err


def test_a_browser_har_with_aborted_requests_imports_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Chromium's own HAR (through Playwright): one aborted entry used to fail the whole import.
    har = str(FIXTURES / "chromium" / "playwright.har")
    assert main(["import", har, "--out", str(tmp_path / "text")]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{har} (har): 15 exchanges imported from 15 records; failures: 3 aborted, 1 connect-error")
    assert main(["import", har, "--out", str(tmp_path / "json"), "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)["inputs"]
    assert report["imported"] == 15 and report["failures"] == {"aborted": 3, "connect-error": 1}
    exchanges = list(TapeReader(tmp_path / "json"))
    failed = sorted(ex.primary.kind for ex in exchanges if isinstance(ex.primary, Failure))
    assert len(exchanges) == 15 and failed == ["aborted", "aborted", "aborted", "connect-error"]
