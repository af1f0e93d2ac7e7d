"""`shadowtap tape` as a real process: output piped away early, corrupt input, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shadowtap.recorder import SyncTapeWriter, TapeOptions
from tests.recorder.tape_samples import make_exchange

REPO = Path(__file__).resolve().parents[2]


def shadowtap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowtap", "tape", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cat_of_a_corrupt_tape_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with SyncTapeWriter(tmp_path, TapeOptions(redaction=None, compression="none")) as writer:
        writer.write_many(make_exchange(i) for i in range(5))
    (segment,) = tmp_path.glob("*.stape")
    data = bytearray(segment.read_bytes())
    data[200] ^= 1
    segment.write_bytes(bytes(data))
    result = shadowtap("cat", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("shadowtap tape: error: ") and str(segment) in result.stderr


def test_cat_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    with SyncTapeWriter(tmp_path, TapeOptions(redaction=None, fsync="none")) as writer:
        writer.write_many(make_exchange(i, body=b"z" * 2000) for i in range(3000))
    cat = subprocess.Popen(
        [sys.executable, "-m", "shadowtap", "tape", "cat", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert cat.stdout is not None and cat.stderr is not None
    first = cat.stdout.readline()
    cat.stdout.close()
    _, err = cat.communicate(timeout=60)
    assert first.startswith(b'{"id": "ex-000000"')
    assert b"Traceback" not in err
    assert cat.returncode == 0


def test_missing_tape_is_one_line(tmp_path: Path) -> None:
    result = shadowtap("info", str(tmp_path / "absent"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no such tape" in result.stderr


def test_cat_stops_reading_once_its_reader_is_gone(tmp_path: Path) -> None:
    # A closed stdout no longer ends a command (it must not change a verdict), so cat stops itself:
    # it never reaches the damage at the end of this tape, which it would report with exit 2.
    with SyncTapeWriter(tmp_path, TapeOptions(redaction=None, fsync="none")) as writer:
        writer.write_many(make_exchange(i, body=b"z" * 2000) for i in range(3000))
    (segment,) = tmp_path.glob("*.stape")
    with segment.open("r+b") as f:
        f.seek(-10_000, 2)  # a frame before the last: corruption, not a torn tail
        f.write(b"\xff" * 50)
    assert shadowtap("cat", str(tmp_path)).returncode == 2
    cat = subprocess.Popen(
        [sys.executable, "-m", "shadowtap", "tape", "cat", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert cat.stdout is not None
    assert cat.stdout.readline().startswith(b'{"id": "ex-000000"')
    cat.stdout.close()
    _, err = cat.communicate(timeout=60)
    assert cat.returncode == 0, err
    assert err == b""
