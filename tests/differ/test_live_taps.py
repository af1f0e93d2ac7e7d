"""The live differ reading several taps (``--workers N``: one pipe per worker's tape writer).

Sans-IO: batches of two writers cut anywhere and arriving in any interleaving come out whole, each
tap decoded by its own stream. With a real process: the differ reads two pipes, goes on when one
ends (a worker that exited) and finishes its store when both have.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import msgpack

from shadowtap.differ.aggregate import build_report
from shadowtap.differ.config import DifferConfig
from shadowtap.differ.live import LiveDiffer, LiveOptions, LiveReport
from shadowtap.differ.store import DiffStore
from shadowtap.recorder.model import Exchange, Response
from tests.differ.test_live import _exchange, _parts


def _differing(i: int) -> Exchange:
    """An exchange whose shadow answers ``price`` as a string where the primary has an int."""
    base = _exchange(i, f'{{"id": {i}, "price": {10 * i}}}'.encode())
    changed = Response(
        200, "OK", ((b"content-type", b"application/json"),), f'{{"id": {i}, "price": "{10 * i}"}}'.encode()
    )
    return Exchange(id=f"w{i}", started_at_ns=base.started_at_ns, request=base.request, primary=base.primary,
                    shadows={"v2": changed})  # fmt: skip


def _compared_differing(db: Path) -> tuple[int, int]:
    store = DiffStore(db, create=False)
    try:
        report = build_report(store, DifferConfig())
    finally:
        store.close()
    return report.compared, report.differing


def test_interleaved_halves_of_two_taps_come_out_whole(tmp_path: Path) -> None:
    first = b"".join(_parts([_differing(i) for i in range(10)]))
    second = b"".join(_parts([_differing(i) for i in range(10, 20)]))
    live = LiveDiffer(LiveOptions(databases=(("v2", str(tmp_path / "live.sqlite")),)), taps=2)
    step = 37  # cuts every frame somewhere inside
    for start in range(0, max(len(first), len(second)), step):
        live.take(first[start : start + step], 0)
        live.take(second[start : start + step], 1)
    live.commit()
    live.finish()
    assert live.report.exchanges == live.report.compared == 20
    assert live.report.bad_bytes == 0 and live.report.undecodable == 0
    assert _compared_differing(tmp_path / "live.sqlite") == (20, 20)


def test_the_differ_process_goes_on_when_one_tap_ends_and_finishes_when_all_have(tmp_path: Path) -> None:
    db = tmp_path / "live.sqlite"
    pipes = [os.pipe(), os.pipe()]
    reads = [r for r, _ in pipes]
    process = subprocess.Popen(
        [sys.executable, "-m", "shadowtap.differ.live", *(a for r in reads for a in ("--tap-fd", str(r)))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        pass_fds=reads,
    )
    try:
        for r in reads:
            os.close(r)
        assert process.stdin is not None and process.stdout is not None
        options = pickle.dumps(LiveOptions(databases=(("v2", str(db)),), priority="normal"))
        process.stdin.write(struct.pack("!I", len(options)) + options)
        process.stdin.flush()
        (_, first), (_, second) = pipes
        os.write(first, b"".join(_parts([_differing(i) for i in range(5)])))
        os.close(first)  # one worker gone: the differ goes on reading the other
        os.write(second, b"".join(_parts([_differing(i) for i in range(5, 12)])))
        os.close(second)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    reports = [LiveReport(*fields) for fields in msgpack.Unpacker(io.BytesIO(out), raw=False)]
    assert reports[-1].exchanges == reports[-1].compared == 12 and reports[-1].bad_bytes == 0
    assert _compared_differing(db) == (12, 12)
