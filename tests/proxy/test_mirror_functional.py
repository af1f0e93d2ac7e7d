"""The mirror stage against real shadow servers on 127.0.0.1: decisions, safety, failures, bounds."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import web

from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig
from shadowtap.proxy.flags import RuntimeFlags
from shadowtap.proxy.metrics import ProxyMetrics
from shadowtap.proxy.mirror import MirrorStage
from shadowtap.proxy.stages import ProxiedExchange
from shadowtap.recorder import TapeReader
from shadowtap.recorder.model import Failure, FailureKind, Outcome, RequestDelta, Response, Timing, exchange_from_wire
from shadowtap.recorder.redact import RedactionRules, Redactor, resolve_redaction_key
from shadowtap.wire.client import Dialer
from tests.proxy.conftest import hang_up

_ids = itertools.count()


def exchange(
    method: str = "GET", target: str = "/items?x=1", headers: Any = (), body: bytes | None = b""
) -> ProxiedExchange:
    return ProxiedExchange(
        id=f"ex-{next(_ids)}",
        connection_id="c1",
        client_addr="127.0.0.1:5555",
        started_at_ns=time.time_ns(),
        started_mono_ns=time.monotonic_ns(),
        method=method,
        target=target,
        http_version="1.1",
        request_headers=tuple(headers),
        authority="front.example",
        request_body=body,
        request_body_size=0 if body is None else len(body),
    )


def as_delta(wire: list[Any] | None) -> RequestDelta:
    """A copy's delta as a tape reader decodes it."""
    assert wire is not None
    record = ["x", 0, 0, ["GET", "/"], None, None, None, "", "", "", None, None, {"v": wire}]
    return exchange_from_wire(msgpack.unpackb(msgpack.packb(record), use_list=False)).request_deltas["v"]


class Outcomes:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], tuple[Outcome, Timing]] = {}
        self.deltas: dict[tuple[str, str], list[Any] | None] = {}
        self.changed = asyncio.Event()

    def __call__(
        self, exchange: ProxiedExchange, shadow: str, outcome: Outcome, timing: Timing, delta: list[Any] | None
    ) -> None:
        self.items[exchange.id, shadow] = (outcome, timing)
        self.deltas[exchange.id, shadow] = delta
        self.changed.set()

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.items) < count:
                self.changed.clear()
                await self.changed.wait()


async def start_app(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


class RawServer:
    """A TCP server that misbehaves by ``on_connect``; ``close`` also closes its accepted sockets."""

    def __init__(self, on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
        self._on_connect = on_connect
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self._on_connect(reader, writer)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.url

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()


@pytest.fixture
async def echo_shadow() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(
            {"method": request.method, "target": request.raw_path, "headers": list(request.raw_headers),
             "body": await request.read()}
        )  # fmt: skip
        return web.Response(status=201, body=b"shadow says hi", headers={"X-Shadow": "yes"})

    runner, url = await start_app(handler)
    yield url, seen
    await runner.cleanup()


def stage_for(
    shadows: list[dict[str, Any]],
    mirror: dict[str, Any] | None = None,
    record: dict[str, Any] | None = None,
    dial: Dialer | None = None,
) -> tuple[MirrorStage, RuntimeFlags, ProxyMetrics, Outcomes]:
    config = ProxyConfig.from_mapping(
        {"primary": "http://127.0.0.1:1", "shadows": shadows, "mirror": mirror or {}, "record": record or {}}
    )
    flags = RuntimeFlags(config)
    metrics = ProxyMetrics()
    outcomes = Outcomes()
    stage = MirrorStage(config.shadows, config.mirror, flags, metrics, outcomes, config.record.redaction, dial=dial)
    return stage, flags, metrics, outcomes


async def test_mirrored_copy_is_marked_stripped_and_recorded(echo_shadow: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = echo_shadow
    monkeypatch.setenv("SHADOW_API_KEY", "shadow-key")
    stage, _, metrics, outcomes = stage_for(
        [{"name": "v2", "url": url, "credentials": {"X-Api-Key": "SHADOW_API_KEY"}, "host": "v2.internal"}]
    )
    await stage.start()
    ex = exchange(
        headers=[
            (b"Authorization", b"Bearer real"), (b"Cookie", b"sid=1"), (b"X-Api-Key", b"real-key"),
            (b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1"), (b"Keep-Alive", b"timeout=5"),
            (b"X-Dup", b"a"), (b"x-dup", b"b"), (b"Host", b"front.example"), (b"Expect", b"100-continue"),
        ]
    )  # fmt: skip
    stage.request_complete(ex)
    assert ex.decisions == {"v2": "mirrored"}
    await outcomes.wait_for(1)
    await stage.aclose(5.0)

    (got,) = seen
    names = [k.lower() for k, _ in got["headers"]]
    headers = {k.lower(): v for k, v in got["headers"]}
    assert got["method"] == "GET" and got["target"] == "/items?x=1"
    assert headers[b"x-shadowtap-shadow"] == b"1"
    assert headers[b"x-shadowtap-correlation-id"] == ex.id.encode()
    assert headers[b"x-api-key"] == b"shadow-key"
    assert headers[b"host"] == b"v2.internal"
    for gone in (b"authorization", b"cookie", b"x-hop", b"keep-alive", b"expect"):
        assert gone not in names
    assert [(k, v) for k, v in got["headers"] if k.lower() == b"x-dup"] == [(b"X-Dup", b"a"), (b"x-dup", b"b")]
    assert b"user-agent" not in names and b"accept-encoding" not in names

    outcome, timing = outcomes.items[ex.id, "v2"]
    assert isinstance(outcome, Response) and outcome.status == 201 and outcome.body == b"shadow says hi"
    assert outcome.header(b"X-Shadow") == b"yes"
    assert timing.sent_ns is not None and timing.done_ns is not None and timing.done_ns >= timing.sent_ns
    assert metrics.mirror_outcomes[("v2", "mirrored")] == 1 and metrics.mirror_outcomes[("v2", "ok")] == 1
    assert metrics.shadow_latency["v2"].count == 1
    # What the copy lost and gained against the request the primary got, for the tape: hop-by-hop
    # fields are no change (the primary lacks them too), the client's X-Api-Key was replaced by the
    # shadow's (a secret: not recorded), and each got its own Host.
    assert as_delta(outcomes.deltas[ex.id, "v2"]) == RequestDelta(
        removed=(b"Authorization", b"Cookie", b"Expect"),
        added=((b"X-Shadowtap-Shadow", b"1"), (b"X-Shadowtap-Correlation-Id", ex.id.encode())),
        replaced=((b"X-Api-Key", b"redacted:credential"),),
        authority=("front.example", "v2.internal"),
    )


POST_OPT_IN: dict[str, Any] = {"routes": [{"path": "/**", "mirror_methods": ["GET", "POST"]}]}
JSON = (b"Content-Type", b"application/json")


async def mirror_all(stage: MirrorStage, outcomes: Outcomes, *exchanges: ProxiedExchange) -> None:
    await stage.start()
    for ex in exchanges:
        stage.request_complete(ex)
        assert set(ex.decisions.values()) == {"mirrored"}, ex.decisions
    await outcomes.wait_for(len(exchanges) * len(stage.shadows))
    await stage.aclose(5.0)


def content_length(seen: dict[str, Any]) -> int:
    return int(next(v for k, v in seen["headers"] if k.lower() == b"content-length"))


async def test_copies_lose_secrets_by_the_tape_rules_hashed_under_the_tape_key(echo_shadow: Any) -> None:
    url, seen = echo_shadow
    stage, _, _, outcomes = stage_for([{"name": "v2", "url": url}], POST_OPT_IN)
    body = json.dumps({"user": "al", "password": "pw-1", "creds": [{"Token": "tk-1"}], "tokenizer": "wp"}).encode()
    form = b"user=al&passwd=pw-2&password_hint_shown=1"
    multipart = (
        b'--b1\r\nContent-Disposition: form-data; name="client_secret"\r\n\r\ncs-1\r\n'
        b'--b1\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--b1--\r\n'
    )
    await mirror_all(
        stage,
        outcomes,
        exchange("POST", "/login?api_key=ak-1&q=1", [JSON, (b"X-Auth-Token", b"xa-1")], body),
        exchange("POST", "/form", [(b"Content-Type", b"application/x-www-form-urlencoded")], form),
        exchange("POST", "/upload", [(b"Content-Type", b"multipart/form-data; boundary=b1")], multipart),
    )
    # Equal secrets hash equal, under the tape's key: an echo of one matches the tape's hash of it.
    redactor = Redactor(RedactionRules(), resolve_redaction_key(RedactionRules()))

    def hashed(secret: bytes) -> str:
        return redactor.hash_bytes(secret).decode()

    by_path = {s["target"].split("?")[0]: s for s in seen}
    login = by_path["/login"]
    assert login["target"] == f"/login?api_key={hashed(b'ak-1')}&q=1"
    assert b"x-auth-token" not in [k.lower() for k, _ in login["headers"]]
    assert json.loads(login["body"]) == {
        "user": "al",
        "password": hashed(b"pw-1"),
        "creds": [{"Token": hashed(b"tk-1")}],
        "tokenizer": "wp",
    }
    assert by_path["/form"]["body"] == f"user=al&passwd={hashed(b'pw-2')}&password_hint_shown=1".encode()
    assert by_path["/upload"]["body"] == multipart.replace(b"cs-1", redactor.hash_bytes(b"cs-1"))
    for got in seen:
        assert content_length(got) == len(got["body"])
        for secret in (b"ak-1", b"xa-1", b"pw-1", b"tk-1", b"pw-2", b"cs-1"):
            assert secret not in got["target"].encode() + got["body"] + b"".join(v for _, v in got["headers"])


async def test_shadow_credentials_are_swapped_into_fields_and_configured_rules_apply(
    echo_shadow: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = echo_shadow
    monkeypatch.setenv("V2_API_KEY", "v2 key/1")
    monkeypatch.setenv("V2_TOKEN", "v2-token")
    swapping = {"query:api_key": "V2_API_KEY", "json:session.token": "V2_TOKEN", "form:otp": "V2_TOKEN"}
    stage, _, _, outcomes = stage_for(
        [
            {"name": "v2", "url": url, "credentials": swapping},
            {"name": "v3", "url": url, "redact_secrets": False},
        ],
        POST_OPT_IN,
        {"redaction": {"json_fields": {"card.number": "remove"}, "query_params": ["tenant_key"]}},
    )
    body = json.dumps({"session": {"token": "client-token"}, "card": {"number": "4111", "exp": "12/30"}}).encode()
    await mirror_all(
        stage,
        outcomes,
        exchange("POST", "/pay?api_key=client-key&tenant_key=tk", [JSON, (b"Authorization", b"Bearer c")], body),
    )
    # One exchange, two shadows at one URL: told apart by what each got.
    v2 = next(s for s in seen if b"client" not in s["body"])
    v3 = next(s for s in seen if s is not v2)
    tenant = Redactor(RedactionRules(), resolve_redaction_key(RedactionRules())).hash_bytes(b"tk").decode()
    assert v2["target"] == f"/pay?api_key=v2+key%2F1&tenant_key={tenant}"
    assert json.loads(v2["body"]) == {"session": {"token": "v2-token"}, "card": {"exp": "12/30"}}
    assert b"authorization" not in [k.lower() for k, _ in v2["headers"]]
    # A shadow that keeps secrets gets the request as it came (hop-by-hop and strip_headers aside).
    assert v3["target"] == "/pay?api_key=client-key&tenant_key=tk" and v3["body"] == body
    assert b"authorization" not in [k.lower() for k, _ in v3["headers"]]  # strip_headers still holds
    # The deltas name the rewritten parameters: a hash the tape shares is kept, a swapped-in secret not.
    ((ex_id, _),) = {key for key in outcomes.deltas if key[1] == "v2"}
    v2_delta, v3_delta = as_delta(outcomes.deltas[ex_id, "v2"]), as_delta(outcomes.deltas[ex_id, "v3"])
    assert v2_delta.query == (("api_key", "redacted:credential"), ("tenant_key", tenant))
    assert v2_delta.removed == v3_delta.removed == (b"Authorization",) and v3_delta.query == ()


async def test_unsafe_methods_only_by_route_opt_in(echo_shadow: Any) -> None:
    url, seen = echo_shadow
    stage, _, _, outcomes = stage_for(
        [{"name": "v2", "url": url}],
        {"routes": [{"path": "/orders/**", "methods": ["POST"], "mirror_methods": ["POST"]}]},
    )
    await stage.start()
    blocked = [exchange("POST", "/items", body=b"{}"), exchange("DELETE", "/orders/1"), exchange("PUT", "/orders/1")]
    for ex in blocked:
        stage.request_complete(ex)
        assert ex.decisions == {"v2": FailureKind.METHOD_NOT_ALLOWED}
    upgraded = exchange()
    upgraded.upgraded = True
    stage.request_complete(upgraded)
    assert upgraded.decisions == {"v2": FailureKind.METHOD_NOT_ALLOWED}
    allowed = exchange("POST", "/orders/7", body=b'{"qty": 2}')
    stage.request_complete(allowed)
    assert allowed.decisions == {"v2": "mirrored"}
    await outcomes.wait_for(1)
    await stage.aclose(5.0)
    assert [(s["method"], s["target"], s["body"]) for s in seen] == [("POST", "/orders/7", b'{"qty": 2}')]


async def test_body_cap_sampling_kill_switch_and_route_off(echo_shadow: Any) -> None:
    url, _ = echo_shadow
    stage, flags, metrics, _ = stage_for(
        [{"name": "v2", "url": url, "max_body_bytes": 4, "sample_percent": 0}],
        {"routes": [{"path": "/private/**", "mirror": False}], "sample_key": "header:X-User"},
    )
    await stage.start()
    opt = exchange("OPTIONS", "/x", body=b"12345")
    stage.request_complete(opt)
    assert opt.decisions == {"v2": FailureKind.BODY_TOO_LARGE}
    unknown_body = exchange(body=None)
    stage.request_complete(unknown_body)
    assert unknown_body.decisions == {"v2": FailureKind.BODY_TOO_LARGE}
    sampled_out = exchange()
    stage.request_complete(sampled_out)
    assert sampled_out.decisions == {"v2": FailureKind.SAMPLED_OUT}
    flags.set_shadow_percent(0, 100.0)
    private = exchange(target="/private/keys")
    stage.request_complete(private)
    assert private.decisions == {"v2": FailureKind.DISABLED}
    flags.mirroring = False
    killed = exchange()
    stage.request_complete(killed)
    assert killed.decisions == {"v2": FailureKind.DISABLED}
    flags.mirroring = True
    flags.set_shadow_mirroring(0, False)
    stage.request_complete(killed)
    assert killed.decisions == {"v2": FailureKind.DISABLED}
    await stage.aclose(5.0)
    assert metrics.mirror_outcomes.get(("v2", "mirrored"), 0) == 0


async def test_rate_cap_and_queue_bound() -> None:
    release = asyncio.Event()

    async def stuck(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    runner, url = await start_app(stuck)
    stage, _, metrics, outcomes = stage_for(
        [
            {"name": "capped", "url": url, "rate_per_s": 0.001, "burst": 3},
            {"name": "narrow", "url": url, "concurrency": 1, "queue_size": 2},
        ]
    )
    await stage.start()
    decisions = []
    for _ in range(10):
        ex = exchange()
        stage.request_complete(ex)
        decisions.append(ex.decisions)
        await asyncio.sleep(0.01)  # lets the narrow shadow's one worker take its first copy
    assert [d["capped"] for d in decisions].count("mirrored") == 3
    assert [d["capped"] for d in decisions].count(FailureKind.RATE_LIMITED) == 7
    # One in flight plus two queued; the rest are refused at once, never waited for.
    assert [d["narrow"] for d in decisions].count("mirrored") == 3
    assert metrics.mirror_outcomes[("narrow", FailureKind.QUEUE_FULL)] == 7
    release.set()
    await outcomes.wait_for(6)
    await stage.aclose(5.0)
    await runner.cleanup()


async def _black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"SPEAK FRIEND\r\n\x00\x01\x02\r\n\r\n")
    await writer.drain()
    writer.close()


async def _reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        (_black_hole, FailureKind.TIMEOUT),
        (_garbage, FailureKind.BAD_RESPONSE),
        (_reset, FailureKind.RESET),
        (None, FailureKind.CONNECT_ERROR),
    ],
)
async def test_failures_are_classified_and_open_the_breaker(behaviour: Any, kind: str) -> None:
    server = None if behaviour is None else RawServer(behaviour)
    url = _closed_port_url() if server is None else await server.start()
    stage, _, metrics, outcomes = stage_for(
        [{"name": "bad", "url": url, "total_timeout_s": 0.3, "connect_timeout_s": 0.3,
          "breaker": {"consecutive_failures": 2, "open_s": 60}}]
    )  # fmt: skip
    await stage.start()
    first = [exchange(), exchange()]
    for ex in first:
        stage.request_complete(ex)
    await outcomes.wait_for(2)
    for ex in first:
        outcome, _ = outcomes.items[ex.id, "bad"]
        assert isinstance(outcome, Failure) and outcome.kind == kind, outcome
    after = exchange()
    stage.request_complete(after)
    assert after.decisions == {"bad": FailureKind.BREAKER_OPEN}
    assert metrics.mirror_outcomes[("bad", kind)] == 2
    assert stage.stats()["bad"]["breaker"] == "open"
    await stage.aclose(1.0)
    if server is not None:
        await server.close()


async def test_response_cap_marks_truncation() -> None:
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 10_000)

    runner, url = await start_app(big)
    stage, _, _, outcomes = stage_for([{"name": "v2", "url": url, "max_response_bytes": 100}])
    await stage.start()
    ex = exchange()
    stage.request_complete(ex)
    await outcomes.wait_for(1)
    outcome, _ = outcomes.items[ex.id, "v2"]
    assert isinstance(outcome, Response) and outcome.body == b"x" * 100 and outcome.truncated_from == 10_000
    await stage.aclose(1.0)
    await runner.cleanup()


async def test_shutdown_cancels_what_it_cannot_finish() -> None:
    server = RawServer(_black_hole)
    url = await server.start()
    stage, _, _, outcomes = stage_for([{"name": "bh", "url": url, "concurrency": 1, "total_timeout_s": 9}])
    await stage.start()
    pending = [exchange() for _ in range(3)]
    for ex in pending:
        stage.request_complete(ex)
    started = time.monotonic()
    await stage.aclose(0.2)
    assert time.monotonic() - started < 5
    assert {outcomes.items[ex.id, "bh"][0] for ex in pending} == {Failure(FailureKind.CANCELLED, "proxy shutting down")}
    late = exchange()
    stage.request_complete(late)
    assert late.decisions == {"bh": FailureKind.DISABLED}
    await server.close()


async def test_idle_connection_closed_by_shadow_is_retried_once() -> None:
    requests_seen = 0

    async def close_when_idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests_seen
        await reader.readuntil(b"\r\n\r\n")
        requests_seen += 1
        # Keep-alive response, then the server drops the idle connection (as many servers do).
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    server = RawServer(close_when_idle)
    url = await server.start()
    stage, _, metrics, outcomes = stage_for([{"name": "v2", "url": url}])
    await stage.start()
    first, second = exchange(), exchange()
    stage.request_complete(first)
    await outcomes.wait_for(1)
    await asyncio.sleep(0.2)  # the pooled connection is closed by now
    stage.request_complete(second)
    await outcomes.wait_for(2)
    await stage.aclose(1.0)
    await server.close()
    assert [outcomes.items[ex.id, "v2"][0] for ex in (first, second)] == [
        Response(200, "OK", ((b"Content-Length", b"2"),), b"ok")
    ] * 2
    assert requests_seen == 2 and metrics.mirror_outcomes["v2", "ok"] == 2


async def test_head_copies_end_at_the_head_and_keep_the_connection() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"0123456789")

    runner, url = await start_app(handler)
    stage, _, _, outcomes = stage_for([{"name": "v2", "url": url, "concurrency": 1}])
    await stage.start()
    head, get = exchange("HEAD", "/h"), exchange("GET", "/g")
    stage.request_complete(head)
    stage.request_complete(get)
    await outcomes.wait_for(2, timeout_s=5.0)
    await stage.aclose(1.0)
    await runner.cleanup()
    head_outcome, get_outcome = outcomes.items[head.id, "v2"][0], outcomes.items[get.id, "v2"][0]
    assert isinstance(head_outcome, Response) and head_outcome.body == b""
    assert head_outcome.header(b"Content-Length") == b"10"
    assert isinstance(get_outcome, Response) and get_outcome.body == b"0123456789"


async def test_copies_queued_when_the_breaker_opens_are_dropped_not_sent() -> None:
    connections = 0

    async def counting_black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _black_hole(reader, writer)

    server = RawServer(counting_black_hole)
    url = await server.start()
    stage, _, metrics, outcomes = stage_for(
        [{"name": "bh", "url": url, "concurrency": 1, "queue_size": 100, "total_timeout_s": 0.4,
          "breaker": {"consecutive_failures": 1, "open_s": 60}}]
    )  # fmt: skip
    await stage.start()
    first = exchange()
    stage.request_complete(first)
    await asyncio.sleep(0.15)
    # Queued behind the black-holed copy, young enough not to be stale when it times out; more than
    # one turn's worth of drops, so the rest must be ended on later turns.
    queued = [exchange() for _ in range(70)]
    for ex in queued:
        stage.request_complete(ex)
    assert {ex.decisions["bh"] for ex in queued} == {"mirrored"}
    await outcomes.wait_for(71)
    assert outcomes.items[first.id, "bh"][0].kind == FailureKind.TIMEOUT  # type: ignore[union-attr]
    assert {outcomes.items[ex.id, "bh"][0] for ex in queued} == {
        Failure(FailureKind.BREAKER_OPEN, "breaker opened while queued")
    }
    assert metrics.mirror_outcomes[("bh", FailureKind.BREAKER_OPEN)] == 70
    assert connections == 1  # nothing more was sent to the failing shadow
    assert stage.stats()["bh"]["queue_depth"] == 0
    await stage.aclose(1.0)
    await server.close()


class _PipelineShadow:
    """A raw HTTP/1.1 shadow that answers requests in order and notes, per connection, the targets it
    got and the most requests that arrived in one read: what a pipelining client looks like from the
    other side. With ``close_after`` it resets a connection on the request after that many; with
    ``last_answer`` it answers that many requests per connection, the last with ``Connection:
    close``, then closes the connection cleanly, leaving any request behind it unanswered."""

    def __init__(self, close_after: int | None = None, last_answer: int | None = None) -> None:
        self.per_connection: list[list[bytes]] = []
        self.max_in_one_read = 0
        self._close_after = close_after
        self._last_answer = last_answer
        self.server = RawServer(self._serve)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        targets: list[bytes] = []
        self.per_connection.append(targets)
        buffer = b""
        while True:
            data = await reader.read(65536)
            if not data:
                return
            buffer += data
            heads = buffer.split(b"\r\n\r\n")
            buffer = heads.pop()
            self.max_in_one_read = max(self.max_in_one_read, len(heads))
            for head in heads:
                target = head.split(b" ", 2)[1]
                targets.append(target)
                if self._close_after is not None and len(targets) > self._close_after:
                    writer.transport.abort()  # the rest of the pipeline is never answered
                    return
                if self._last_answer is not None and len(targets) == self._last_answer:
                    targets.extend(later.split(b" ", 2)[1] for later in heads[heads.index(head) + 1 :])
                    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                    writer.write(close % (len(target), target))
                    writer.close()
                    await writer.wait_closed()
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(target), target))


async def _warm(stage: MirrorStage, outcomes: Outcomes, count: int) -> None:
    """Copies one at a time, so the shadow's pool holds an idle connection to pipeline onto."""
    for i in range(count):
        stage.request_complete(exchange(target=f"/warm/{i}"))
        await outcomes.wait_for(len(outcomes.items) + 1)


async def test_copies_sent_together_share_a_connection_and_each_gets_its_own_answer() -> None:
    shadow = _PipelineShadow()
    url = await shadow.server.start()
    stage, _, metrics, outcomes = stage_for([{"name": "v2", "url": url, "concurrency": 16, "pipeline_depth": 4}])
    await stage.start()
    # Cold: no idle connection yet, so each copy dials its own (up to the concurrency cap).
    warm_up = [exchange(target=f"/warm/{i}") for i in range(12)]
    for ex in warm_up:
        stage.request_complete(ex)
    await outcomes.wait_for(12)
    assert len(shadow.per_connection) == 12 and shadow.max_in_one_read == 1
    before = [len(targets) for targets in shadow.per_connection]
    copies = [exchange(target=f"/item/{i}") for i in range(12)]
    for ex in copies:  # one loop turn: sent by the same pump, pipelined four to a pooled connection
        stage.request_complete(ex)
    await outcomes.wait_for(24)
    await stage.aclose(1.0)
    await shadow.server.close()
    for i, ex in enumerate(copies):
        outcome = outcomes.items[ex.id, "v2"][0]
        assert isinstance(outcome, Response) and outcome.body == f"/item/{i}".encode(), (i, outcome)
    assert metrics.mirror_outcomes["v2", "ok"] == 24
    added = [len(targets) - n for targets, n in zip(shadow.per_connection, before, strict=True)]
    assert len(shadow.per_connection) == 12 and sorted(n for n in added if n) == [4, 4, 4]
    assert shadow.max_in_one_read == 4  # each connection's four requests left in one write


async def test_depth_one_sends_one_copy_per_connection_at_a_time() -> None:
    shadow = _PipelineShadow()
    url = await shadow.server.start()
    stage, _, _, outcomes = stage_for([{"name": "v2", "url": url, "concurrency": 4, "pipeline_depth": 1}])
    await stage.start()
    copies = [exchange(target=f"/one/{i}") for i in range(8)]
    for ex in copies:
        stage.request_complete(ex)
    await outcomes.wait_for(8)
    await stage.aclose(1.0)
    await shadow.server.close()
    assert all(isinstance(outcomes.items[ex.id, "v2"][0], Response) for ex in copies)
    assert shadow.max_in_one_read == 1 and len(shadow.per_connection) == 4


async def _three_pipelined(
    shadow: _PipelineShadow, prefix: str
) -> tuple[MirrorStage, ProxyMetrics, Outcomes, list[ProxiedExchange]]:
    """One pooled connection warmed by a first copy, then three copies sent in one loop turn, so all
    three are pipelined onto it; returns once the four have outcomes and a wrongful resend (or a
    reuse of a connection the shadow closed) has had time to show."""
    url = await shadow.server.start()
    stage, _, metrics, outcomes = stage_for(
        [{"name": "v2", "url": url, "concurrency": 3, "pipeline_depth": 3, "breaker": {"consecutive_failures": 100}}]
    )
    await stage.start()
    await _warm(stage, outcomes, 1)
    copies = [exchange(target=f"/{prefix}/{i}") for i in range(3)]
    for ex in copies:
        stage.request_complete(ex)
    await outcomes.wait_for(4)
    await asyncio.sleep(0.1)
    return stage, metrics, outcomes, copies


async def test_a_pipeline_cut_short_fails_the_copies_behind_without_resending_them() -> None:
    shadow = _PipelineShadow(close_after=2)  # answers two requests per connection, then resets
    stage, metrics, outcomes, copies = await _three_pipelined(shadow, "cut")
    await stage.aclose(1.0)
    await shadow.server.close()
    kinds = [outcomes.items[ex.id, "v2"][0] for ex in copies]
    assert isinstance(kinds[0], Response) and kinds[0].body == b"/cut/0"
    assert [getattr(k, "kind", None) for k in kinds[1:]] == [FailureKind.RESET, FailureKind.RESET]
    # Each request reached the shadow once, on the one connection: a copy behind others may have
    # been processed, so none is sent again.
    assert shadow.per_connection == [[b"/warm/0", b"/cut/0", b"/cut/1"]]
    assert metrics.mirror_outcomes["v2", FailureKind.RESET] == 2


async def test_a_connection_close_answer_mid_pipeline_fails_the_copies_behind_and_retires_the_connection() -> None:
    shadow = _PipelineShadow(last_answer=2)  # the second answer says Connection: close, then FIN
    stage, metrics, outcomes, copies = await _three_pipelined(shadow, "last")
    kinds = [outcomes.items[ex.id, "v2"][0] for ex in copies]
    assert isinstance(kinds[0], Response) and kinds[0].body == b"/last/0"
    assert [getattr(k, "kind", None) for k in kinds[1:]] == [FailureKind.RESET, FailureKind.RESET]
    assert "closed the connection after an earlier answer" in getattr(kinds[1], "message", "")
    assert shadow.per_connection == [[b"/warm/0", b"/last/0", b"/last/1", b"/last/2"]]
    # The closed connection is not pooled: the next copy dials a fresh one and is answered.
    after = exchange(target="/after")
    stage.request_complete(after)
    await outcomes.wait_for(5)
    await stage.aclose(1.0)
    await shadow.server.close()
    answer = outcomes.items[after.id, "v2"][0]
    assert isinstance(answer, Response) and answer.body == b"/after"
    assert len(shadow.per_connection) == 2 and shadow.per_connection[1] == [b"/after"]
    assert metrics.mirror_outcomes["v2", "ok"] == 3 and metrics.mirror_outcomes["v2", FailureKind.RESET] == 2


async def test_a_head_copy_is_never_pipelined() -> None:
    shadow = _PipelineShadow()
    url = await shadow.server.start()
    stage, _, _, outcomes = stage_for([{"name": "v2", "url": url, "concurrency": 4, "pipeline_depth": 4}])
    await stage.start()
    warm = [exchange(target=f"/warm/{i}") for i in range(2)]
    for ex in warm:  # two idle connections in the pool
        stage.request_complete(ex)
    await outcomes.wait_for(2)
    copies = [exchange("GET", "/a"), exchange("HEAD", "/b"), exchange("GET", "/c"), exchange("GET", "/d")]
    for ex in copies:
        stage.request_complete(ex)
    await outcomes.wait_for(6)
    await stage.aclose(1.0)
    await shadow.server.close()
    assert all(isinstance(outcomes.items[ex.id, "v2"][0], Response) for ex in copies)
    # GET /a takes one pooled connection, HEAD /b the other alone, and /c, /d queue behind /a.
    assert sorted(targets[1:] for targets in shadow.per_connection) == [[b"/a", b"/c", b"/d"], [b"/b"]]


async def test_a_shadow_lost_before_the_copy_is_sent_fails_the_copy_at_once(dials_resume_after_loss: Dialer) -> None:
    # The race the data path also meets: the shadow accepts and hangs up before the task that
    # dialled it resumes. The dial resumes only after the loss, so the race is taken every time;
    # the copy must fail then, not wait out its 10 s timeout on a dead connection.
    server = RawServer(hang_up)
    url = await server.start()
    stage, _, metrics, outcomes = stage_for(
        [{"name": "gone", "url": url, "total_timeout_s": 10}], dial=dials_resume_after_loss
    )
    await stage.start()
    ex = exchange()
    stage.request_complete(ex)
    await outcomes.wait_for(1, timeout_s=8)
    outcome, timing = outcomes.items[ex.id, "gone"]
    assert outcome == Failure(FailureKind.RESET, "shadow closed the connection before the copy was sent")
    assert timing.first_byte_ns is None
    assert metrics.mirror_outcomes[("gone", FailureKind.RESET)] == 1
    assert stage.stats()["gone"]["in_flight"] == 0
    await stage.aclose(1.0)
    await server.close()


async def test_a_copy_gets_the_forwarding_fields_the_primary_got_and_the_tape_its_delta(tmp_path: Path) -> None:
    """Through the assembled proxy: the primary and the shadow see the same X-Forwarded-* and Via
    values (computed once for both), and the tape says what else the copy had or lacked."""
    primary_seen: list[list[tuple[bytes, bytes]]] = []
    shadow_seen: list[list[tuple[bytes, bytes]]] = []

    def recorder(seen: list[list[tuple[bytes, bytes]]]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            seen.append(list(request.raw_headers))
            return web.Response(text="ok")

        return handler

    primary_runner, primary_url = await start_app(recorder(primary_seen))
    shadow_runner, shadow_url = await start_app(recorder(shadow_seen))
    app = ProxyApp(
        ProxyConfig.from_mapping(
            {
                "listen": "127.0.0.1:0", "admin": {"listen": None}, "primary": primary_url,
                "forward": {"via": "edge"}, "shadows": {"v2": shadow_url},
                "record": {"tape": str(tmp_path / "tape"), "redaction": False},
            }
        )
    )  # fmt: skip
    await app.start()
    try:
        assert app.listen_url is not None
        host = app.listen_url.removeprefix("http://")
        reader, writer = await asyncio.open_connection(*host.rsplit(":", 1))
        writer.write(
            b"GET /items?x=1 HTTP/1.1\r\nHost: front.example\r\nX-Forwarded-For: 203.0.113.9\r\n"
            b"Authorization: Bearer client\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
        for _ in range(200):
            if shadow_seen:
                break
            await asyncio.sleep(0.01)
    finally:
        await app.shutdown()
        await primary_runner.cleanup()
        await shadow_runner.cleanup()

    def forwarded(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        names = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via")
        return [(k.lower(), v) for k, v in headers if k.lower() in names]

    (primary_headers,), (shadow_headers,) = primary_seen, shadow_seen
    assert (
        forwarded(shadow_headers)
        == forwarded(primary_headers)
        == [
            (b"x-forwarded-for", b"203.0.113.9, 127.0.0.1"),
            (b"x-forwarded-proto", b"http"),
            (b"x-forwarded-host", b"front.example"),
            (b"via", b"1.1 edge"),
        ]
    )
    (taped,) = list(TapeReader(tmp_path / "tape"))
    shadow_host = shadow_url.removeprefix("http://")
    assert taped.request_deltas == {
        "v2": RequestDelta(
            removed=(b"Authorization",),
            added=((b"X-Shadowtap-Shadow", b"1"), (b"X-Shadowtap-Correlation-Id", taped.id.encode())),
            authority=("front.example", shadow_host),
        )
    }
