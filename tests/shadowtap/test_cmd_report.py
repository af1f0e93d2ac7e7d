"""`shadowtap report`: its own flags, driven through the CLI entry point (the store end to end is in
test_cmd_diff_functional.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowtap.cli import main


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        ("yesterday-ish", "not an ISO 8601 time or epoch seconds"),
        ("inf", "not a finite number"),
        ("nan", "not a finite number"),
        ("1e300", "out of range"),
        # Finite, but beyond the store's 64-bit nanoseconds: SQLite would refuse it with a traceback.
        ("1e20", "out of range"),
        ("9999-12-31T23:59:59", "out of range"),
    ],
)
@pytest.mark.parametrize("flag", ["--since", "--until"])
def test_a_bad_time_is_one_line_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, when: str, reason: str
) -> None:
    code = main(["report", "--db", str(tmp_path / "missing.sqlite"), f"{flag}={when}"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"field '{flag}'" in err and reason in err and repr(when) in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_window_that_ends_before_it_starts_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "missing.sqlite")
    code = main(["report", "--db", db, "--since", "2024-05-01T11:00", "--until", "1714557600"])  # 10:00 UTC
    err = capsys.readouterr().err
    assert code == 2 and "field '--until'" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["diff", "report"])
def test_a_negative_min_samples_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    # A negative floor passed silently: a gate that cannot be missed looks like one that was met.
    where = [str(tmp_path / "tape")] if command == "diff" else ["--db", str(tmp_path / "missing.sqlite")]
    with pytest.raises(SystemExit) as exited:
        main([command, *where, "--min-samples", "-1"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "argument --min-samples: must be 0 or more, got '-1'" in err and err.count("\n") == 1
