"""Hostile HTTP/1.1 clients and a misbehaving HTTP/2 primary on the HTTP/1.1-to-HTTP/2 path.

Translating HTTP/1.1 to HTTP/2 is where request smuggling and header injection live (RFC 9113 8.2,
8.3; RFC 9110): fields legal in HTTP/1.1 but malformed in HTTP/2, body framing the two protocols
express differently, authority and request targets, and on the way back answers whose fields or
framing HTTP/1.1 cannot carry. Raw bytes go in from the client side; the primary (tests/wire/h2peer.py,
lenient so it records even what a strict server would refuse) keeps every stream's header fields,
body and ending. Each case checks that the client gets a well-formed answer or a clean error, that
the primary saw only what the client sent as that request, and that well-behaved clients on other
connections, sharing the same primary connection, get their own answers throughout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httptools
import pytest

from shadowtap.differ.engine import NOT_SENT
from shadowtap.proxy.forward import ForwardSettings
from shadowtap.proxy.server import ProxyServer
from shadowtap.recorder.model import FailureKind
from tests.proxy.conftest import RawResponse, RecordingStage, raw_request
from tests.wire.h2peer import H2TestServer, ReceivedStream, Responder

Header = tuple[bytes, bytes]

#: RFC 9113 8.2.2: fields that describe one HTTP/1 connection; malformed in HTTP/2.
CONNECTION_SPECIFIC = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
PSEUDO = (b":method", b":scheme", b":authority", b":path")


def h2_violations(fields: list[Header]) -> list[str]:
    """Why a request's header fields are malformed HTTP/2 (RFC 9113 8.2, 8.3), [] when they are not."""
    problems: list[str] = []
    names = [name for name, _ in fields]
    pseudo = [name for name in names if name[:1] == b":"]
    if tuple(pseudo) != PSEUDO[: len(pseudo)] or len(pseudo) != 4 and b":authority" in pseudo:
        problems.append(f"pseudo-header fields {pseudo}")
    if any(name[:1] == b":" for name in names[len(pseudo) :]):
        problems.append("a pseudo-header field after a regular one")
    for name, value in fields:
        if not name or name != name.lower():
            problems.append(f"name {name!r}")
        if name in CONNECTION_SPECIFIC:
            problems.append(f"connection-specific {name!r}")
        if name == b"te" and value != b"trailers":
            problems.append(f"te: {value!r}")
        if any(c in value for c in b"\r\n\x00") or value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t"):
            problems.append(f"value of {name!r}: {value!r}")
    fields_map = dict(fields)
    if fields_map.get(b":authority") == b"":
        problems.append("an empty :authority")
    if fields_map.get(b":path") == b"*" and fields_map.get(b":method") != b"OPTIONS":
        problems.append(":path * on a request other than OPTIONS")
    return problems


async def _answer(headers: list[Header], body: bytes, trailers: list[Header], reply: Responder) -> None:
    fields = dict(headers)
    path = fields.get(b":path", b"")
    if fields.get(b":method") == b"HEAD":
        reply.head(200, [(b"content-length", b"11")], end=True)
        return
    if path.startswith(b"/bystander/"):
        # Names its own request (path and body), so an answer delivered to the wrong client shows.
        answer = b"for " + path
        reply.head(200, [(b"content-length", b"%d" % len(answer)), (b"x-for", path)])
        await reply.data(answer, end=True)
        return
    if path == b"/slow":
        reply.head(200, [])
        await reply.data(b"slow-start,")
        await asyncio.sleep(0.5)
        await reply.data(b"slow-end", end=True)
        return
    handler = RESPONSES.get(path)
    if handler is not None:
        await handler(reply)
        return
    answer = b"echo " + path + b" " + body
    reply.head(200, [(b"content-length", b"%d" % len(answer))])
    await reply.data(answer, end=True)


async def _with_length(reply: Responder, headers: list[Header], body: bytes) -> None:
    reply.head(200, [*headers, (b"content-length", b"%d" % len(body))])
    await reply.data(body, end=True)


def _lengths(*values: bytes) -> Callable[[Responder], Awaitable[None]]:
    async def handler(reply: Responder) -> None:
        reply.head(200, [(b"content-length", value) for value in values])
        await reply.data(b"ok", end=True)

    return handler


async def _interim(reply: Responder) -> None:
    reply.head(103, [(b"link", b"</style.css>; rel=preload")])
    reply.head(100, [])
    await _with_length(reply, [], b"after interim")


async def _no_content_with_body(reply: Responder) -> None:
    reply.head(204, [])
    await reply.data(b"a body a 204 cannot have", end=True)


async def _no_content_with_length(reply: Responder) -> None:
    # Its "body" would be read by an HTTP/1.1 client as the start of the next answer.
    reply.head(204, [(b"content-length", b"5")], end=True)


async def _not_modified_with_length(reply: Responder) -> None:
    reply.head(304, [(b"content-length", b"42"), (b"etag", b'"v1"')], end=True)


async def _forbidden_trailers(reply: Responder) -> None:
    reply.head(200, [])
    await reply.data(b"trailed")
    reply.trailers([(b"content-length", b"999"), (b"host", b"evil.example"), (b"set-cookie", b"session=evil"),
                    (b"content-type", b"text/html"), (b"x-checksum", b"abc")])  # fmt: skip


async def _reset_mid_body(reply: Responder) -> None:
    reply.head(200, [])
    await reply.data(b"partial-")
    await asyncio.sleep(0.05)
    reply.reset(0x2)


async def _reset_mid_sized_body(reply: Responder) -> None:
    reply.head(200, [(b"content-length", b"100")])
    await reply.data(b"partial-")
    await asyncio.sleep(0.05)
    reply.reset(0x2)


def _bad_field(name: bytes, value: bytes) -> Callable[[Responder], Awaitable[None]]:
    async def handler(reply: Responder) -> None:
        await _with_length(reply, [(name, value)], b"bad field")

    return handler


#: Answers by path; the bad-field ones carry what HPACK allows and HTTP/1.1 cannot write as it is.
RESPONSES: dict[bytes, Callable[[Responder], Awaitable[None]]] = {
    b"/interim": _interim,
    b"/no-content": _no_content_with_body,
    b"/not-modified": _not_modified_with_length,
    b"/trailers": _forbidden_trailers,
    b"/reset-mid-body": _reset_mid_body,
    b"/reset-mid-sized-body": _reset_mid_sized_body,
    b"/name-crlf": _bad_field(b"x-a\r\nset-cookie", b"session=injected"),
    b"/name-colon": _bad_field(b"x-a: set-cookie", b"session=injected"),
    b"/name-space": _bad_field(b"x a", b"1"),
    b"/name-empty": _bad_field(b"", b"1"),
    b"/value-ctl": _bad_field(b"x-a", b"a\x01b\x7f"),
    b"/value-lf": _bad_field(b"x-a", b"a\nset-cookie: session=injected"),
    b"/name-upper": _bad_field(b"X-Upper", b"1"),
    b"/connection": _bad_field(b"connection", b"close"),
    b"/length-signed": _lengths(b"+2"),
    b"/length-on-no-content": _no_content_with_length,
    b"/length-twice": _lengths(b"2", b"2"),
}


@pytest.fixture
async def primary() -> AsyncIterator[H2TestServer]:
    server = await H2TestServer(_answer, strict=False).start()
    try:
        yield server
    finally:
        await server.close()


async def _proxy(primary: H2TestServer, **settings: Any) -> ProxyServer:
    server = ProxyServer(ForwardSettings(primary=f"h2c://127.0.0.1:{primary.port}", **settings))
    await server.start("127.0.0.1", 0)
    return server


@pytest.fixture
async def proxy(primary: H2TestServer) -> AsyncIterator[ProxyServer]:
    server = await _proxy(primary)
    try:
        yield server
    finally:
        await server.shutdown(1)


async def _bystanders(port: int, clients: int = 4, rounds: int = 15) -> list[str]:
    """Well-behaved keep-alive clients; the answers they got that were not their own."""
    wrong: list[str] = []

    async def one(i: int) -> None:
        for j in range(rounds):
            path = b"/bystander/%d/%d" % (i, j)
            try:
                (response,) = await raw_request(port, b"GET %s HTTP/1.1\r\nHost: shop.local\r\n\r\n" % path)
            except (ValueError, TimeoutError, ConnectionError) as exc:
                wrong.append(f"{path.decode()}: {exc!r}")
                continue
            if response.status != 200 or response.body != b"for " + path or response.header(b"x-for") != path:
                wrong.append(f"{path.decode()} got {response.status} {response.body!r}")
            await asyncio.sleep(0.005)

    await asyncio.gather(*(one(i) for i in range(clients)))
    return wrong


async def _raw(port: int, request: bytes, *, half_close: bool = False, timeout_s: float = 10) -> bytes:
    """Send ``request`` as it is and read everything until the proxy closes (a reset ends it too)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = b""
    try:
        writer.write(request)
        if half_close:
            writer.write_eof()
        async with asyncio.timeout(timeout_s):
            while piece := await reader.read(65536):
                data += piece
    except ConnectionResetError:
        data += b"<reset>"
    finally:
        writer.close()
    return data


def _parse(data: bytes) -> list[RawResponse]:
    """The responses in ``data``, as a strict HTTP/1.1 client (llhttp) reads them."""
    from tests.proxy.conftest import _ResponseCollector

    collector = _ResponseCollector()
    parser = httptools.HttpResponseParser(collector)
    collector.parser = parser
    parser.feed_data(data)
    return collector.responses


def _requests(primary: H2TestServer) -> list[ReceivedStream]:
    return [s for s in primary.received if not dict(s.headers).get(b":path", b"").startswith(b"/bystander/")]


def _paths(primary: H2TestServer) -> list[bytes]:
    return [dict(s.headers)[b":path"] for s in _requests(primary)]


# --- header fields --------------------------------------------------------------------------------

REFUSED_HEADS = {
    "obs-fold": b"GET /r HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n",
    "NUL in a value": b"GET /r HTTP/1.1\r\nHost: x\r\nX-A: o\x00ne\r\n\r\n",
    "CR in a value": b"GET /r HTTP/1.1\r\nHost: x\r\nX-A: o\rne\r\n\r\n",
    "bare LF in a value": b"GET /r HTTP/1.1\r\nHost: x\r\nX-A: o\nX-B: 1\r\n\r\n",
    "pseudo-header name": b"GET /r HTTP/1.1\r\nHost: x\r\n:path: /admin\r\n\r\n",
    "empty name": b"GET /r HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n",
    "space before the colon": b"GET /r HTTP/1.1\r\nHost: x\r\nX-A : v\r\n\r\n",
    "two Hosts": b"GET /r HTTP/1.1\r\nHost: x\r\nhost: y\r\n\r\n",
    "no Host": b"GET /r HTTP/1.1\r\n\r\n",
    "Host with userinfo": b"GET /r HTTP/1.1\r\nHost: user@evil.example\r\n\r\n",
    "Host with a path": b"GET /r HTTP/1.1\r\nHost: x/admin\r\n\r\n",
    "Host with a space": b"GET /r HTTP/1.1\r\nHost: x y\r\n\r\n",
    "asterisk on GET": b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    "userinfo in an absolute target": b"GET http://user@evil.example/r HTTP/1.1\r\nHost: x\r\n\r\n",
}


async def test_fields_http2_cannot_carry_are_refused_before_the_primary(
    primary: H2TestServer, proxy: ProxyServer
) -> None:
    async def attacks() -> dict[str, bytes]:
        # Each with a well-formed request pipelined behind it: nothing after a refusal is read.
        behind = b"GET /behind HTTP/1.1\r\nHost: x\r\n\r\n"
        answers = await asyncio.gather(*(_raw(proxy.port, head + behind) for head in REFUSED_HEADS.values()))
        return dict(zip(REFUSED_HEADS, answers, strict=True))

    answers, wrong = await asyncio.gather(attacks(), _bystanders(proxy.port))
    assert wrong == []
    for case, data in answers.items():
        (response,) = _parse(data)
        assert response.status == 400, case
        assert response.header(b"connection") == b"close", case
    assert _requests(primary) == []


async def test_fields_reach_the_primary_as_valid_http2_and_as_sent(primary: H2TestServer, proxy: ProxyServer) -> None:
    cases = {
        b"/hop": b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTE: gzip, trailers\r\nTrailer: X-T\r\nX-Kept: yes\r\n",
        b"/upper": b"X-UPPER-Case: Value Kept\r\nACCEPT: */*\r\n",
        b"/space": b"X-Padded:   inner  space kept \t \r\nX-Empty:\r\nX-Tab:\tv\t\r\n",
        b"/cookies": b"Cookie: a=1; b=2\r\nCookie: c=3\r\n",
        b"/many": b"".join(b"X-Field-%d: value-%d\r\n" % (i, i) for i in range(300)),
        b"/te-only-gzip": b"TE: gzip\r\n",
    }

    async def attacks() -> list[bytes]:
        requests = [
            b"GET %s HTTP/1.1\r\nHost: shop.local:8443\r\n%sConnection: close\r\n\r\n" % (p, h)
            for p, h in cases.items()
        ]
        return list(await asyncio.gather(*(_raw(proxy.port, r) for r in requests)))

    answers, wrong = await asyncio.gather(attacks(), _bystanders(proxy.port))
    assert wrong == []
    for path, data in zip(cases, answers, strict=True):
        (response,) = _parse(data)
        assert response.status == 200 and response.body == b"echo " + path + b" ", path
    seen = {dict(s.headers)[b":path"]: s for s in _requests(primary)}
    assert sorted(seen) == sorted(cases)
    for path, stream in seen.items():
        assert h2_violations(stream.headers) == [], path
        assert stream.ended and stream.body == b"", path
        assert dict(stream.headers)[b":authority"] == b"shop.local:8443"
    hop = seen[b"/hop"].headers
    assert [n for n, _ in hop if n in (b"x-hop", b"te", b"trailer")] == [b"te"]
    assert (b"te", b"trailers") in hop and (b"x-kept", b"yes") in hop
    assert (b"x-upper-case", b"Value Kept") in seen[b"/upper"].headers
    space = seen[b"/space"].headers
    assert (b"x-padded", b"inner  space kept") in space and (b"x-empty", b"") in space and (b"x-tab", b"v") in space
    # Cookies arrive intact, in order (a server joins them with "; ", RFC 9113 8.2.3).
    assert [v for n, v in seen[b"/cookies"].headers if n == b"cookie"] == [b"a=1; b=2", b"c=3"]
    assert sum(n.startswith(b"x-field-") for n, _ in seen[b"/many"].headers) == 300
    assert all(n != b"te" for n, _ in seen[b"/te-only-gzip"].headers)


async def test_authority_and_request_targets(primary: H2TestServer, proxy: ProxyServer) -> None:
    requests = [
        b"GET http://other.example/abs?q=1 HTTP/1.1\r\nHost: shop.local\r\n",
        b"GET http://other.example?only=query HTTP/1.1\r\nHost: shop.local\r\n",
        b"GET https://other.example:8443/tls-port HTTP/1.1\r\nHost: shop.local\r\n",
        b"GET http://absolute.example/http10-no-host HTTP/1.0\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: shop.local\r\n",
        b"GET /port HTTP/1.1\r\nHost: shop.local:8080\r\n",
        b"GET /ipv6 HTTP/1.1\r\nHost: [::1]:8080\r\n",
        b"GET /empty-host HTTP/1.1\r\nHost: \r\n",
        b"GET /fragment?q=1#section HTTP/1.1\r\nHost: shop.local\r\n",
        b"GET /http10 HTTP/1.0\r\n",
    ]
    answers = await asyncio.gather(*(_raw(proxy.port, r + b"Connection: close\r\n\r\n") for r in requests))
    assert all([r.status for r in _parse(data)] == [200] for data in answers)
    seen = [s.headers for s in _requests(primary)]
    assert all(h2_violations(headers) == [] for headers in seen), seen
    by_path = {dict(h)[b":path"]: dict(h) for h in seen}
    # An absolute-form target's authority wins over Host (RFC 9112 3.2.2), and X-Forwarded-Host says
    # the same host; the target gives the path.
    assert by_path[b"/abs?q=1"][b":authority"] == b"other.example"
    assert by_path[b"/abs?q=1"][b"x-forwarded-host"] == b"other.example"
    assert b"host" not in by_path[b"/abs?q=1"]
    assert by_path[b"/?only=query"][b":authority"] == b"other.example"
    assert by_path[b"/tls-port"][b":authority"] == b"other.example:8443"
    assert by_path[b"/http10-no-host"][b":authority"] == b"absolute.example"
    assert by_path[b"/port"][b"x-forwarded-host"] == b"shop.local:8080"
    assert by_path[b"*"][b":method"] == b"OPTIONS"
    assert b"/fragment?q=1" in by_path  # a fragment is no part of :path
    assert by_path[b"/port"][b":authority"] == b"shop.local:8080"
    assert by_path[b"/ipv6"][b":authority"] == b"[::1]:8080"
    # No Host (HTTP/1.0) and an empty one: the primary's own authority, never an empty one.
    assert by_path[b"/empty-host"][b":authority"] == b"127.0.0.1:%d" % primary.port
    assert by_path[b"/http10"][b":authority"] == b"127.0.0.1:%d" % primary.port


@pytest.mark.parametrize(
    "offer",
    [
        b"CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        b"POST /form HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello",
    ],
    ids=["connect", "websocket", "upgrade-with-body"],
)
async def test_connect_and_upgrade_are_refused_and_nothing_behind_them_is_read(
    primary: H2TestServer, offer: bytes
) -> None:
    proxy = await _proxy(primary, connect_targets=("internal.example:443",))
    try:
        smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        attacks = asyncio.gather(*(_raw(proxy.port, offer + smuggled) for _ in range(3)))
        answers, wrong = await asyncio.gather(attacks, _bystanders(proxy.port))
    finally:
        await proxy.shutdown(1)
    assert wrong == []
    for data in answers:
        (response,) = _parse(data)
        assert response.status == 502 and b"HTTP/2" in response.body
        assert response.header(b"connection") == b"close"
    assert _requests(primary) == []


# --- body framing ---------------------------------------------------------------------------------

FRAMING_REFUSED = {
    "CL and TE": b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\nbody\r\n0\r\n\r\n",
    "two CLs": b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nbody",
    "two different CLs": b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 9\r\n\r\nbodybody1",
    "a CL list": b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 4\r\n\r\nbody",
    "a negative CL": b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nbody",
    "TE gzip": b"POST /f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
    "two TEs": b"POST /f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\nbody\r\n0\r\n\r\n",
}

FRAMING_CUT = {
    "a bad chunk size": b"POST /f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\nbody\r\nzz\r\nmore\r\n0\r\n\r\n",
    "a chunk longer than its size": b"POST /f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nbody\r\n0\r\n\r\n",
    "a body shorter than its CL": b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nshort",
}


async def test_ambiguous_framing_is_refused_and_a_broken_body_never_completes(
    primary: H2TestServer, proxy: ProxyServer
) -> None:
    behind = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

    async def attacks() -> tuple[list[bytes], list[bytes]]:
        refused = await asyncio.gather(*(_raw(proxy.port, r + behind) for r in FRAMING_REFUSED.values()))
        # The client sends a broken body, or stops short of its Content-Length and half-closes.
        cut = await asyncio.gather(*(_raw(proxy.port, r, half_close=True) for r in FRAMING_CUT.values()))
        return list(refused), list(cut)

    (refused, cut), wrong = await asyncio.gather(attacks(), _bystanders(proxy.port))
    assert wrong == []
    for case, data in zip(FRAMING_REFUSED, refused, strict=True):
        statuses = [r.status for r in _parse(data)]
        assert statuses in ([400], [501]), case
    for case, data in zip(FRAMING_CUT, cut, strict=True):
        # No answer can be complete for a request that was not: the connection just ends.
        assert b"HTTP/1.1 200" not in data, case
    for stream in _requests(primary):
        # A request whose body broke may have begun; it never ends as a whole request.
        assert not stream.ended and stream.reset_code is not None, stream
    assert b"/smuggled" not in _paths(primary)


async def test_chunk_extensions_a_body_on_get_and_trailer_fields_never_reach_the_next_request(
    primary: H2TestServer, proxy: ProxyServer
) -> None:
    request = (
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;name=value;other\r\nbody\r\n0\r\nX-Injected: from-trailer\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nget!"
        b"POST /chunked-host HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\nHost: evil.example\r\n\r\n"
        b"GET /last HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    responses = await raw_request(proxy.port, request, responses=4)
    assert [r.body for r in responses] == [b"echo /chunked body", b"echo /next get!", b"echo /chunked-host ok",
                                           b"echo /last "]  # fmt: skip
    seen = {dict(s.headers)[b":path"]: s for s in _requests(primary)}
    assert list(seen) == [b"/chunked", b"/next", b"/chunked-host", b"/last"]
    for stream in seen.values():
        assert stream.trailers == [] and stream.ended
        names = [n for n, _ in stream.headers]
        assert b"x-injected" not in names and b"host" not in names
        assert dict(stream.headers)[b":authority"] == b"x"
        assert dict(stream.headers)[b"x-forwarded-for"] == b"127.0.0.1"
    assert seen[b"/next"].body == b"get!"


async def test_a_request_pipelined_behind_a_body_the_primary_answered_early_is_never_read_from_it() -> None:
    primary = await H2TestServer(_answer, strict=False, early=lambda h: dict(h)[b":path"] == b"/early").start()
    proxy = await _proxy(primary)
    # The body holds what looks like a request; another request really follows the body.
    body = b"GET /smuggled-in-body HTTP/1.1\r\nHost: x\r\n\r\n" * 4000
    head = b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    after = b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    async def answered_mid_body() -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(head + body[:1000])
            async with asyncio.timeout(10):
                answer = await reader.readuntil(b"echo /early ")
                writer.write(body[1000:] + after)
                rest = await reader.read(-1)
        finally:
            writer.close()
        return answer, rest

    try:
        (answer, rest), whole, wrong = await asyncio.gather(
            answered_mid_body(), _raw(proxy.port, head + body + after), _bystanders(proxy.port)
        )
    finally:
        await proxy.shutdown(1)
        await primary.close()
    assert wrong == []
    # Answered before its body was in: the connection closes after the answer, and the rest of the
    # body and the request behind it are read and dropped.
    (early,) = _parse(answer)
    assert early.status == 200 and early.header(b"connection") == b"close"
    assert rest == b""
    # Answered early but the body was whole by then: the request behind it is the next request.
    assert [r.body for r in _parse(whole)] == [b"echo /early ", b"echo /after "]
    # Nothing in a body was ever taken for a request, and /after only where the body ended before it.
    assert sorted(_paths(primary)) == [b"/after", b"/early", b"/early"]


async def test_a_header_list_beyond_what_http2_servers_accept_is_431_and_spares_other_streams(
    primary: H2TestServer, proxy: ProxyServer
) -> None:
    # 2,500 small fields: 17 KB as HTTP/1.1 (within the proxy's head limit), 100 KB as HTTP/2 counts a
    # header list, beyond the 64 KiB h2-based servers accept: sent, it would be a connection error
    # (GOAWAY) ending every stream on that connection.
    many = b"".join(b"H%d: v\r\n" % i for i in range(2500))
    slow = asyncio.ensure_future(_raw(proxy.port, b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    await asyncio.sleep(0.1)
    big = await _raw(proxy.port, b"GET /big HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    wrong = await _bystanders(proxy.port, clients=2, rounds=5)
    (response,) = _parse(big)
    assert response.status == 431
    (slow_response,) = _parse(await slow)
    assert slow_response.status == 200 and slow_response.body == b"slow-start,slow-end"
    assert wrong == []
    assert b"/big" not in _paths(primary)


class _Observer:
    """A real ``PrimaryObserver`` that keeps what it was told (status, failed)."""

    name = "observer"

    def __init__(self) -> None:
        self.seen: list[tuple[int | None, bool]] = []

    def observe_primary(self, status: int | None, failed: bool, done_ns: int | None) -> None:
        self.seen.append((status, failed))


async def test_a_request_refused_before_the_primary_is_a_client_error_never_a_primary_failure(
    primary: H2TestServer,
) -> None:
    # Refused as the HTTP/1 path refuses a malformed head: in order after the requests before it,
    # counted by status, never handed to a stage (so never mirrored or taped), never observed as an
    # outcome of the primary's.
    stage, observer = RecordingStage(), _Observer()
    proxy = ProxyServer(ForwardSettings(primary=f"h2c://127.0.0.1:{primary.port}"), [stage], observers=[observer])
    await proxy.start("127.0.0.1", 0)
    try:
        bad_host = await _raw(proxy.port, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nGET /r HTTP/1.1\r\nHost: a b\r\n\r\n")
        asterisk = await _raw(proxy.port, b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
        many = b"".join(b"H%d: v\r\n" % i for i in range(2500))
        too_large = await _raw(proxy.port, b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + many + b"\r\nhi")
    finally:
        await proxy.shutdown(1)
    assert [r.status for r in _parse(bad_host)] == [200, 400]
    assert [r.status for r in _parse(asterisk)] == [400]
    assert [r.status for r in _parse(too_large)] == [431]
    assert proxy.stats.client_errors == {400: 2, 431: 1}
    assert proxy.stats.primary_failures == {}
    assert [ex.target for ex in stage.requests] == [ex.target for ex in stage.exchanges] == ["/ok"]
    assert observer.seen == [(200, False)]
    assert _paths(primary) == [b"/ok"]


async def test_a_request_over_the_primarys_own_header_limit_is_taped_as_refused_not_as_its_failure() -> None:
    # The primary's SETTINGS_MAX_HEADER_LIST_SIZE is learnt on its connection, after the stages saw
    # the request whole: the tape keeps it, refused by the proxy (a kind the differ counts as never
    # sent), and nothing counts it against the primary.
    primary = await H2TestServer(_answer, strict=False, max_header_list_size=4096).start()
    stage, observer = RecordingStage(), _Observer()
    proxy = ProxyServer(ForwardSettings(primary=f"h2c://127.0.0.1:{primary.port}"), [stage], observers=[observer])
    await proxy.start("127.0.0.1", 0)
    try:
        (fits,) = _parse(await _raw(proxy.port, b"GET /fits HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        large = b"GET /large HTTP/1.1\r\nHost: x\r\nX-Large: " + b"v" * 4096 + b"\r\n\r\n"
        (refused,) = _parse(await _raw(proxy.port, large))
    finally:
        await proxy.shutdown(1)
        await primary.close()
    assert fits.status == 200 and refused.status == 431
    assert proxy.stats.client_errors == {431: 1} and proxy.stats.primary_failures == {}
    taped = {ex.target: ex for ex in stage.exchanges}
    failure = taped["/large"].failure
    assert failure is not None and failure.kind == FailureKind.CANCELLED
    assert failure.message.startswith("refused by the proxy with 431: ")
    assert failure.kind in NOT_SENT and taped["/large"].response is None
    assert observer.seen == [(200, False)]
    assert _paths(primary) == [b"/fits"]


# --- answers --------------------------------------------------------------------------------------


async def test_answer_fields_http1_cannot_carry_give_502_and_the_connection_goes_on(
    primary: H2TestServer, proxy: ProxyServer
) -> None:
    bad = [
        p for p in RESPONSES if p.startswith((b"/name-", b"/value-", b"/connection", b"/length-signed", b"/length-on"))
    ]

    async def attacks() -> list[bytes]:
        requests = [b"GET %s HTTP/1.1\r\nHost: x\r\n\r\nGET /then HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % p
                    for p in bad]  # fmt: skip
        return list(await asyncio.gather(*(_raw(proxy.port, r) for r in requests)))

    answers, wrong = await asyncio.gather(attacks(), _bystanders(proxy.port))
    assert wrong == []
    for path, data in zip(bad, answers, strict=True):
        responses = _parse(data)
        assert [r.status for r in responses] == [502, 200], path
        assert responses[1].body == b"echo /then ", path
        assert b"injected" not in data.split(b"\r\n\r\n")[0], path
    for stream in _requests(primary):
        assert stream.ended  # the request was whole; the answer's stream was reset by the proxy


async def test_a_length_given_twice_reaches_the_client_once(primary: H2TestServer, proxy: ProxyServer) -> None:
    data = await _raw(proxy.port, b"GET /length-twice HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    (response,) = _parse(data)  # llhttp refuses a repeated Content-Length
    assert response.status == 200 and response.body == b"ok"
    assert data.lower().count(b"content-length") == 1


async def test_interim_answers_no_content_not_modified_and_head(primary: H2TestServer, proxy: ProxyServer) -> None:
    request = (
        b"GET /interim HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /no-content HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /not-modified HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = await _raw(proxy.port, request)
    # The answers in order with nothing stray between them (the interim ones are not relayed).
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"204", b"304", b"200", b"200"]
    # The HEAD answer keeps its length and has no body; the others parse as a strict client reads them.
    head = answers[3]
    assert b"content-length: 11\r\n" in head and head.endswith(b"\r\n\r\n")
    responses = _parse(b"".join(b"HTTP/1.1 " + a for a in answers[:3]))
    assert responses[0].body == b"after interim"
    assert responses[1].body == b"" and responses[2].body == b""
    assert responses[2].header(b"etag") == b'"v1"'
    assert data.endswith(b"echo /last ")


async def test_trailers_lose_the_fields_forbidden_there(primary: H2TestServer, proxy: ProxyServer) -> None:
    data = await _raw(proxy.port, b"GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"7\r\ntrailed\r\n0\r\nx-checksum: abc\r\n\r\n"


async def test_a_reset_mid_body_is_never_a_complete_looking_answer(primary: H2TestServer, proxy: ProxyServer) -> None:
    chunked = await _raw(proxy.port, b"GET /reset-mid-body HTTP/1.1\r\nHost: x\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in chunked
    assert chunked.endswith(b"8\r\npartial-\r\n")  # no last chunk: the connection closed mid-body
    sized = await _raw(proxy.port, b"GET /reset-mid-sized-body HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"content-length: 100" in sized and sized.endswith(b"\r\n\r\npartial-")  # 8 of 100 bytes
    # An HTTP/1.0 client's body ends when the connection does: a reset, not a close, says it was cut.
    old = await _raw(proxy.port, b"GET /reset-mid-body HTTP/1.0\r\n\r\n")
    assert old.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in old
    assert old.endswith(b"<reset>")


async def test_goaway_beyond_the_last_stream_is_retried_once_and_answers_the_right_client() -> None:
    refusals: dict[bytes, int] = {}

    async def handler(headers: list[Header], body: bytes, trailers: list[Header], reply: Responder) -> None:
        path = dict(headers)[b":path"]
        if path.startswith(b"/goaway/"):
            seen = refusals.get(path, 0)
            refusals[path] = seen + 1
            if seen == 0 or path.endswith(b"/always"):
                # "Never processed": this stream is above the GOAWAY's last-stream-id.
                reply.goaway(reply.stream_id - 2)
                return
        await _answer(headers, body, trailers, reply)

    primary = await H2TestServer(handler, strict=False).start()
    proxy = await _proxy(primary)
    try:
        once = _raw(
            proxy.port, b"POST /goaway/once HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody"
        )
        always = _raw(proxy.port, b"GET /goaway/always HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        once_data, always_data, wrong = await asyncio.gather(once, always, _bystanders(proxy.port))
    finally:
        await proxy.shutdown(1)
        await primary.close()
    (retried,) = _parse(once_data)
    assert retried.status == 200 and retried.body == b"echo /goaway/once body"
    (refused,) = _parse(always_data)
    assert refused.status == 502 and b"GOAWAY" in refused.body
    assert refusals == {b"/goaway/once": 2, b"/goaway/always": 2}  # once more, never twice more
    # A bystander's stream above a GOAWAY's last-stream-id is retried once too: it gets its own
    # answer, or 502 when the connection it was retried on went away as well; never another's.
    assert [w for w in wrong if "got 502" not in w or "GOAWAY" not in w] == []


async def test_a_primary_whose_answer_breaks_its_connection_leaves_the_next_request_answered(
    primary: H2TestServer,
) -> None:
    async def short_body(reply: Responder) -> None:
        reply._server.writer.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0

    RESPONSES[b"/short-body"] = short_body
    proxy = await _proxy(primary)
    try:
        # A DATA frame on stream 0 is a connection error: the request behind, started while that
        # connection fails, goes on another one.
        data = await _raw(
            proxy.port,
            b"GET /short-body HTTP/1.1\r\nHost: x\r\n\r\nGET /then HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    finally:
        del RESPONSES[b"/short-body"]
        await proxy.shutdown(1)
    responses = _parse(data)
    assert [r.status for r in responses] == [502, 200]
    assert responses[1].body == b"echo /then "
