"""Progress of long reads (`diff`, `export`, `import`): a bar on a terminal for large inputs, else
nothing; the estimate comes from the sizes on disk and reaches the whole at the end."""

from __future__ import annotations

import http.server
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shadowtap.commands._progress import MIN_TOTAL_BYTES, ReadProgress, file_sizes
from shadowtap.recorder import Exchange, Request, Response, SyncTapeWriter, TapeOptions, TapeReader

BODY = b'{"items": "' + b"x" * 4000 + b'"}'


def exchange(i: int) -> Exchange:
    response = Response(200, "OK", ((b"Content-Type", b"application/json"),), BODY)
    return Exchange(
        id=f"ex-{i:06d}",
        started_at_ns=1_700_000_000_000_000_000 + i * 1_000_000,
        request=Request("GET", f"/items/{i}", ((b"Host", b"api.local"),), b""),
        primary=response,
        shadows={"v2": response},
    )


def write_tape(directory: Path, count: int, segment_bytes: int) -> Path:
    options = TapeOptions(redaction=None, fsync="none", max_segment_bytes=segment_bytes, compression="none")
    with SyncTapeWriter(directory, options) as writer:
        writer.write_many(exchange(i) for i in range(count))
    return directory


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_estimate_follows_the_segments_and_ends_whole(tmp_path: Path) -> None:
    tape = write_tape(tmp_path / "tape", 600, 256 * 1024)
    reader = TapeReader(tape)
    sizes = file_sizes(reader.segments)
    assert len(sizes) >= 5
    stream = FakeTerminal()
    seen: list[int] = []
    with ReadProgress("diff", sizes, stream=stream, min_total_bytes=0) as progress:
        assert progress.shown
        for _ in progress.wrap(reader, lambda: len(reader.report.segments) - 1):
            seen.append(progress.done_bytes())
    assert len(seen) == 600
    assert seen == sorted(seen) and seen[0] > 0 and seen[-1] < progress.total_bytes == sum(sizes)
    # At each segment's first exchange the estimate is at least every earlier segment, whole.
    assert max(seen) >= sum(sizes[:-1])
    assert "diff" in stream.getvalue() and "ETA" in stream.getvalue()


def test_quiet_off_a_terminal_for_small_inputs_or_when_asked(tmp_path: Path) -> None:
    tape = write_tape(tmp_path / "tape", 50, 1024 * 1024)
    sizes = file_sizes(TapeReader(tape).segments)
    for stream, minimum, enabled in (
        (io.StringIO(), 0, True),  # not a terminal
        (FakeTerminal(), MIN_TOTAL_BYTES, True),  # small
        (FakeTerminal(), 0, False),  # --no-progress
    ):
        reader = TapeReader(tape)
        with ReadProgress("diff", sizes, stream=stream, min_total_bytes=minimum, enabled=enabled) as progress:
            assert [e.id for e in progress.wrap(reader, lambda: 0)] == [f"ex-{i:06d}" for i in range(50)]
        assert not progress.shown and stream.getvalue() == ""


def test_file_sizes_of_a_missing_file_is_zero(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"abc")
    assert file_sizes([tmp_path / "a", tmp_path / "missing"]) == [3, 0]


@pytest.fixture(scope="module")
def large_tape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Over MIN_TOTAL_BYTES: each exchange holds two 4 KiB bodies.
    tape = write_tape(tmp_path_factory.mktemp("large") / "tape", 1_400, 4 * 1024 * 1024)
    assert sum(file_sizes(TapeReader(tape).segments)) > MIN_TOTAL_BYTES
    return tape


def run_with_stderr_on_a_terminal(args: list[str], terminal: bool) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (or a pipe); stdout is always a pipe."""
    command = [sys.executable, "-m", "shadowtap", *args]
    if not terminal:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        return done.returncode, done.stdout, done.stderr
    controller, device = os.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=device, timeout=120, check=False)
    finally:
        os.close(device)
        reader.join(timeout=30)
        os.close(controller)
    return proc.returncode, proc.stdout.decode(), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("command", ["diff", "export"])
def test_a_large_read_shows_a_bar_only_on_a_terminal(large_tape: Path, tmp_path: Path, command: str) -> None:
    args = (
        ["diff", str(large_tape), "--candidate", "v2", "--min-samples", "1"]
        if command == "diff"
        else ["export", str(large_tape), "--out", str(tmp_path / "out.har")]
    )
    code, out, err = run_with_stderr_on_a_terminal(args, terminal=True)
    assert code == 0, err
    assert command in err and "MiB" in err and "ETA" in err  # the bar, drawn on stderr
    assert "ETA" not in out and "\x1b" not in out  # stdout is the command's own
    code, piped_out, piped_err = run_with_stderr_on_a_terminal(args, terminal=False)
    assert code == 0 and "ETA" not in piped_err and "\x1b" not in piped_err
    assert piped_out.splitlines()[-1] == out.splitlines()[-1]
    code, _, err = run_with_stderr_on_a_terminal([*args, "--no-progress"], terminal=True)
    assert code == 0 and "ETA" not in err


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_replay_on_a_terminal_counts_requests_of_the_plan(tmp_path: Path) -> None:
    tape = write_tape(tmp_path / "tape", 40, 4 * 1024 * 1024)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    try:
        target = f"http://127.0.0.1:{server.server_address[1]}"
        code, out, err = run_with_stderr_on_a_terminal(["replay", str(tape), "--target", target, "--speed", "0"], True)
    finally:
        server.shutdown()
        serving.join()
        server.server_close()
    assert code == 0, err
    assert "40/40 sent  ETA 0:00:00" in err  # --speed 0: the plan's size still sizes the bar
    assert "requests 40" in out and "\x1b" not in out
