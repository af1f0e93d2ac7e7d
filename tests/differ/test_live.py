"""The live differ's two ends of the tap, without processes: PipeTap writing a real pipe, FrameStream
reading it back; whole frames or nothing, drops counted, a reader that starts mid-frame resyncs."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowtap.differ.live import FrameStream, live_db_paths, open_live_store
from shadowtap.recorder._frames import FrameEncoder
from shadowtap.recorder.model import Exchange, Request, Response, exchange_to_wire
from shadowtap.recorder.tape_process import PipeTap

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _exchange(i: int, body: bytes = b"{}") -> Exchange:
    return Exchange(
        id=f"ex-{i}",
        started_at_ns=1_700_000_000_000_000_000 + i,
        request=Request("GET", f"/items/{i}", (), b""),
        primary=Response(200, "OK", ((b"content-type", b"application/json"),), body),
        shadows={"v2": Response(200, "OK", ((b"content-type", b"application/json"),), body)},
    )


def _parts(exchanges: list[Exchange]) -> list[bytes]:
    encoder = FrameEncoder()
    parts: list[bytes] = []
    for exchange in exchanges:
        encoder.record_parts(exchange_to_wire(exchange), parts, None)
    return parts


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, _F_SETPIPE_SZ, 4096)  # the smallest pipe: one page
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


def _drain(read_fd: int) -> bytes:
    os.set_blocking(read_fd, False)
    out = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_round_trip_in_any_chunking() -> None:
    exchanges = [_exchange(i) for i in range(20)]
    data = b"".join(_parts(exchanges))
    for step in (1, 7, 64, len(data)):
        stream = FrameStream()
        got: list[Exchange] = []
        for start in range(0, len(data), step):
            stream.feed(data[start : start + step])
            got.extend(stream.exchanges())
        assert [e.id for e in got] == [e.id for e in exchanges]
        assert got[3] == exchanges[3]
        assert stream.bad_bytes == 0


def test_a_reader_starting_mid_frame_or_after_garbage_finds_the_next_frame() -> None:
    exchanges = [_exchange(i, b'{"x": "\xf5\x1d sync bytes inside a body"}') for i in range(5)]
    data = b"".join(_parts(exchanges))
    first_end = len(b"".join(_parts(exchanges[:1])))
    stream = FrameStream()
    stream.feed(data[first_end // 2 :])  # starts inside the first frame
    got = [e.id for e in stream.exchanges()]
    assert got == ["ex-1", "ex-2", "ex-3", "ex-4"]
    assert stream.bad_bytes == first_end - first_end // 2
    stream.feed(b"garbage \xf5\x1d\x01\xff\xff\xff\x7f" + b"".join(_parts([_exchange(9)])))
    assert [e.id for e in stream.exchanges()] == ["ex-9"]
    assert stream.bad_bytes > first_end - first_end // 2


def test_pipe_tap_writes_whole_batches_and_counts_drops(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    tap = PipeTap(write_fd)
    small = _parts([_exchange(0)])
    tap(small, 1)
    assert (tap.frames, tap.dropped) == (1, 0)
    # A batch bigger than the pipe: part goes now, the rest waits; later batches are dropped whole
    # until it is through, so the reader never sees a frame cut short.
    big = _parts([_exchange(i, b'"' + b"x" * 3000 + b'"') for i in range(1, 4)])
    tap(big, 3)
    assert tap.pending and (tap.frames, tap.dropped) == (4, 0)
    tap(small, 1)
    assert (tap.frames, tap.dropped) == (4, 1)
    stream = FrameStream()
    got: list[str] = []
    while tap.pending:
        stream.feed(_drain(read_fd))
        got += [e.id for e in stream.exchanges()]
        tap.flush()
    stream.feed(_drain(read_fd))
    got += [e.id for e in stream.exchanges()]
    assert got == ["ex-0", "ex-1", "ex-2", "ex-3"] and stream.bad_bytes == 0
    tap(_parts([_exchange(7)]), 1)
    stream.feed(_drain(read_fd))
    assert [e.id for e in stream.exchanges()] == ["ex-7"]
    assert (tap.frames, tap.dropped) == (5, 1)


def test_pipe_tap_never_blocks_on_a_full_pipe(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    tap = PipeTap(write_fd)
    batch = _parts([_exchange(i) for i in range(10)])
    for _ in range(1000):  # nobody reads: the pipe fills, and every later batch is dropped, at once
        tap(batch, 10)
    assert tap.frames + tap.dropped == 10_000 and tap.dropped > 9_000
    stream = FrameStream()
    stream.feed(_drain(read_fd))
    tap.flush()
    stream.feed(_drain(read_fd))
    assert len(list(stream.exchanges())) == tap.frames and stream.bad_bytes == 0


def test_live_db_paths_and_wal_store(tmp_path: Path) -> None:
    db = str(tmp_path / "live.sqlite")
    assert live_db_paths(db, ["v2"]) == (("v2", db),)
    assert live_db_paths(db, ["v2", "v3"]) == (
        ("v2", str(tmp_path / "live-v2.sqlite")),
        ("v3", str(tmp_path / "live-v3.sqlite")),
    )
    store = open_live_store(db)
    store.close()
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    check.close()
    assert os.stat(db).st_mode & 0o777 == 0o600
