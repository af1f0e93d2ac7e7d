"""HAR 1.2 import (streaming, mapping, errors with JSON pointers) and export (loadable by mitmproxy)."""

from __future__ import annotations

import base64
import gzip
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowtap.recorder import Exchange, Failure, FailureKind, InputFormatError, Request, Response, Timing
from shadowtap.recorder.formats import HarReader, write_har
from shadowtap.recorder.formats import har as har_module
from tests.recorder.browser_har import BINARY, GZIPPED_JSON, UPLOAD

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE = FIXTURES / "mitmproxy" / "httpbin.har"
CHROMIUM_HAR = FIXTURES / "chromium" / "playwright.har"
CHROMIUM_ATTACH_HAR = FIXTURES / "chromium" / "attach" / "playwright.har"


def entry(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "startedDateTime": "2024-05-01T10:00:00.250Z",
        "time": 12.5,
        "request": {
            "method": "GET",
            "url": "https://api.test/items?id=7",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [{"name": "Host", "value": "api.test"}],
            "queryString": [],
            "headersSize": -1,
            "bodySize": 0,
        },
        "response": {
            "status": 200,
            "statusText": "OK",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [{"name": "Content-Type", "value": "text/plain"}],
            "content": {"size": 2, "mimeType": "text/plain", "text": "hi"},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": 2,
        },
        "cache": {},
        "timings": {"blocked": -1, "dns": 1, "connect": 2, "send": 0.5, "wait": 8, "receive": 1},
    }
    base.update(overrides)
    return base


def har_file(tmp_path: Path, entries: list[Any], name: str = "t.har") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "t"}, "entries": entries}}))
    return path


def read(path: Path) -> tuple[list[Exchange], HarReader]:
    reader = HarReader(path)
    return list(reader), reader


def test_real_mitmproxy_har_imports_all_fourteen() -> None:
    exchanges, reader = read(FIXTURE)
    assert reader.report.imported == 14 and reader.report.records == 14 and reader.report.skipped == {}
    by_path = {(ex.request.method, ex.request.path): ex for ex in exchanges}
    first = exchanges[0]
    assert first.request.target == "/get?i=1" and first.request.authority == "127.0.0.1:8001"
    assert first.request.headers[0] == (b"Host", b"127.0.0.1:8001")
    assert first.started_at_ns == 1795314247469371000
    assert first.timings["primary"] == Timing(sent_ns=4502296, first_byte_ns=9817123, done_ns=11364937)
    multipart = exchanges[2]
    assert multipart.request.body.startswith(b"--------------------------376e45c52e163227\r\n")
    assert len(multipart.request.body) == 302
    put = by_path[("PUT", "/put")].request
    assert len(put.body) == 7 and b"=" in put.body
    gz = by_path[("GET", "/gzip")]
    assert isinstance(gz.primary, Response) and gz.primary.header(b"content-encoding") is None
    assert gz.primary.header(b"content-length") == str(len(gz.primary.body)).encode()
    assert json.loads(gz.primary.body)["gzipped"] is True and gz.tags["har.decoded.response"] == "gzip"
    br = by_path[("GET", "/brotli")]
    assert br.tags["har.decoded.response"] == "br" and json.loads(br.primary.body)["brotli"] is True  # type: ignore[union-attr]
    png = by_path[("GET", "/image/png")].primary
    assert isinstance(png, Response) and png.body.startswith(b"\x89PNG") and len(png.body) == 8090
    head = by_path[("HEAD", "/html")].primary
    assert isinstance(head, Response) and head.body == b"" and head.truncated_from is None
    unavailable = by_path[("GET", "/status/503")].primary
    assert isinstance(unavailable, Response) and unavailable.status == 503
    assert "bodies stored decoded by HAR (Content-Encoding dropped)" in reader.report.notes


def test_small_read_chunks_give_the_same_exchanges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = [(ex.request, ex.primary) for ex in read(FIXTURE)[0]]
    # A 7-byte read size splits every string, number and multi-byte character across refills.
    monkeypatch.setattr(har_module, "_CHUNK_BYTES", 7)
    got = [(ex.request, ex.primary) for ex in read(FIXTURE)[0]]
    assert got == expected


def test_entries_before_or_after_other_log_keys_and_a_bom(tmp_path: Path) -> None:
    text = json.dumps({"pages": [{"id": "p"}], "entries": [entry()], "version": "1.2", "extra": 1.25})
    path = tmp_path / "odd.har"
    path.write_bytes(b"\xef\xbb\xbf" + f'{{"other": [1, 2], "log": {text}, "z": null}}'.encode())
    exchanges, _ = read(path)
    assert len(exchanges) == 1 and exchanges[0].request.scheme == "https"


def test_mapping_of_a_browser_style_entry(tmp_path: Path) -> None:
    h2 = entry(connection="4711", serverIPAddress="10.0.0.1")
    h2["request"]["httpVersion"] = "h2"
    h2["request"]["headers"] = [{"name": ":authority", "value": "api.test"}, {"name": "accept", "value": "*/*"}]
    h2["response"]["content"] = {
        "size": 3,
        "mimeType": "application/octet-stream",
        "text": "AAEC",
        "encoding": "base64",
    }
    failed = entry()
    failed["response"] = {
        "status": 0,
        "statusText": "",
        "httpVersion": "",
        "headers": [],
        "cookies": [],
        "content": {"size": 0, "mimeType": "x-unknown"},
        "_error": "net::ERR_CONNECTION_REFUSED",
    }
    (ok, err), reader = read(har_file(tmp_path, [h2, failed]))
    assert ok.request.headers == ((b"accept", b"*/*"),) and ok.request.http_version == "2"
    assert isinstance(ok.primary, Response) and ok.primary.body == b"\x00\x01\x02"
    assert ok.connection_id == "4711" and ok.tags["har.server_ip"] == "10.0.0.1"
    assert ok.started_at_ns == 1714557600250000000
    assert ok.timings["primary"] == Timing(sent_ns=3_000_000, first_byte_ns=11_500_000, done_ns=12_500_000)
    assert err.primary == Failure(FailureKind.CONNECT_ERROR, "net::ERR_CONNECTION_REFUSED")
    assert reader.report.failures == {"connect-error": 1} and reader.report.notes == {}


def test_post_params_without_text_are_encoded(tmp_path: Path) -> None:
    form = entry()
    form["request"]["method"] = "POST"
    form["request"]["postData"] = {
        "mimeType": "application/x-www-form-urlencoded",
        "params": [{"name": "a b", "value": "1&2"}, {"name": "c", "value": ""}],
    }
    multipart = entry()
    multipart["request"]["postData"] = {
        "mimeType": "multipart/form-data; boundary=XyZ",
        "params": [{"name": "f", "fileName": "a.txt", "contentType": "text/plain", "value": "data"}],
    }
    (a, b), _ = read(har_file(tmp_path, [form, multipart]))
    assert a.request.body == b"a+b=1%262&c="
    assert b.request.body == (
        b'--XyZ\r\nContent-Disposition: form-data; name="f"; filename="a.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\ndata\r\n--XyZ--\r\n"
    )


def test_missing_content_text_marks_the_body_truncated(tmp_path: Path) -> None:
    e = entry()
    e["response"]["content"] = {"size": 1234, "mimeType": "image/png"}
    (ex,), reader = read(har_file(tmp_path, [e]))
    assert isinstance(ex.primary, Response) and ex.primary.body == b"" and ex.primary.truncated_from == 1234


@pytest.mark.parametrize(
    ("mutate", "pointer", "message"),
    [
        (lambda e: e["request"].update(headers="nope"), "log.entries[1].request.headers", "must be an array"),
        (lambda e: e["request"]["headers"].append({"name": "x"}), "log.entries[1].request.headers[1].value", "missing"),
        (lambda e: e["request"].pop("url"), "log.entries[1].request.url", "missing 'url'"),
        (lambda e: e["request"].update(url="/relative"), "log.entries[1].request.url", "not absolute"),
        (lambda e: e["request"].update(url="api.test:8080/p"), "log.entries[1].request.url", "not absolute"),
        (lambda e: e.update(startedDateTime="yesterday"), "log.entries[1].startedDateTime", "ISO 8601"),
        (lambda e: e["response"].update(status="200"), "log.entries[1].response.status", "must be a number"),
        (lambda e: e["response"].update(status=True), "log.entries[1].response.status", "must be a number"),
        (
            lambda e: e["response"]["content"].update(text="%%%", encoding="base64"),
            "log.entries[1].response.content.text",
            "invalid base64",
        ),
    ],
)
def test_bad_entries_name_file_offset_and_json_pointer(tmp_path: Path, mutate: Any, pointer: str, message: str) -> None:
    bad = entry()
    mutate(bad)
    path = har_file(tmp_path, [entry(), bad])
    with pytest.raises(InputFormatError, match=message) as info:
        list(HarReader(path))
    err = info.value
    assert err.field == pointer and err.path == str(path)
    data = path.read_bytes()
    assert err.offset is not None and data[err.offset : err.offset + 1] == b"{" and err.offset > data.index(b"entries")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "does not start with a JSON object"),
        ('{"log": {"version": "1.2"}}', "no 'entries' array"),
        ('{"nolog": 1}', "no 'log' object"),
        ('{"log": {"entries": [{"a": [1, 2', "file ends inside this value"),
        ('{"log": {"entries": [7]}}', "entry must be an object"),
        ('{"log": {"entries": [' + json.dumps(entry()) + ' {"b": 2}]}}', "expected ',' or ']'"),
        ('{"log": {"entries": []}} trailing', "unexpected data after"),
        ("", "does not start with a JSON object"),
    ],
)
def test_structural_errors_are_clear(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.har"
    path.write_text(text)
    with pytest.raises(InputFormatError, match=message) as info:
        list(HarReader(path))
    assert info.value.path == str(path)


def test_non_utf8_and_oversized_entries_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "latin1.har"
    path.write_bytes(b'{"log": {"entries": [{"x": "caf\xe9"}]}}')
    with pytest.raises(InputFormatError, match="not UTF-8") as info:
        list(HarReader(path))
    assert info.value.offset == path.read_bytes().index(b"\xe9")
    big = har_file(tmp_path, [entry(comment="x" * 5000)], "big.har")
    with pytest.raises(InputFormatError, match="larger than 1000 bytes"):
        list(HarReader(big, max_entry_bytes=1000))
    # The buffer stops growing at the bound while the entry is still incomplete, too.
    monkeypatch.setattr(har_module, "_CHUNK_BYTES", 64)
    with pytest.raises(InputFormatError, match="larger than 1000 bytes") as info:
        list(HarReader(big, max_entry_bytes=1000))
    assert info.value.field == "log.entries[0]"


def test_empty_entries_import_nothing(tmp_path: Path) -> None:
    exchanges, reader = read(har_file(tmp_path, []))
    assert exchanges == [] and reader.report.records == 0


def test_export_round_trip_keeps_method_path_headers_bodies_status(tmp_path: Path) -> None:
    original, _ = read(FIXTURE)
    out = tmp_path / "out.har"
    report = write_har(original, out, creator_version="0.1.0")
    assert report.exported == 14
    again, _ = read(out)
    for before, after in zip(original, again, strict=True):
        assert after.request == before.request
        assert after.primary == before.primary
        assert after.started_at_ns == before.started_at_ns
        assert after.timings == before.timings


def test_export_decodes_wire_bodies_and_marks_binary_as_base64(tmp_path: Path) -> None:
    wire = gzip.compress(b'{"a": 1}')
    exchanges = [
        Exchange(
            id="1",
            started_at_ns=1_700_000_000_123_456_000,
            request=Request(
                "POST",
                "/up",
                ((b"Host", b"h.test"), (b"Content-Type", b"application/octet-stream")),
                b"\xff\x00binary",
                authority="h.test",
            ),
            primary=Response(200, "OK", ((b"Content-Encoding", b"gzip"), (b"Content-Type", b"application/json")), wire),
            timings={"primary": Timing(sent_ns=1_000_000, first_byte_ns=3_000_000, done_ns=4_000_000)},
        ),
        Exchange(id="2", started_at_ns=1, request=Request("GET", "/"), primary=Failure(FailureKind.TIMEOUT, "slow")),
    ]
    out = tmp_path / "o.har"
    write_har(exchanges, out)
    doc = json.loads(out.read_text())
    first, second = doc["log"]["entries"]
    assert doc["log"]["version"] == "1.2" and first["startedDateTime"] == "2023-11-14T22:13:20.123456+00:00"
    assert first["response"]["content"]["text"] == '{"a": 1}' and first["response"]["content"]["size"] == 8
    assert {"name": "Content-Encoding", "value": "gzip"} in first["response"]["headers"]
    post = first["request"]["postData"]
    assert post["encoding"] == "base64" and base64.b64decode(post["text"]) == b"\xff\x00binary"
    assert first["timings"]["connect"] == 1.0 and first["timings"]["wait"] == 2.0 and first["time"] == 4.0
    assert second["response"]["status"] == 0 and second["response"]["_error"] == "slow"
    assert second["response"]["_shadowtapFailureKind"] == "timeout"
    back, _ = read(out)
    assert back[0].request.body == b"\xff\x00binary"
    assert back[1].primary == Failure(FailureKind.TIMEOUT, "slow")


def test_exported_har_loads_in_mitmproxy(tmp_path: Path) -> None:
    from mitmproxy import http
    from mitmproxy.io import FlowReader

    original, _ = read(FIXTURE)
    out = tmp_path / "for-mitm.har"
    write_har(original, out)
    with warnings.catch_warnings(), out.open("rb") as stream:
        flows = list(FlowReader(stream).stream())
    assert len(flows) == 14
    for flow, ex in zip(flows, original, strict=True):
        assert isinstance(flow, http.HTTPFlow) and flow.response is not None
        assert flow.request.method == ex.request.method and flow.request.path == ex.request.target
        assert isinstance(ex.primary, Response) and flow.response.status_code == ex.primary.status
        assert flow.response.content == ex.primary.body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=62405 - 1))  # the fixture is 62,405 bytes; keep its last "}" off
def test_fuzz_truncated_har_is_a_clear_error(tmp_path: Path, cut: int) -> None:
    data = FIXTURE.read_bytes()[:cut]
    path = tmp_path / "cut.har"
    path.write_bytes(data)
    reader = HarReader(path)
    with pytest.raises(InputFormatError) as info:
        list(reader)
    assert info.value.path == str(path)
    assert reader.report.imported <= 14


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "log",
                    "entries",
                    "request",
                    "response",
                    "method",
                    "url",
                    "headers",
                    "name",
                    "value",
                    "status",
                    "content",
                    "text",
                    "startedDateTime",
                    "postData",
                    "timings",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=json_values)
def test_fuzz_random_json_never_escapes_the_error_tree(tmp_path: Path, doc: Any) -> None:
    path = tmp_path / "random.har"
    path.write_text(json.dumps({"log": {"entries": [doc]}}) if isinstance(doc, dict) else json.dumps(doc))
    try:
        list(HarReader(path))
    except InputFormatError as exc:
        assert exc.path == str(path) and str(exc)


def test_gzipped_har_is_read_as_it_streams(tmp_path: Path) -> None:
    packed = tmp_path / "httpbin.har.gz"
    packed.write_bytes(gzip.compress(FIXTURE.read_bytes()))
    assert [(e.request, e.primary) for e in read(packed)[0]] == [(e.request, e.primary) for e in read(FIXTURE)[0]]
    cut = tmp_path / "cut.har.gz"
    cut.write_bytes(packed.read_bytes()[:-100])
    with pytest.raises(InputFormatError, match="file ends inside this value") as info:
        list(HarReader(cut))
    assert info.value.path == str(cut)
    corrupt = tmp_path / "corrupt.har.gz"
    corrupt.write_bytes(packed.read_bytes()[:10] + b"\xff" * 50)  # gzip header, then an invalid block type
    with pytest.raises(InputFormatError, match="corrupt gzip data"):
        list(HarReader(corrupt))


def test_memory_stays_bounded_however_long_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    one = entry()
    one["response"]["content"]["text"] = "y" * 900
    path = tmp_path / "long.har"
    with path.open("w") as out:
        out.write('{"log": {"version": "1.2", "entries": [')
        out.write(",".join(json.dumps(one) for _ in range(3000)))
        out.write("]}}")
    assert path.stat().st_size > 4_000_000
    monkeypatch.setattr(har_module, "_CHUNK_BYTES", 64 * 1024)
    tracemalloc.start()
    try:
        count = sum(1 for _ in HarReader(path))
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 3000
    # The sliding buffer holds about one read chunk plus one entry, never the 4 MB document.
    assert peak_bytes < 1_000_000


# --- what real producers write ------------------------------------------------------------------------


def by_target(exchanges: list[Exchange]) -> dict[str, Exchange]:
    return {ex.request.target: ex for ex in exchanges}


def test_real_chromium_har_imports_every_entry_and_aborted_ones_as_failures() -> None:
    # Recorded by Chromium through Playwright (tests/recorder/browser_har.py): aborted, blocked and
    # refused requests are written with status -1, no headers and the reason in ``_failureText``.
    exchanges, reader = read(CHROMIUM_HAR)
    report = reader.report
    assert report.records == report.imported == 15 and report.skipped == {}
    assert report.failures == {"aborted": 3, "connect-error": 1}
    got = by_target(exchanges)
    assert got["/blocked/pixel.png"].primary == Failure(FailureKind.ABORTED, "net::ERR_BLOCKED_BY_CLIENT.Inspector")
    assert got["/slow"].primary == Failure(FailureKind.ABORTED, "net::ERR_ABORTED")
    assert got["/blocked/api"].primary == Failure(FailureKind.ABORTED, "net::ERR_FAILED")
    assert got["/nothing"].primary == Failure(FailureKind.CONNECT_ERROR, "net::ERR_CONNECTION_REFUSED")
    assert all(ex.timings == {} for ex in exchanges if isinstance(ex.primary, Failure))

    def answer(target: str) -> Response:
        outcome = got[target].primary
        assert isinstance(outcome, Response), target
        return outcome

    assert answer("/").body.startswith(b"<!doctype html>") and answer("/api/items?page=1").status == 200
    echo = got["/api/echo"]
    assert json.loads(echo.request.body) == {"name": "café", "n": 1} == json.loads(answer("/api/echo").body)
    assert answer("/binary").body == BINARY  # base64 content
    assert answer("/gzip").body == GZIPPED_JSON and got["/gzip"].tags["har.decoded.response"] == "gzip"
    assert answer("/gzip").header(b"content-encoding") is None
    # Playwright keeps no text for an application/octet-stream request body, only its bodySize.
    upload = got["/upload"].request
    assert upload.body == b"" and upload.truncated_from == len(UPLOAD)
    assert got["/form"].request.body == b"q=a+b&lang=%C3%A9"
    multipart = got["/multipart"].request
    assert len(multipart.body) == 276 and multipart.body.startswith(b"------WebKitFormBoundary")
    websocket = got["/ws"]
    assert websocket.request.scheme == "http" and answer("/ws").status == 101 and answer("/ws").body == b""
    assert websocket.tags["har.websocket_messages"] == "2"
    # A redirect's body is not kept: content.size -1, but bodySize says 10 bytes came.
    assert answer("/redirect").status == 302 and answer("/redirect").truncated_from == 10
    assert json.loads(answer("/api/items?from=redirect").body) == {"items": [1, 2, 3]}
    assert report.notes["request bodies the HAR does not hold (body empty, truncated_from set)"] == 1
    assert report.notes["WebSocket entries (the upgrade kept, messages as a count in tags)"] == 1
    assert "failures: 3 aborted, 1 connect-error" in report.summary()


def test_playwright_attach_mode_bodies_come_from_the_files_beside_the_har() -> None:
    # record_har_content="attach": every body is a file named in ``_file``; postData.text is "".
    exchanges, reader = read(CHROMIUM_ATTACH_HAR)
    got = by_target(exchanges)
    assert reader.report.imported == 15 and reader.report.failures == {"aborted": 3, "connect-error": 1}
    assert got["/upload"].request.body == UPLOAD and got["/upload"].request.truncated_from is None
    assert json.loads(got["/api/echo"].request.body) == {"name": "café", "n": 1}
    assert got["/form"].request.body == b"q=a+b&lang=%C3%A9"
    assert len(got["/multipart"].request.body) == 276
    binary = got["/binary"].primary
    assert isinstance(binary, Response) and binary.body == BINARY
    gz = got["/gzip"].primary
    assert isinstance(gz, Response) and gz.body == GZIPPED_JSON and gz.header(b"content-encoding") is None
    # The WebSocket's ``_file`` holds its messages (JSON lines), not a body.
    ws = got["/ws"]
    assert isinstance(ws.primary, Response) and ws.primary.body == b"" and ws.tags["har.websocket_messages"] == "2"
    # 8 response and 4 request bodies; the WebSocket's messages file is not counted as a body.
    assert reader.report.notes["bodies read from the files beside the HAR (_file)"] == 12
    # Playwright may end the HAR before the body of a followed redirect is in: no file, size -1.
    assert reader.report.notes["responses whose body the HAR does not hold and whose size it does not know"] == 1


def test_attached_body_files_must_sit_beside_the_har(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("not yours")
    for name in ("../secret", "/etc/passwd", "sub/x.bin", "..", ""):
        e = entry()
        e["response"]["content"] = {"size": 9, "mimeType": "text/plain", "_file": name}
        with pytest.raises(InputFormatError, match="_file must name a file beside the HAR") as info:
            list(HarReader(har_file(tmp_path, [e])))
        assert info.value.field == "log.entries[0].response.content._file"
    gone = entry()
    gone["response"]["content"] = {"size": 9, "mimeType": "text/plain", "_file": "gone.txt"}
    (ex,), reader = read(har_file(tmp_path, [gone]))
    assert isinstance(ex.primary, Response) and ex.primary.body == b"" and ex.primary.truncated_from == 9
    assert reader.report.notes == {"bodies whose _file is missing (body empty, truncated_from set)": 1}


def devtools_entry(**overrides: Any) -> dict[str, Any]:
    # Chrome DevTools "Save all as HAR" (front_end/models/har/Log.ts): ``_error`` on every response
    # (null when fine), ``_initiator``, ``_priority``, ``_resourceType``, ``_transferSize``, queueing time.
    e = entry(_initiator={"type": "script", "stack": {"callFrames": []}}, _priority="High", _resourceType="fetch")
    e["response"].update(_transferSize=180, _error=None)
    e["timings"].update(_blocked_queueing=0.4, ssl=-1)
    e.update(overrides)
    return e


def test_devtools_har_failures_cache_hits_and_websockets(tmp_path: Path) -> None:
    blocked = devtools_entry()
    blocked["request"]["url"] = "https://ads.test/pixel.gif"
    blocked["response"] = {
        "status": 0,
        "statusText": "",
        "httpVersion": "",
        "headers": [],
        "cookies": [],
        "content": {"size": 0, "mimeType": "x-unknown"},
        "redirectURL": "",
        "headersSize": -1,
        "bodySize": -1,
        "_transferSize": 0,
        "_error": "net::ERR_BLOCKED_BY_CLIENT",
    }
    cached = devtools_entry(_fromCache="memory")
    cached["response"]["bodySize"] = 0
    cut = devtools_entry()
    cut["response"]["_error"] = "net::ERR_INCOMPLETE_CHUNKED_ENCODING"
    socket = devtools_entry(
        _resourceType="websocket",
        _webSocketMessages=[
            {"type": "send", "time": 1714557600.3, "opcode": 1, "data": "hi"},
            {"type": "receive", "time": 1714557600.4, "opcode": 1, "data": "hello"},
            {"type": "receive", "time": 1714557600.5, "opcode": 2, "data": "AAE="},
        ],
    )
    socket["request"]["url"] = "wss://api.test/live"
    socket["response"].update(
        status=101, statusText="Switching Protocols", content={"size": 0, "mimeType": "x-unknown"}
    )
    (b, c, t, w), reader = read(har_file(tmp_path, [blocked, cached, cut, socket]))
    assert b.primary == Failure(FailureKind.ABORTED, "net::ERR_BLOCKED_BY_CLIENT")
    assert isinstance(c.primary, Response) and c.primary.body == b"hi" and c.tags["har.from_cache"] == "memory"
    assert isinstance(t.primary, Response) and t.tags["har.error"] == "net::ERR_INCOMPLETE_CHUNKED_ENCODING"
    assert w.request.scheme == "https" and w.tags["har.websocket_messages"] == "3"
    assert isinstance(w.primary, Response) and w.primary.status == 101
    assert reader.report.failures == {"aborted": 1}
    assert reader.report.notes == {
        "responses the browser served from its cache (tag har.from_cache)": 1,
        "responses with a browser error after the head (tag har.error)": 1,
        "WebSocket entries (the upgrade kept, messages as a count in tags)": 1,
    }


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("net::ERR_ABORTED", FailureKind.ABORTED),
        ("net::ERR_FAILED", FailureKind.ABORTED),
        ("net::ERR_BLOCKED_BY_CLIENT", FailureKind.ABORTED),
        ("net::ERR_BLOCKED_BY_ORB", FailureKind.ABORTED),
        ("net::ERR_BLOCKED_BY_RESPONSE.NotSameOrigin", FailureKind.ABORTED),
        ("NS_BINDING_ABORTED", FailureKind.ABORTED),
        ("", FailureKind.ABORTED),
        ("net::ERR_CONNECTION_REFUSED", FailureKind.CONNECT_ERROR),
        ("net::ERR_NAME_NOT_RESOLVED", FailureKind.CONNECT_ERROR),
        ("net::ERR_ADDRESS_UNREACHABLE", FailureKind.CONNECT_ERROR),
        ("net::ERR_CERT_AUTHORITY_INVALID", FailureKind.CONNECT_ERROR),
        ("net::ERR_SSL_PROTOCOL_ERROR", FailureKind.CONNECT_ERROR),
        ("net::ERR_TIMED_OUT", FailureKind.TIMEOUT),
        ("net::ERR_CONNECTION_TIMED_OUT", FailureKind.TIMEOUT),
        ("net::ERR_CONNECTION_RESET", FailureKind.RESET),
        ("net::ERR_CONNECTION_CLOSED", FailureKind.RESET),
        ("net::ERR_EMPTY_RESPONSE", FailureKind.RESET),
        ("net::ERR_INVALID_HTTP_RESPONSE", FailureKind.BAD_RESPONSE),
        ("net::ERR_TOO_MANY_REDIRECTS", FailureKind.OTHER),
    ],
)
def test_browser_error_names_map_to_failure_kinds(tmp_path: Path, error: str, kind: str) -> None:
    failed = entry()
    failed["response"] = {"status": -1, "headers": [], "content": {"size": -1}, "_failureText": error}
    (ex,), reader = read(har_file(tmp_path, [failed]))
    assert ex.primary == Failure(kind, error or "no response (status -1)")
    assert reader.report.failures == {kind: 1}


def test_other_statuses_below_100_are_still_errors(tmp_path: Path) -> None:
    odd = entry()
    odd["response"]["status"] = -2
    with pytest.raises(InputFormatError, match="status -2 is not an HTTP status"):
        list(HarReader(har_file(tmp_path, [odd])))


def firefox_har(tmp_path: Path, entries: list[Any]) -> Path:
    # Firefox's netmonitor (devtools/client/netmonitor/src/har/har-builder.js): creator first,
    # ``connection`` is the server's port, ``_securityState`` on every entry, dates with an offset.
    path = tmp_path / "firefox.har"
    log = {
        "version": "1.2",
        "creator": {"name": "Firefox", "version": "128.0"},
        "browser": {"name": "Firefox", "version": "128.0"},
        "pages": [{"id": "page_1", "title": "https://api.test/", "startedDateTime": "2024-05-01T12:00:00.250+02:00"}],
        "entries": entries,
    }
    path.write_text(json.dumps({"log": log}))
    return path


def firefox_entry(**overrides: Any) -> dict[str, Any]:
    e = entry(startedDateTime="2024-05-01T12:00:00.250+02:00", connection="443", _securityState="secure")
    e["serverIPAddress"] = "10.0.0.1"
    e["request"]["httpVersion"] = "HTTP/2"
    e["response"]["httpVersion"] = "HTTP/2"
    e.update(overrides)
    return e


def test_firefox_har_quirks(tmp_path: Path) -> None:
    aborted = firefox_entry()
    # Firefox writes status 0 and no reason for an aborted or blocked request; mimeType is left out.
    aborted["response"] = {
        "status": 0,
        "statusText": "",
        "httpVersion": "",
        "headers": [],
        "cookies": [],
        "content": {"size": -1},
        "redirectURL": "",
        "headersSize": -1,
        "bodySize": -1,
    }
    aborted["timings"] = {}
    not_included = firefox_entry()
    not_included["response"]["content"] = {
        "mimeType": "image/png",
        "size": 1234,
        "comment": "Response bodies are not included.",
    }
    not_included["response"]["bodySize"] = -1
    image = firefox_entry()
    image["response"]["content"] = {"mimeType": "image/png", "size": 3, "encoding": "base64", "text": "iVBO"}
    form = firefox_entry()
    form["request"]["method"] = "POST"
    form["request"]["bodySize"] = -1
    form["request"]["postData"] = {
        "mimeType": "application/x-www-form-urlencoded",
        "params": [{"name": "q", "value": "a b"}],
        "text": "",
    }
    (a, n, i, f), reader = read(firefox_har(tmp_path, [aborted, not_included, image, form]))
    assert a.primary == Failure(FailureKind.ABORTED, "no response (status 0)")
    assert isinstance(n.primary, Response) and n.primary.body == b"" and n.primary.truncated_from == 1234
    assert isinstance(i.primary, Response) and i.primary.body == b"\x89PN"
    assert f.request.body == b"q=a+b"
    # The port is no connection: requests must not be chained into one replay session by it.
    assert {ex.connection_id for ex in (a, n, i, f)} == {""}
    assert {ex.tags["har.server_port"] for ex in (a, n, i, f)} == {"443"}
    assert i.started_at_ns == 1714557600250000000 and i.request.http_version == "2"
    assert reader.report.failures == {"aborted": 1}
    assert reader.report.notes["entries whose 'connection' is the server port (Firefox; tag har.server_port)"] == 4


def test_connection_is_a_connection_id_for_other_producers(tmp_path: Path) -> None:
    (ex,), _ = read(har_file(tmp_path, [entry(connection="443")]))
    assert ex.connection_id == "443" and "har.server_port" not in ex.tags


def test_an_unknown_failure_kind_in_the_har_is_not_trusted(tmp_path: Path) -> None:
    failed = entry()
    failed["response"] = {"status": 0, "headers": [], "content": {}, "_error": "net::ERR_ABORTED"}
    failed["response"]["_shadowtapFailureKind"] = "made-up"
    (ex,), _ = read(har_file(tmp_path, [failed]))
    assert ex.primary == Failure(FailureKind.ABORTED, "net::ERR_ABORTED")


def test_entries_that_are_not_http_are_skipped_and_counted(tmp_path: Path) -> None:
    # Playwright records a fetch of a blob: URL made on an about:blank page (seen with Chromium 156) as
    # an entry; a data: URL entry has no host either. Neither was an HTTP request.
    blob = entry()
    blob["request"]["url"] = "blob:null/1e17e82f-10f3-452d-aaac-0e64f8d1b2c3"
    data = entry()
    data["request"]["url"] = "data:text/plain,hello"
    (ex,), reader = read(har_file(tmp_path, [blob, entry(), data]))
    assert ex.request.authority == "api.test"
    assert reader.report.records == 3 and reader.report.imported == 1
    assert reader.report.skipped == {"entries with a blob: URL (not HTTP)": 1, "entries with a data: URL (not HTTP)": 1}
