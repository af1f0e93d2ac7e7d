"""gRPC over HTTP/2 through the importers and exporters, from a real mitmproxy capture (flows and
HAR) of a real grpcio client and server: version, trailers and messages in, and kept on the way out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadowtap.recorder import Exchange, Response
from shadowtap.recorder.formats.har import HarReader, write_har
from shadowtap.recorder.formats.mitm import MitmReader, write_mitm
from shadowtap.recorder.model import StreamMessage
from tests.recorder.mitm_grpc import GrpcCapture, capture


@pytest.fixture(scope="module")
def grpc_capture(tmp_path_factory: pytest.TempPathFactory) -> GrpcCapture:
    return capture(tmp_path_factory.mktemp("grpc-capture"))


def check_calls(exchanges: list[Exchange], *, with_trailers: bool = True) -> None:
    found, missing = exchanges
    for ex in exchanges:
        assert ex.request.http_version == "2"
        assert ex.request.target == "/shop.Catalog/GetProduct"
        assert ex.request.header(b"content-type") == b"application/grpc"
        assert ex.request.messages == (StreamMessage(0, len(ex.request.body) - 5),)
    assert isinstance(found.primary, Response) and isinstance(missing.primary, Response)
    assert found.primary.http_version == "2" and found.primary.status == 200
    assert found.primary.messages == (StreamMessage(0, len(found.primary.body) - 5),)
    if with_trailers:
        assert found.primary.trailers == ((b"grpc-status", b"0"), (b"grpc-message", b""), (b"shop-region", b"eu"))
    # Trailers-only: the status in the one HEADERS frame, no body, no trailers.
    assert missing.primary.header(b"grpc-status") == b"5"
    assert missing.primary.header(b"grpc-message") == b"no product missing"
    assert missing.primary.body == b"" and missing.primary.trailers == () and missing.primary.messages == ()


def test_the_capture_is_what_the_client_saw(grpc_capture: GrpcCapture) -> None:
    assert grpc_capture.found.name == "Desk lamp"
    assert grpc_capture.not_found_code == "NOT_FOUND"


def test_mitm_grpc_flows_import_with_version_trailers_and_messages(grpc_capture: GrpcCapture) -> None:
    exchanges = list(MitmReader(grpc_capture.flows))
    check_calls(exchanges)
    found = exchanges[0].primary
    assert isinstance(found, Response) and found.body.endswith(b"Desk lamp \x01")


def test_mitm_export_keeps_http2_and_trailers(grpc_capture: GrpcCapture, tmp_path: Path) -> None:
    exchanges = list(MitmReader(grpc_capture.flows))
    write_mitm(exchanges, tmp_path / "again.mitm")
    again = list(MitmReader(tmp_path / "again.mitm"))
    check_calls(again)
    assert [(e.request, e.primary) for e in again] == [(e.request, e.primary) for e in exchanges]


def test_mitmproxys_own_har_of_the_calls_imports_as_http2(grpc_capture: GrpcCapture) -> None:
    document = json.loads(grpc_capture.har.read_text())
    assert {e["request"]["httpVersion"] for e in document["log"]["entries"]} == {"HTTP/2.0"}
    exchanges = list(HarReader(grpc_capture.har))
    # mitmproxy's HAR has no place for trailers (HAR 1.2 has none): the rest is there.
    check_calls(exchanges, with_trailers=False)


def test_har_export_keeps_http2_and_trailers(grpc_capture: GrpcCapture, tmp_path: Path) -> None:
    exchanges = list(MitmReader(grpc_capture.flows))
    write_har(exchanges, tmp_path / "grpc.har")
    entries = json.loads((tmp_path / "grpc.har").read_text())["log"]["entries"]
    assert [e["response"]["httpVersion"] for e in entries] == ["HTTP/2.0", "HTTP/2.0"]
    assert entries[0]["response"]["_trailers"] == [
        {"name": "grpc-status", "value": "0"},
        {"name": "grpc-message", "value": ""},
        {"name": "shop-region", "value": "eu"},
    ]
    again = list(HarReader(tmp_path / "grpc.har"))
    check_calls(again)
    assert [(e.request.body, e.primary) for e in again] == [(e.request.body, e.primary) for e in exchanges]


@pytest.mark.parametrize("version", ["h2", "HTTP/2.0", "http/2.0"])
def test_har_http2_spellings_import_as_2(version: str, tmp_path: Path) -> None:
    entry = {
        "startedDateTime": "2026-12-05T03:00:00.000Z",
        "time": 1,
        "request": {"method": "GET", "url": "https://shop.test/a", "httpVersion": version, "cookies": [],
                    "headers": [{"name": ":authority", "value": "shop.test"}], "queryString": [], "headersSize": -1,
                    "bodySize": 0},
        "response": {"status": 200, "statusText": "", "httpVersion": version, "cookies": [], "headers": [],
                     "content": {"size": 0, "mimeType": "text/plain", "text": ""}, "redirectURL": "",
                     "headersSize": -1, "bodySize": 0},
        "cache": {},
        "timings": {"send": 0, "wait": 1, "receive": 0},
    }  # fmt: skip
    (tmp_path / "h2.har").write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "t", "version": "1"},
                                                         "entries": [entry]}}))  # fmt: skip
    (exchange,) = HarReader(tmp_path / "h2.har")
    assert exchange.request.http_version == "2" and exchange.request.headers == ()
    assert isinstance(exchange.primary, Response) and exchange.primary.http_version == "2"
