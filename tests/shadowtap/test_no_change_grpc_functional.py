"""A gRPC deploy that changes nothing passes the gate: three copies of one real grpcio service.

``orders.Orders`` (tests/grpc_fixtures/orders.py, compiled at set-up) runs three times in grpc.aio on loopback:
the primary, a ``secondary`` (the same version again) and the candidate (the same version again).
Each copy answers with the noise real services have: the time of the answer (an int64 epoch and a
``google.protobuf.Timestamp``), a request id in a body field and in its response metadata (a header
and a trailer), a ``map`` whose entries it inserts in a random order, repeated fields, an enum, a
double, and an error whose ``grpc-message`` names its request id. The real proxy (a subprocess, every
method opted in) mirrors real grpcio clients' calls of every kind (unary, server-, client- and
bidirectional streaming) and records a tape; ``shadowtap diff`` on it, with the descriptor set and
schema-less, must find no regression and no unsuppressed signature, and the live differ's ``/diff``
must say the same. The same set-up with a candidate that changed one thing must still fail on it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from tests.grpc_fixtures.orders import SERVICE, Compiled, compile_orders

pytestmark = pytest.mark.slow

LINE_RE = re.compile(r"listening on (\S+) admin (\S+)")
_WAIT_S = 60.0


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    return compile_orders(tmp_path_factory.mktemp("orders"))


def make_servicer(orders: Compiled, planted: bool) -> Any:
    """The service; ``planted``: the candidate v2, whose orders of customer ``c-3`` are SHIPPED."""
    pb2 = orders.pb2

    def order(order_id: str, customer: str, index: int) -> Any:
        labels = {"customer": customer, "channel": "web", "region": "eu-west", "tier": "gold", "index": str(index)}
        keys = list(labels)
        random.shuffle(keys)  # the map's entries in another order each time, as hash maps do
        now_ns = time.time_ns()
        answer = pb2.Order(
            id=order_id,
            state=pb2.SHIPPED if planted and customer == "c-3" else pb2.OPEN,
            lines=[pb2.Line(sku=f"{order_id}-{i}", qty=i + 1, price_cents=250 * (i + 1)) for i in range(index % 3 + 1)],
            created_at_unix_ms=now_ns // 1_000_000,
            request_id=str(uuid.uuid4()),
            tags=[index, index * 7, 3],
            total=sum(250 * (i + 1) * (i + 1) for i in range(index % 3 + 1)) / 100,
        )
        for key in keys:
            answer.labels[key] = labels[key]
        answer.served_at.FromNanoseconds(now_ns)
        return answer

    async def metadata(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.send_initial_metadata((("x-request-id", str(uuid.uuid4())), ("x-trace", uuid.uuid4().hex)))
        context.set_trailing_metadata((("x-served-at", str(time.time_ns())),))

    class OrdersServicer(orders.pb2_grpc.OrdersServicer):  # type: ignore[misc,name-defined]
        async def GetOrder(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if request.id == "missing":
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no order {request.id} (request {uuid.uuid4()})")
            await metadata(context)
            return order(request.id, f"c-{len(request.id) % 3}", len(request.id))

        async def ListOrders(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await metadata(context)
            for index in range(request.limit):
                # Messages at their own pace: how they fall into DATA frames is each server's business.
                await asyncio.sleep(random.random() / 200)
                yield order(f"{request.customer}-o{index}", request.customer, index)

        async def UploadOrders(
            self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            await metadata(context)
            accepted = 0
            async for _ in request_iterator:
                accepted += 1
            summary = pb2.UploadSummary(accepted=accepted, request_id=str(uuid.uuid4()))
            summary.processed_at.GetCurrentTime()
            return summary

        async def Track(
            self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await metadata(context)
            async for request in request_iterator:
                yield order(request.id, "c-3", len(request.id))

    return OrdersServicer()


@pytest.fixture
async def servers(orders: Compiled) -> AsyncIterator[dict[str, int]]:
    """primary, secondary and v1 (the unchanged candidate) and v2 (the candidate with a change)."""
    started: dict[str, tuple[grpc.aio.Server, int]] = {}
    try:
        for name in ("primary", "secondary", "v1", "v2"):
            server = grpc.aio.server()
            orders.pb2_grpc.add_OrdersServicer_to_server(make_servicer(orders, planted=name == "v2"), server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            started[name] = (server, port)
        yield {name: port for name, (_, port) in started.items()}
    finally:
        for server, _ in started.values():
            await server.stop(None)


async def _drive(orders: Compiled, target: str) -> int:
    """Every kind of call through the proxy; the number of calls made."""
    pb2 = orders.pb2
    calls = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = orders.pb2_grpc.OrdersStub(channel)
        for i in range(8):
            answer = await stub.GetOrder(pb2.GetOrderRequest(id=f"o-{i}" * (i % 3 + 1)), timeout=10)
            assert answer.state == pb2.OPEN
            calls += 1
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.GetOrder(pb2.GetOrderRequest(id="missing"), timeout=10)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            calls += 1
            listed = [
                o async for o in stub.ListOrders(pb2.ListOrdersRequest(customer=f"c-{i % 4}", limit=4), timeout=10)
            ]
            assert len(listed) == 4
            calls += 1

            async def uploads(i: int = i) -> AsyncIterator[Any]:
                for k in range(3):
                    yield pb2.Order(id=f"u-{i}-{k}", state=pb2.OPEN)

            summary = await stub.UploadOrders(uploads(), timeout=10)
            assert summary.accepted == 3
            calls += 1

            async def tracked(i: int = i) -> AsyncIterator[Any]:
                for k in range(3):
                    yield pb2.GetOrderRequest(id=f"t-{i}-{k}")

            assert len([o async for o in stub.Track(tracked(), timeout=10)]) == 3
            calls += 1
    return calls


async def _record(
    orders: Compiled, servers: dict[str, int], shadows: tuple[str, ...], tape: Path, live_db: Path
) -> tuple[int, dict[str, Any]]:
    """The proxy with ``shadows``: drive calls through it, read the live differ's ``/diff`` once it
    has judged every call, stop it. Returns (calls, the live report)."""
    shadow_args = [arg for name in shadows for arg in ("--shadow", f"{name}=h2c://127.0.0.1:{servers[name]}")]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        "--primary", f"h2c://127.0.0.1:{servers['primary']}",
        *shadow_args,
        "--route", f"grpc={SERVICE}*", "--tape", str(tape), "--live-db", str(live_db),
        "--set", "live.priority=normal", "--set", f"diff.proto.descriptor={orders.descriptor_set}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), _WAIT_S)).decode()
        match = LINE_RE.search(line)
        assert match, line
        proxy, admin = match.groups()
        calls = await _drive(orders, proxy.removeprefix("http://"))
        async with aiohttp.ClientSession() as client:
            loop = asyncio.get_running_loop()
            end = loop.time() + _WAIT_S
            while True:
                async with client.get(f"{admin}/diff?since=10m") as resp:
                    assert resp.status == 200, await resp.text()
                    live = await resp.json()
                if live["compared"] >= calls or loop.time() > end:
                    break
                await asyncio.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), _WAIT_S)
    assert process.returncode == 0, err.decode()
    return calls, live


def _diff(tape: Path, candidate: str, report: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowtap", "diff", str(tape), "--candidate", candidate, "--json", str(report), *extra],
        capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip


def unsuppressed(report: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {
        (e["endpoint"], s["path"], s["kind"], s["transition"])
        for e in report["endpoints"]
        for s in e["signatures"]
        if not s["suppressed"]
    }


def failing(report: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    ids = set(report["verdict"]["failing_signatures"])
    return {
        (e["endpoint"], s["path"], s["kind"], s["transition"])
        for e in report["endpoints"]
        for s in e["signatures"]
        if s["id"] in ids
    }


@pytest.mark.timeout(240)
@pytest.mark.parametrize("shadows", [("v1", "secondary"), ("v1",)], ids=["with-secondary", "without-secondary"])
async def test_three_copies_of_a_grpc_service_pass_the_gate(
    orders: Compiled, servers: dict[str, int], tmp_path: Path, shadows: tuple[str, ...]
) -> None:
    tape, live_db = tmp_path / "tape", tmp_path / "live.sqlite"
    calls, live = await _record(orders, servers, shadows, tape, live_db)

    assert live["compared"] == calls, live["compared"]
    assert unsuppressed(live) == set() and live["verdict"]["failing_signatures"] == []

    for schema in (("--proto-descriptor", str(orders.descriptor_set)), ()):
        report = tmp_path / "report.json"
        result = await asyncio.to_thread(_diff, tape, "v1", report, *schema)
        data = json.loads(report.read_text()) if report.exists() else {}
        assert result.returncode == 0, (schema, result.stdout, result.stderr, data and unsuppressed(data))
        assert data["compared"] == calls
        assert data["secondary_name"] == ("secondary" if "secondary" in shadows else None)
        assert unsuppressed(data) == set(), schema
        # Each kind of call was compared, and the noise was seen and explained, not missed.
        endpoints = {e["endpoint"] for e in data["endpoints"]}
        assert endpoints == {f"POST {SERVICE}{m}" for m in ("GetOrder", "ListOrders", "UploadOrders", "Track")}
        assert data["suppressions"], data


@pytest.mark.timeout(240)
async def test_a_candidate_with_one_change_still_fails(
    orders: Compiled, servers: dict[str, int], tmp_path: Path
) -> None:
    """v2 ships the orders of one customer as SHIPPED where v1 says OPEN: an enum's value, a change
    of the kind noise rules could hide, among all the noise above. It is the one signature left."""
    tape, live_db = tmp_path / "tape", tmp_path / "live.sqlite"
    calls, live = await _record(orders, servers, ("v2",), tape, live_db)
    planted_by_number = {
        (f"POST {SERVICE}ListOrders", "body[*].2", "value", "int->int"),
        (f"POST {SERVICE}Track", "body[*].2", "value", "int->int"),
    }
    planted_by_name = {(e, "body[*].state", k, "str->str") for e, _, k, _ in planted_by_number}
    # The live differ decodes with the descriptor set the proxy's config names (diff.proto.descriptor).
    assert live["compared"] == calls
    assert unsuppressed(live) == planted_by_name
    report = tmp_path / "report.json"
    gate = ("--fail-on", "severity>=medium")  # a value change is medium; the default gate is high
    result = await asyncio.to_thread(_diff, tape, "v2", report, "--proto-descriptor", str(orders.descriptor_set), *gate)
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(report.read_text())
    assert unsuppressed(data) == failing(data) == planted_by_name
    result = await asyncio.to_thread(_diff, tape, "v2", report, *gate)
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(report.read_text())
    assert unsuppressed(data) == failing(data) == planted_by_number
