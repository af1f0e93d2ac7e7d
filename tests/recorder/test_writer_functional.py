"""The writer against real processes and a real refusing disk: SIGKILL mid-write, and EFBIG.

A child process writes a tape; the parent kills it with SIGKILL in the middle of a write, then
reads the tape: every exchange the child acknowledged (fsync "every") is there, and the partial
frame is reported as the torn tail; the same holds for the asyncio writer's ``written`` count.
Another child writes under RLIMIT_FSIZE, so the kernel refuses writes past a size (EFBIG): the
writer counts, backs off, keeps going, and never raises. On a small tmpfs (when the tests run as
root) the disk fills up: the writer reuses its segment rather than leaving an empty file per retry.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shadowtap.recorder import TapeOptions, TapeReader
from shadowtap.recorder._frames import SEGMENT_HEADER_SIZE
from shadowtap.recorder.tape_process import ProcessTapeWriter
from tests.recorder.tape_samples import make_exchange

REPO = Path(__file__).resolve().parents[2]

KILL_CHILD = textwrap.dedent(
    """
    import sys
    from shadowtap.recorder import SyncTapeWriter, TapeOptions
    from tests.recorder.tape_samples import make_exchange

    directory, acked = sys.argv[1], int(sys.argv[2])
    with SyncTapeWriter(directory, TapeOptions(fsync="every", redaction=None, compression="none")) as writer:
        for i in range(acked):
            writer.write(make_exchange(i, body=b"a" * 1000))
            print(f"ack ex-{i:06d}", flush=True)
        print("big", flush=True)
        # Big enough that the write takes milliseconds: the parent kills the child inside it.
        writer.write(make_exchange(acked, body=b"b" * (32 * 1024 * 1024)))
        print("wrote big", flush=True)
    """
)


def kill_mid_write(directory: Path, acked: int) -> tuple[list[str], Path]:
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, str(directory), str(acked)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged: list[str] = []
    try:
        for line in child.stdout:
            if line.startswith("ack "):
                acknowledged.append(line.split()[1])
            elif line.strip() == "big":
                break
        (segment,) = directory.glob("*.stape")
        acked_size = segment.stat().st_size
        deadline = time.monotonic() + 30
        while segment.stat().st_size == acked_size and time.monotonic() < deadline:
            pass  # spin: the kill must land while the big frame is half written
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return acknowledged, segment


def test_sigkill_mid_write_keeps_every_acknowledged_exchange_and_reports_the_torn_tail(tmp_path: Path) -> None:
    torn_seen = 0
    for attempt in range(3):
        directory = tmp_path / f"attempt{attempt}"
        acknowledged, segment = kill_mid_write(directory, acked=200)
        assert len(acknowledged) == 200
        reader = TapeReader(directory)
        got = [e.id for e in reader]
        assert got[:200] == acknowledged
        assert len(got) in (200, 201)
        if len(got) == 200:
            ((path, torn),) = reader.report.torn_tails
            assert path == str(segment)
            assert torn.offset + torn.length == segment.stat().st_size
            assert torn.offset > SEGMENT_HEADER_SIZE
            assert "incomplete" in torn.reason
            torn_seen += 1
            break
    assert torn_seen == 1, "the kill never landed inside the write in 3 attempts"


ASYNC_KILL_CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from shadowtap.recorder import TapeOptions, TapeWriter
    from tests.recorder.tape_samples import make_exchange

    async def main():
        options = TapeOptions(fsync="every", redaction=None, block_bytes=8 * 1024, compression="none")
        async with TapeWriter(sys.argv[1], options) as writer:
            reported, deadline = 0, time.monotonic() + 20
            for i in range(100_000):  # bounded: the parent kills us long before
                writer.submit(make_exchange(i, body=b"d" * 500))
                if i % 50 == 49:
                    await asyncio.sleep(0.001)
                    if writer.stats.written != reported:
                        reported = writer.stats.written
                        print(f"written {reported}", flush=True)
                if time.monotonic() > deadline:
                    break

    asyncio.run(main())
    """
)


def test_sigkill_of_the_async_writer_keeps_everything_counted_as_written(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", ASYNC_KILL_CHILD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    written = 0
    try:
        for line in child.stdout:
            written = int(line.split()[1])
            if written >= 1000:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert written >= 1000
    got = [e.id for e in TapeReader(tmp_path)]
    assert len(got) >= written
    assert got == [f"ex-{i:06d}" for i in range(len(got))]


EFBIG_CHILD = textwrap.dedent(
    """
    import asyncio, json, logging, resource, signal, sys
    from shadowtap.recorder import TapeOptions, TapeWriter
    from tests.recorder.tape_samples import make_exchange

    # Past this size the kernel refuses writes with EFBIG (instead of killing us with SIGXFSZ).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    logging.basicConfig(level=logging.ERROR)

    async def main():
        writer = TapeWriter(sys.argv[1], TapeOptions(
            redaction=None, block_bytes=16 * 1024, fsync="none", retry_after_error_s=float(sys.argv[2]),
            compression="none",
        ))
        await writer.start()
        submitted = 0
        for i in range(400):
            submitted += writer.submit(make_exchange(i, body=b"c" * 1000))
            if i % 20 == 0:
                await asyncio.sleep(0.005)
        await writer.close()
        s = writer.stats
        print(json.dumps({"submitted": submitted, "written": s.written, "write_errors": s.write_errors,
                          "dropped": s.dropped_queue_full, "segments": s.segments, "last_error": s.last_error}))

    asyncio.run(main())
    """
)


def run_efbig_child(directory: Path, retry_after_error_s: float) -> tuple[dict[str, Any], str]:
    result = subprocess.run(
        [sys.executable, "-c", EFBIG_CHILD, str(directory), str(retry_after_error_s)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    stats: dict[str, Any] = json.loads(result.stdout)
    return stats, result.stderr


def test_disk_refusing_writes_is_counted_logged_once_and_never_raised(tmp_path: Path) -> None:
    stats, stderr = run_efbig_child(tmp_path, retry_after_error_s=0.001)
    assert stats["submitted"] == 400
    assert stats["write_errors"] > 0
    assert stats["written"] > 0
    assert stats["written"] + stats["write_errors"] + stats["dropped"] == 400
    assert stats["segments"] > 1
    assert stderr.count("tape write failed: File too large") == 1
    reader = TapeReader(tmp_path)
    got = [e.id for e in reader]
    # The refused block was cut off its segment (which was then closed: a file too large is not
    # a full disk): the tape holds what was counted written, and no segment ends torn.
    assert len(got) == stats["written"]
    assert got == sorted(set(got))
    assert reader.report.torn_tails == []
    assert all(p.stat().st_size > SEGMENT_HEADER_SIZE for p in tmp_path.glob("*.stape"))


def test_after_a_refusal_the_disk_is_left_alone_for_a_while(tmp_path: Path) -> None:
    stats, stderr = run_efbig_child(tmp_path, retry_after_error_s=60.0)
    assert stats["segments"] == 1
    assert stats["written"] > 0 and stats["write_errors"] > 0
    assert stats["written"] + stats["write_errors"] == 400
    assert "retrying 60 s after it" in stats["last_error"]
    assert stderr.count("not written: the disk refused a write") == 1
    assert [p.name for p in tmp_path.glob("*.stape")] == [p.name for p in tmp_path.glob("seg-*-000001.stape")]


# --- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem with room for 128 KiB: a tmpfs mounted for the test (needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128k,mode=0700", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_leaves_no_empty_segments_and_no_torn_tail(full_disk: Path) -> None:
    """The proxy's writer (the process) on a disk that fills up and stays full for two seconds,
    retrying every 50 ms: the segment it was writing is reused (cut back to its last whole block),
    never replaced by a new, empty file per retry; what it counted as written is all readable."""
    tape = full_disk / "tape"
    options = TapeOptions(
        redaction=None, fsync="interval", block_bytes=8 * 1024, retry_after_error_s=0.05, compression="none"
    )
    submitted = 0
    async with ProcessTapeWriter(tape, options) as writer:
        deadline = time.monotonic() + 2.0
        i = 0
        while time.monotonic() < deadline:
            submitted += writer.submit(make_exchange(i, body=b"f" * 3000))
            i += 1
            await asyncio.sleep(0.003)
    stats = writer.stats
    assert stats.write_errors > 0 and stats.written > 0
    assert stats.written + stats.write_errors == submitted
    segments = sorted(tape.glob("*.stape"))
    assert len(segments) == stats.segments == 1, [(p.name, p.stat().st_size) for p in segments]
    assert all(p.stat().st_size > SEGMENT_HEADER_SIZE for p in segments)
    reader = TapeReader(tape)
    got = [e.id for e in reader]
    assert reader.report.torn_tails == []
    assert got == [f"ex-{n:06d}" for n in range(len(got))] and len(got) == stats.written
