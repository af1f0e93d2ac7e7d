"""ProcessTapeWriter: the tape writer in a real child process (real pipes, real signals)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shadowtap.recorder import RedactionRules, TapeOptions, TapeReader, TapeWriteError, TapeWriter
from shadowtap.recorder.model import exchange_to_wire
from shadowtap.recorder.tape_process import ProcessTapeWriter
from tests.recorder.tape_samples import make_exchange

PLAIN = TapeOptions(redaction=None, fsync="none", compression="none")
ROOT = Path(__file__).resolve().parents[2]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.stape"))


async def wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def accounted(writer: ProcessTapeWriter) -> int:
    s = writer.stats
    return s.written + s.dropped_queue_full + s.dropped_closed + s.encode_errors + s.write_errors + s.queue_depth


async def test_the_child_writes_every_record_sent_and_reports_it(tmp_path: Path) -> None:
    writer = ProcessTapeWriter(tmp_path, TapeOptions(redaction=None, fsync="interval", fsync_interval_s=0.01))
    await writer.start()
    assert writer.pid is not None and writer.pid != os.getpid()
    exchanges = [make_exchange(i) for i in range(500)]
    assert writer.submit_records([exchange_to_wire(e) for e in exchanges[:400]]) == 400
    assert all(writer.submit(e) for e in exchanges[400:])
    await wait_for(lambda: writer.stats.written == 500)  # reported while running, not only at close
    await writer.close()
    stats = writer.stats
    assert (stats.written, stats.dropped_queue_full, stats.write_errors, stats.queue_depth) == (500, 0, 0, 0)
    assert stats.segments == len(segment_files(tmp_path)) == 1
    assert stats.bytes_written == sum(s.stat().st_size for s in segment_files(tmp_path))
    assert list(TapeReader(tmp_path)) == exchanges
    pid_after_close = writer.pid
    assert pid_after_close is None
    assert not writer.submit(make_exchange(999))
    assert writer.stats.dropped_closed == 1


@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_the_tape_is_the_same_as_the_thread_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    # Redaction on, with one key for both: the child redacts exactly as the thread does.
    rules = RedactionRules()
    monkeypatch.setenv(rules.key_env, "k" * 32)
    options = TapeOptions(compression=compression, fsync="none")  # type: ignore[arg-type]
    exchanges = [make_exchange(i, body=os.urandom(300)) for i in range(300)]
    for e in exchanges[::3]:
        object.__setattr__(e.request, "headers", e.request.headers + ((b"Authorization", b"Bearer secret"),))
    async with TapeWriter(tmp_path / "thread", options) as thread_writer:
        assert thread_writer.submit_records([exchange_to_wire(e) for e in exchanges]) == 300
    async with ProcessTapeWriter(tmp_path / "process", options) as process_writer:
        assert process_writer.submit_records([exchange_to_wire(e) for e in exchanges]) == 300
    assert process_writer.stats.written == 300
    (thread_segment,) = segment_files(tmp_path / "thread")
    (process_segment,) = segment_files(tmp_path / "process")
    if compression == "none":
        assert process_segment.read_bytes() == thread_segment.read_bytes()
        assert b"Bearer secret" not in process_segment.read_bytes()
    # (zstd blocks end where each writer's batches did, which is timing: compare what they hold.)
    replayed = list(TapeReader(tmp_path / "process"))
    assert replayed == list(TapeReader(tmp_path / "thread"))
    assert [e.id for e in replayed] == [e.id for e in exchanges]
    assert all(b"secret" not in v for e in replayed for _, v in e.request.headers)


async def test_a_stopped_child_costs_bounded_records_never_a_blocked_loop(tmp_path: Path) -> None:
    writer = ProcessTapeWriter(tmp_path, TapeOptions(redaction=None, queue_size=50, fsync="none"))
    await writer.start()
    assert writer.pid is not None
    os.kill(writer.pid, signal.SIGSTOP)
    try:
        body = os.urandom(4000)  # 80 of these overflow the 64 KiB pipe: the transport holds the rest
        started = time.perf_counter()
        taken = [writer.submit(make_exchange(i, body=body)) for i in range(80)]
        elapsed_s = time.perf_counter() - started
        await asyncio.sleep(0.05)  # the loop keeps turning while the child is stopped
        assert taken == [True] * 50 + [False] * 30
        assert (writer.stats.queue_depth, writer.stats.dropped_queue_full) == (50, 30)
        assert elapsed_s < 5.0  # it returned at all: a blocking write would hang here for ever
    finally:
        os.kill(writer.pid, signal.SIGCONT)
    await writer.close()
    assert (writer.stats.written, writer.stats.queue_depth) == (50, 0)
    assert [e.id for e in TapeReader(tmp_path)] == [f"ex-{i:06d}" for i in range(50)]


async def test_a_stopped_child_costs_bounded_bytes_too(tmp_path: Path) -> None:
    bound = 256 * 1024
    writer = ProcessTapeWriter(tmp_path, TapeOptions(redaction=None, queue_bytes=bound, fsync="none"))
    await writer.start()
    assert writer.pid is not None
    child = writer._child
    assert child is not None and child.process.stdin is not None
    os.kill(writer.pid, signal.SIGSTOP)
    try:
        body = os.urandom(30_000)  # a primary and a shadow answer: ~60 KiB packed, 4 fit in the bound
        taken = [writer.submit(make_exchange(i, body=body)) for i in range(40)]
        writer._send()
        await asyncio.sleep(0.05)
        stats = writer.stats
        assert taken == [True] * 4 + [False] * 36
        assert (stats.queue_depth, stats.dropped_queue_bytes_full, stats.dropped_queue_full) == (4, 36, 0)
        assert 4 * 60_000 < stats.queue_bytes <= bound
        # What the parent really holds: the pipe took 64 KiB, the transport buffers the rest.
        assert child.process.stdin.transport.get_write_buffer_size() <= bound
    finally:
        os.kill(writer.pid, signal.SIGCONT)
    await wait_for(lambda: writer.stats.queue_bytes == 0)  # the child's reports catch up
    assert writer.submit(make_exchange(40, body=body))  # room again
    await writer.close()
    assert (writer.stats.written, writer.stats.queue_depth, writer.stats.queue_bytes) == (5, 0, 0)
    assert [e.id for e in TapeReader(tmp_path)] == [f"ex-{i:06d}" for i in (0, 1, 2, 3, 40)]


async def test_a_killed_child_is_counted_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = ProcessTapeWriter(tmp_path, PLAIN)
    await writer.start()
    first = writer.pid
    assert first is not None
    for i in range(20):
        writer.submit(make_exchange(i))
    await wait_for(lambda: writer.stats.written == 20)
    os.kill(first, signal.SIGKILL)
    for i in range(20, 25):  # to the dying child or to none: not known to be written
        writer.submit(make_exchange(i))
    await wait_for(lambda: writer.pid not in (None, first))
    assert writer.stats.write_errors == 5
    assert "exited with code -9" in writer.stats.last_error or "not running" in writer.stats.last_error
    assert "exited with code -9" in caplog.text
    for i in range(25, 35):
        assert writer.submit(make_exchange(i))
    await writer.close()
    assert (writer.stats.written, writer.stats.write_errors, accounted(writer)) == (30, 5, 35)
    assert writer.stats.segments == len(segment_files(tmp_path)) == 2
    ids = [e.id for e in TapeReader(tmp_path)]
    assert ids == [f"ex-{i:06d}" for i in [*range(20), *range(25, 35)]]


async def test_the_child_ignores_interrupt_and_terminate_signals(tmp_path: Path) -> None:
    # Ctrl-C or a TERM to the process group reaches the child too; the parent decides when it ends.
    writer = ProcessTapeWriter(tmp_path, PLAIN)
    await writer.start()
    pid = writer.pid
    assert pid is not None
    writer.submit(make_exchange(0))
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    await asyncio.sleep(0.2)
    assert writer.pid == pid
    writer.submit(make_exchange(1))
    await writer.close()
    assert (writer.stats.written, writer.stats.write_errors) == (2, 0)


async def test_a_record_msgpack_cannot_hold_is_counted_in_the_parent(tmp_path: Path) -> None:
    writer = ProcessTapeWriter(tmp_path, PLAIN)
    await writer.start()
    bad = exchange_to_wire(make_exchange(1))
    bad.append({object()})
    records = [exchange_to_wire(make_exchange(0)), bad, exchange_to_wire(make_exchange(2))]
    assert writer.submit_records(records) == 3
    await writer.close()
    assert (writer.stats.written, writer.stats.encode_errors) == (2, 1)
    assert "ex-000001" in writer.stats.last_error
    assert [e.id for e in TapeReader(tmp_path)] == ["ex-000000", "ex-000002"]


async def test_a_record_the_child_cannot_encode_is_counted_by_the_child(tmp_path: Path) -> None:
    # Packs fine, but is not a record: the child's encoder refuses it, counts it and goes on.
    writer = ProcessTapeWriter(tmp_path, TapeOptions(fsync="none"))
    await writer.start()
    records = [exchange_to_wire(make_exchange(0)), ["not", "a", "record"], exchange_to_wire(make_exchange(2))]
    assert writer.submit_records(records) == 3
    await writer.close()
    assert (writer.stats.written, writer.stats.encode_errors, writer.stats.write_errors) == (2, 1, 0)
    assert [e.id for e in TapeReader(tmp_path)] == ["ex-000000", "ex-000002"]


async def test_start_on_an_unusable_directory_raises_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    writer = ProcessTapeWriter(tmp_path / "file" / "tape")
    with pytest.raises(TapeWriteError) as info:
        await writer.start()
    assert str(tmp_path / "file" / "tape") in str(info.value)
    assert writer.pid is None
    await writer.close()
    assert not writer.submit(make_exchange(1))


async def test_records_sent_survive_the_parents_death(tmp_path: Path) -> None:
    # The proxy is killed before it can close the writer: the child still sees its input end,
    # writes everything it was sent, and closes the segment.
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        from shadowtap.recorder import TapeOptions
        from shadowtap.recorder.tape_process import ProcessTapeWriter
        from tests.recorder.tape_samples import make_exchange

        async def main() -> None:
            writer = ProcessTapeWriter(sys.argv[1], TapeOptions(redaction=None))
            await writer.start()
            for i in range(300):
                writer.submit(make_exchange(i, body=os.urandom(500)))
            await asyncio.sleep(0.05)  # the batch goes to the pipe within 5 ms
            stdin = writer._child.process.stdin
            while stdin.transport.get_write_buffer_size():
                await asyncio.sleep(0.001)
            print(writer.pid, flush=True)
            os.kill(os.getpid(), 9)

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    child_pid = int(result.stdout)
    deadline = time.monotonic() + 10
    while _running(child_pid):
        assert time.monotonic() < deadline, "the orphaned tape writer did not finish"
        await asyncio.sleep(0.02)
    assert [e.id for e in TapeReader(tmp_path)] == [f"ex-{i:06d}" for i in range(300)]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # an orphan's zombie waits for a reaper that may never come


async def test_without_a_directory_it_redacts_and_taps_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    monkeypatch.setenv("SHADOWTAP_REDACTION_KEY", "test-key")
    monkeypatch.chdir(tmp_path)
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    secret = b"Bearer no-tape-secret-99"
    exchanges = [make_exchange(i) for i in range(50)]
    exchanges = [
        dataclasses.replace(e, request=dataclasses.replace(e.request, headers=((b"Authorization", secret),)))
        for e in exchanges
    ]
    writer = ProcessTapeWriter(
        None, TapeOptions(redaction=RedactionRules(key_env="SHADOWTAP_REDACTION_KEY")), tap_fd=write_fd
    )
    try:
        await writer.start()
        assert all(writer.submit(e) for e in exchanges)
        await writer.close()
        os.close(write_fd)
        copied = b""
        while chunk := os.read(read_fd, 1 << 16):
            copied += chunk
    finally:
        os.close(read_fd)
    stats = writer.stats
    assert (stats.written, stats.write_errors, stats.segments, stats.bytes_written) == (50, 0, 0, 0)
    assert writer.tap_stats.frames == 50 and writer.tap_stats.dropped == 0
    assert copied and b"Authorization" in copied and secret not in copied
    assert list(tmp_path.iterdir()) == []
