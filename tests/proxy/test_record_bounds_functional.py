"""A stuck tape writer costs bounded memory: a real proxy, real 1 MiB POSTs, a stopped writer.

The writer process is stopped with SIGSTOP (a hung disk looks the same from the proxy: nothing is
read off the pipe), or the writer thread is held inside its disk write. Every primary request must
still succeed, the bytes held between the data path and the disk must stay under the configured
bound, the records beyond it must be dropped and counted by reason, and recording must carry on
once the writer does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig
from shadowtap.recorder import TapeReader
from shadowtap.recorder import writer as writer_module
from shadowtap.recorder.tape_process import ProcessTapeWriter

MiB = 1024 * 1024
BODY = os.urandom(MiB)
#: Enough 1 MiB records to overrun the default byte bound (64 MiB) by half again.
POSTS = 100


@pytest.fixture
async def primary() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        body = await request.read()  # read and let go: the test process holds no copies
        return web.Response(text=f"got {len(body)}")

    app = web.Application(client_max_size=4 * MiB)
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def start_proxy(primary: str, tape: Path, writer: str) -> ProxyApp:
    # Bounds below the defaults: the configured ones must be the ones kept.
    bound = 16 * 1024 * 1024
    record = {"tape": str(tape), "writer": writer, "queue_bytes": bound, "max_pending_bytes": bound}
    config = {"listen": "127.0.0.1:0", "primary": primary, "record": record}
    app = ProxyApp(ProxyConfig.from_mapping(config))
    await app.start()
    return app


async def post_all(app: ProxyApp, first: int, count: int) -> list[int]:
    statuses: list[int] = []
    async with aiohttp.ClientSession() as client:
        for i in range(first, first + count):
            async with client.post(f"{app.listen_url}/upload/{i}", data=BODY) as resp:
                await resp.read()
                statuses.append(resp.status)
    return statuses


async def admin_get(app: ProxyApp, path: str) -> Any:
    async with aiohttp.ClientSession() as client, client.get(f"{app.admin_url}{path}") as resp:
        assert resp.status == 200
        return await resp.json() if path == "/stats" else await resp.text()


async def wait_until(condition: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_stopped_writer_process_costs_bounded_bytes_and_every_request_succeeds(
    primary: str, tmp_path: Path
) -> None:
    app = await start_proxy(primary, tmp_path / "tape", "process")
    tape = app.tape
    assert isinstance(tape, ProcessTapeWriter)
    pid = tape.pid
    assert pid is not None
    bound = app.config.record.queue_bytes
    child = tape._child  # the pipe's transport buffer is where the bytes piled up
    assert child is not None and child.process.stdin is not None
    transport = child.process.stdin.transport
    os.kill(pid, signal.SIGSTOP)
    try:
        statuses = await post_all(app, 0, POSTS)
        assert statuses == [200] * POSTS
        stats = tape.stats
        # What the parent holds for the child: packed records waiting, the transport's buffer.
        assert transport.get_write_buffer_size() <= bound
        assert 0 < stats.queue_bytes <= bound
        assert stats.dropped_queue_bytes_full > 0
        assert stats.queue_depth + stats.dropped_queue_bytes_full == POSTS
        record = app.record
        assert record is not None and record.stats.dropped_by_writer == stats.dropped_queue_bytes_full
        metrics = await admin_get(app, "/metrics")
        dropped = stats.dropped_queue_bytes_full
        families = [f for f in text_string_to_metric_families(metrics) if f.name == "shadowtap_tape_dropped"]
        (family,) = families
        by_reason = {s.labels["reason"]: s.value for s in family.samples}
        assert by_reason == {"queue_full": 0, "queue_bytes_full": dropped, "closed": 0, "write_error": 0,
                             "encode_error": 0}  # fmt: skip
        (gauge,) = [f for f in text_string_to_metric_families(metrics) if f.name == "shadowtap_tape_queue_bytes"]
        assert gauge.samples[0].value == stats.queue_bytes
        doc = await admin_get(app, "/stats")
        assert doc["tape"]["dropped_queue_bytes_full"] == dropped
        assert doc["tape"]["queue_bytes"] == stats.queue_bytes
    finally:
        os.kill(pid, signal.SIGCONT)
    # Resumed, the child writes what it held, and recording carries on.
    await wait_until(lambda: tape.stats.queue_depth == 0)
    assert await post_all(app, POSTS, 5) == [200] * 5
    await wait_until(lambda: tape.stats.written == POSTS - dropped + 5)
    await app.shutdown()
    targets = {ex.request.target for ex in TapeReader(tmp_path / "tape")}
    assert len(targets) == POSTS - dropped + 5
    assert {f"/upload/{i}" for i in range(POSTS, POSTS + 5)} <= targets


async def test_a_blocked_writer_thread_costs_bounded_bytes_and_every_request_succeeds(
    primary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    entered = threading.Event()
    write = writer_module.SegmentSink.write

    def hung_disk(self: Any, parts: list[bytes]) -> None:
        entered.set()
        release.wait(60)
        write(self, parts)

    monkeypatch.setattr(writer_module.SegmentSink, "write", hung_disk)
    app = await start_proxy(primary, tmp_path / "tape", "thread")
    tape = app.tape
    assert tape is not None
    bound = app.config.record.queue_bytes
    try:
        statuses = await post_all(app, 0, 1)  # the thread takes this one and hangs in its write
        await wait_until(entered.is_set)
        statuses += await post_all(app, 1, POSTS - 1)
        assert statuses == [200] * POSTS
        stats = tape.stats
        assert 0 < stats.queue_bytes <= bound
        assert stats.dropped_queue_bytes_full > 0
        assert stats.queue_depth + stats.dropped_queue_bytes_full == POSTS - 1
        dropped = stats.dropped_queue_bytes_full
        metrics = await admin_get(app, "/metrics")
        assert f'shadowtap_tape_dropped_total{{reason="queue_bytes_full"}} {float(dropped)}' in metrics
    finally:
        release.set()
    await wait_until(lambda: tape.stats.queue_depth == 0)
    assert await post_all(app, POSTS, 5) == [200] * 5
    await app.shutdown()
    assert tape.stats.written == POSTS - dropped + 5
    assert len(list(TapeReader(tmp_path / "tape"))) == POSTS - dropped + 5
