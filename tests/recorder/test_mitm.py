"""mitmproxy flow files: import through mitmproxy.io (all migrated versions), export, torn tails, errors."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.io import FlowReader, FlowWriter, tnetstring
from mitmproxy.test import tflow

from shadowtap.recorder import Exchange, Failure, FailureKind, InputFormatError, Request, Response, Timing
from shadowtap.recorder.formats import MitmReader, exchange_from_flow, flow_from_exchange, write_mitm

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mitmproxy" / "httpbin.mitm"
EVERY_TYPE = FIXTURE.with_name("every-type.mitm")


def read(path: Path) -> tuple[list[Exchange], MitmReader]:
    reader = MitmReader(path)
    return list(reader), reader


def write_flows(path: Path, flows: list[Any]) -> None:
    with path.open("wb") as stream:
        writer = FlowWriter(stream)  # type: ignore[no-untyped-call]
        for flow in flows:
            writer.add(flow)


def test_real_capture_imports_fourteen_with_wire_bodies() -> None:
    exchanges, reader = read(FIXTURE)
    assert reader.report.imported == 14 and reader.report.records == 14
    assert reader.report.skipped == {} and reader.report.torn_tail is None
    by_path = {(ex.request.method, ex.request.path): ex for ex in exchanges}
    first = exchanges[0]
    assert first.request.target == "/get?i=1" and first.request.authority == "127.0.0.1:8001"
    assert first.client_addr == "127.0.0.1:56012" and first.connection_id
    assert first.id == "4733183d-990a-4df7-8fc9-9c9a76e3dab7"
    assert first.request.headers == (
        (b"Host", b"127.0.0.1:8001"),
        (b"User-Agent", b"curl/7.88.1"),
        (b"Accept", b"*/*"),
        (b"X-Session", b"s1"),
    )
    timing = first.timings["primary"]
    assert timing.sent_ns is not None and timing.first_byte_ns is not None and timing.done_ns is not None
    assert 0 < timing.sent_ns < timing.first_byte_ns < timing.done_ns < 1_000_000_000
    gz = by_path[("GET", "/gzip")].primary
    assert isinstance(gz, Response) and gz.body.startswith(b"\x1f\x8b") and gz.header(b"content-encoding") == b"gzip"
    br = by_path[("GET", "/brotli")].primary
    assert isinstance(br, Response) and br.header(b"content-encoding") == b"br" and len(br.body) == 150
    assert exchanges[2].request.body.startswith(b"--------------------------")  # multipart
    assert by_path[("HEAD", "/html")].request.method == "HEAD"
    unavailable = by_path[("GET", "/status/503")].primary
    assert isinstance(unavailable, Response) and unavailable.reason == "SERVICE UNAVAILABLE"
    assert all(ex.tags["source"] == "mitm" for ex in exchanges)


def test_errors_websockets_and_non_http_flows(tmp_path: Path) -> None:
    errored = tflow.tflow(err=True)
    killed_after_response = tflow.tflow(resp=True, err=True)
    websocket = tflow.twebsocketflow()
    path = tmp_path / "mixed.mitm"
    write_flows(path, [errored, tflow.ttcpflow(), killed_after_response, websocket, tflow.tdnsflow()])
    exchanges, reader = read(path)
    assert reader.report.records == 5 and reader.report.imported == 3
    assert reader.report.skipped == {"TCPFlow flows (not HTTP)": 1, "DNSFlow flows (not HTTP)": 1}
    first, second, third = exchanges
    assert isinstance(first.primary, Failure) and first.primary.message == "error"
    assert isinstance(second.primary, Response) and second.tags["mitm.error"] == "error"
    assert third.tags["mitm.websocket_messages"] == str(len(websocket.websocket.messages))  # type: ignore[union-attr]
    assert reader.report.notes == {"WebSocket flows (messages kept as a count in tags)": 1}
    assert reader.report.failures == {"other": 1}


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Connection timed out", FailureKind.TIMEOUT),
        ("Connection refused", FailureKind.CONNECT_ERROR),
        ("connection reset by peer", FailureKind.RESET),
        ("Connection killed.", FailureKind.CANCELLED),
        # What mitmproxy 11 writes, from tests/fixtures/mitmproxy/every-type.mitm:
        ("[Errno 111] Connect call failed ('127.0.0.1', 42845)", FailureKind.CONNECT_ERROR),
        ("[Errno -2] Name or service not known", FailureKind.CONNECT_ERROR),
        ("Client disconnected.", FailureKind.ABORTED),
        ("something odd", FailureKind.OTHER),
    ],
)
def test_error_messages_map_to_failure_kinds(message: str, kind: str) -> None:
    flow = tflow.tflow(err=True)
    flow.error.msg = message  # type: ignore[union-attr]
    assert exchange_from_flow(flow).primary == Failure(kind, message)


def test_body_cap_cuts_and_records_the_original_size() -> None:
    flow = tflow.tflow(resp=True)
    flow.request.content = b"x" * 100
    ex = exchange_from_flow(flow, body_cap_bytes=10)
    assert ex.request.body == b"x" * 10 and ex.request.truncated_from == 100


def _as_version_18(state: dict[str, Any]) -> dict[str, Any]:
    """Undo mitmproxy's 18->19 migration: what mitmproxy 7 wrote."""
    state["version"] = 18
    client, server = state["client_conn"], state["server_conn"]
    client["address"] = client.pop("peername")
    client["tls_extensions"] = []
    server["ip_address"] = server.pop("peername")
    server["source_address"] = server.pop("sockname")
    server["via2"] = server.pop("via")
    for conn in (client, server):
        conn["tls_established"] = False
        conn["cipher_name"] = conn.pop("cipher")
    return state


def test_older_flow_versions_are_migrated_by_mitmproxy(tmp_path: Path) -> None:
    with FIXTURE.open("rb") as stream:
        flows = list(FlowReader(stream).stream())
    path = tmp_path / "v18.mitm"
    with path.open("wb") as out:
        for flow in flows[:3]:
            tnetstring.dump(_as_version_18(flow.get_state()), out)
    old, _ = read(path)
    current, _ = read(FIXTURE)
    assert [(ex.request, ex.primary, ex.client_addr) for ex in old] == [
        (ex.request, ex.primary, ex.client_addr) for ex in current[:3]
    ]


def test_a_newer_flow_version_is_a_clear_error(tmp_path: Path) -> None:
    state = tflow.tflow(resp=True).get_state()
    state["version"] = 999
    path = tmp_path / "future.mitm"
    path.write_bytes(tnetstring.dumps(state))
    with pytest.raises(InputFormatError, match="flow format version 999") as info:
        list(MitmReader(path))
    assert info.value.offset == 0 and info.value.path == str(path)


def test_cut_file_returns_complete_flows_and_reports_the_torn_tail(tmp_path: Path) -> None:
    data = FIXTURE.read_bytes()
    path = tmp_path / "cut.mitm"
    path.write_bytes(data[:30_000])
    exchanges, reader = read(path)
    full, _ = read(FIXTURE)
    assert len(exchanges) == reader.report.records == 11
    assert exchanges == full[:11]
    tail = reader.report.torn_tail
    assert tail is not None and tail.offset + tail.length_bytes == 30_000


def test_corruption_in_the_middle_is_an_error_with_offset(tmp_path: Path) -> None:
    data = bytearray(FIXTURE.read_bytes())
    exchanges, _ = read(FIXTURE)
    path = tmp_path / "bad.mitm"
    # Overwrite the second record's length prefix: the reader must stop there, not skip it.
    second = data.index(b":", 0)
    first_length = int(data[:second])
    start = second + 1 + first_length + 1
    data[start : start + 2] = b"xx"
    path.write_bytes(bytes(data))
    with pytest.raises(InputFormatError, match="not a valid mitmproxy flow") as info:
        list(MitmReader(path))
    assert info.value.offset == start


def test_har_and_garbage_are_refused(tmp_path: Path) -> None:
    har = tmp_path / "x.har"
    har.write_text('{"log": {"entries": []}}')
    with pytest.raises(InputFormatError, match="not a mitmproxy flow file"):
        list(MitmReader(har))
    packed = tmp_path / "flows.mitm.gz"
    packed.write_bytes(gzip.compress(FIXTURE.read_bytes()))
    with pytest.raises(InputFormatError, match="gunzip it first"):
        list(MitmReader(packed))
    junk = tmp_path / "junk.mitm"
    junk.write_bytes(b"hello, this is not tnetstring")
    with pytest.raises(InputFormatError, match="not a valid mitmproxy flow"):
        list(MitmReader(junk))


def test_export_round_trip_through_mitmproxy(tmp_path: Path) -> None:
    original, _ = read(FIXTURE)
    out = tmp_path / "out.mitm"
    report = write_mitm(original, out)
    assert report.exported == 14
    again, _ = read(out)
    for before, after in zip(original, again, strict=True):
        assert after.request == before.request and after.primary == before.primary
        assert after.id == before.id and after.client_addr == before.client_addr
        assert after.timings == before.timings and after.started_at_ns == before.started_at_ns


def test_export_of_exchanges_from_other_sources(tmp_path: Path) -> None:
    exchanges = [
        Exchange(
            id="e1",
            started_at_ns=1_700_000_000_000_000_000,
            request=Request("POST", "/p?q=1", ((b"Host", b"svc.test:8443"),), b"body", "https", "svc.test:8443", "2"),
            primary=Response(201, "Created", ((b"X", b"1"),), b"made", "2"),
            shadows={"v2": Response(500)},
            timings={"primary": Timing(sent_ns=1_000, first_byte_ns=2_000_000, done_ns=3_000_000)},
            client_addr="[::1]:5000",
        ),
        Exchange(id="e2", started_at_ns=1, request=Request("GET", "/"), primary=Failure(FailureKind.TIMEOUT, "slow")),
    ]
    out = tmp_path / "o.mitm"
    report = write_mitm(exchanges, out)
    assert report.skipped == {"shadow responses (a flow holds one response)": 1}
    with out.open("rb") as stream:
        flows = list(FlowReader(stream).stream())
    first, second = flows
    assert isinstance(first, http.HTTPFlow) and first.response is not None
    assert first.request.pretty_url == "https://svc.test:8443/p?q=1" and first.request.http_version == "HTTP/2.0"
    assert first.response.status_code == 201 and first.response.content == b"made"
    assert first.client_conn.peername == ("::1", 5000)
    assert isinstance(second, http.HTTPFlow) and second.error is not None and second.error.msg == "slow"
    back = flow_from_exchange(exchanges[0])
    assert exchange_from_flow(back).request == exchanges[0].request


@pytest.mark.parametrize("data", [b"1:5#", b"4:1:x,]", b"11:4:name,1:x,}"])
def test_records_that_are_not_flows_are_clear_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "odd.mitm"
    path.write_bytes(data)
    with pytest.raises(InputFormatError, match="not a valid mitmproxy flow") as info:
        list(MitmReader(path))
    assert info.value.offset == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=200)
    | st.integers(min_value=0, max_value=len(FIXTURE.read_bytes())).map(lambda n: FIXTURE.read_bytes()[:n])
)
def test_fuzz_random_or_cut_input_never_escapes_the_error_tree(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.mitm"
    path.write_bytes(data)
    reader = MitmReader(path)
    try:
        list(reader)
    except InputFormatError as exc:
        assert exc.path == str(path) and str(exc)


def test_real_flows_of_every_type() -> None:
    # mitmdump 11.0.2 in six modes at once (tests/recorder/mitm_flows.py): HTTP/1.1 and HTTP/2 in
    # reverse mode, forward mode (absolute-form and a CONNECT tunnel), WebSocket, TCP, UDP and DNS.
    exchanges, reader = read(EVERY_TYPE)
    report = reader.report
    assert report.records == 15 and report.imported == 12 and report.torn_tail is None
    assert report.skipped == {
        "TCPFlow flows (not HTTP)": 1,
        "UDPFlow flows (not HTTP)": 1,
        "DNSFlow flows (not HTTP)": 1,
    }
    assert report.failures == {"aborted": 1, "cancelled": 2, "connect-error": 1}
    got = {ex.request.target: ex for ex in exchanges}
    assert got["/slow"].primary == Failure(FailureKind.ABORTED, "Client disconnected.")
    refused = got["/nothing"].primary
    assert isinstance(refused, Failure) and refused.kind == FailureKind.CONNECT_ERROR
    assert refused.message.startswith("[Errno 111] Connect call failed")
    assert got["/kill"].primary == Failure(FailureKind.CANCELLED, "Connection killed.")
    # stream_large_bodies: mitmdump passed the 64 KiB body on without keeping it.
    big = got["/big"]
    assert isinstance(big.primary, Response) and big.primary.body == b"" and big.primary.truncated_from == 65536
    assert big.tags["mitm.response_body"] == "missing"
    assert report.notes["bodies mitmproxy streamed without keeping (body empty, size from Content-Length)"] == 1
    h2 = got["/get?h2=1"]
    assert h2.request.http_version == "2" and h2.request.authority.startswith("127.0.0.1:")
    assert not any(name.startswith(b":") for name, _ in h2.request.headers)
    assert got["/ws"].tags["mitm.websocket_messages"] == "4"
    for target in ("/get?via=proxy", "/get?tunnel=1"):
        forwarded = got[target]
        assert isinstance(forwarded.primary, Response) and forwarded.primary.status == 200
        assert forwarded.request.authority == got["/get?x=1"].request.authority
    # One keep-alive connection carried the first requests: they share its id.
    first = [got[t].connection_id for t in ("/get?x=1", "/post", "/big")]
    assert first[0] and first.count(first[0]) == 3 and got["/get?h2=1"].connection_id != first[0]
