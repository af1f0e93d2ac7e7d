"""GoReplay .gor import (records, pairing, torn tails, errors) and export, over real GoReplay captures."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowtap.recorder import REPLAY, Exchange, Failure, FailureKind, InputFormatError, Request, Response, Timing
from shadowtap.recorder.formats import GorReader, write_gor
from shadowtap.recorder.formats.gor import SEPARATOR

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "goreplay"


def read(path: Path, **kwargs: int) -> tuple[list[Exchange], GorReader]:
    reader = GorReader(path, **kwargs)
    return list(reader), reader


def record(kind: int, rid: str, ts: int, payload: bytes, latency: int | None = 1000) -> bytes:
    head = f"{kind} {rid} {ts}" + ("" if latency is None else f" {latency}")
    return head.encode() + b"\n" + payload + SEPARATOR


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode()


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_real_capture_gives_every_exchange_with_its_own_response() -> None:
    exchanges, reader = read(FIXTURES / "httpbin.gor")
    assert reader.report.imported == 14 and reader.report.records == 28
    assert reader.report.skipped == {} and reader.report.torn_tail is None
    by_path = {ex.request.path: ex for ex in exchanges}
    assert [ex.request.method for ex in exchanges].count("GET") == 10
    for ex in exchanges:
        assert isinstance(ex.primary, Response)
        assert ex.tags["source"] == "gor" and len(ex.tags["gor.id"]) == 40
        assert ex.started_at_ns > 1_700_000_000 * 10**9
    # httpbin echoes the request, so each body proves the response landed on its own request.
    gets = [ex for ex in exchanges if ex.request.path == "/get"]
    for ex in gets:
        query = ex.request.query
        assert isinstance(ex.primary, Response) and f'"i": "{query[2:]}"'.encode() in ex.primary.body
    teapot = by_path["/status/418"].primary
    assert isinstance(teapot, Response) and teapot.status == 418 and teapot.reason == "I'M A TEAPOT"
    gz = by_path["/gzip"].primary
    assert isinstance(gz, Response) and gz.header(b"content-encoding") == b"gzip"
    assert b'"gzipped": true' in gzip.decompress(gz.body)  # kept as on the wire, still compressed
    stream = by_path["/stream/3"].primary
    assert isinstance(stream, Response) and stream.header(b"transfer-encoding") == b"chunked"
    assert stream.body.count(b"\n") == 3 and stream.body.startswith(b"{")  # chunk framing removed
    png = by_path["/image/png"].primary
    assert isinstance(png, Response) and png.body.startswith(b"\x89PNG") and len(png.body) == 8090
    assert (by_path["/delete"].request.header(b"authorization") or b"").startswith(b"Bearer ")
    redirect = by_path["/cookies/set"].primary
    assert isinstance(redirect, Response) and redirect.status == 302 and redirect.header(b"set-cookie")
    patch = by_path["/patch"].request
    assert patch.body.decode("utf-8") and len(patch.body) == 26 and not patch.body.isascii()
    bytes_resp = by_path["/bytes/2048"].primary
    assert isinstance(bytes_resp, Response) and len(bytes_resp.body) == 2048
    assert exchanges[0].timings["primary"].first_byte_ns == 2622183


def test_second_capture_imports_twelve_pairs() -> None:
    exchanges, reader = read(FIXTURES / "httpbin-run2.gor")
    assert reader.report.imported == 12 and reader.report.records == 24
    assert all(isinstance(ex.primary, Response) for ex in exchanges)


def test_cut_capture_returns_complete_records_and_reports_the_torn_tail() -> None:
    full, _ = read(FIXTURES / "httpbin-run2.gor")
    exchanges, reader = read(FIXTURES / "httpbin-cut.gor")
    report = reader.report
    assert report.records == 23
    assert report.torn_tail is not None
    assert report.torn_tail.offset + report.torn_tail.length_bytes == 9000
    assert report.torn_tail.offset == (FIXTURES / "httpbin-cut.gor").read_bytes().rfind(SEPARATOR) + len(SEPARATOR)
    assert len(exchanges) == 12
    assert exchanges[:11] == full[:11]
    last = exchanges[11]
    assert last.request == full[11].request and last.primary is None
    assert "requests without an original response (imported without one)" in report.notes


def test_reused_id_pairs_responses_in_order_and_never_crosses_requests() -> None:
    rid = "a" * 24
    data = (
        record(1, rid, 100, get("/first"))
        + record(1, rid, 200, get("/second"))
        + record(2, rid, 150, ok(b"first"))
        + record(2, rid, 250, ok(b"second"))
    )
    exchanges = _parse(data)
    assert [ex.request.path for ex in exchanges] == ["/first", "/second"]
    assert [ex.primary.body for ex in exchanges if isinstance(ex.primary, Response)] == [b"first", b"second"]
    assert exchanges[0].id != exchanges[1].id and exchanges[1].tags["gor.id_reused"] == "1"


def test_keep_alive_connection_with_pipelined_requests_sharing_an_id() -> None:
    # GoReplay 1.3's ids (tests/recorder/gor_keepalive.py): two pipelined requests share one id, their
    # responses do not (the second's is the first's sequence number plus its length); an
    # Expect: 100-continue request has its interim answer first, on the unshifted id.
    exchanges, reader = read(FIXTURES / "keepalive-1.3.gor")
    report = reader.report
    assert report.records == 13 and report.imported == 6 and report.skipped == {}
    assert [ex.request.target for ex in exchanges] == [
        "/items/1",
        "/items/2",
        "/items/3",
        "/items/4",
        "/other",
        "/items",
    ]
    for ex in exchanges:
        assert isinstance(ex.primary, Response), ex.request.target
    for ex, name in zip(exchanges, [b"first", b"second", b"third", b"fourth"], strict=False):
        assert isinstance(ex.primary, Response) and b'"name": "' + name + b'"' in ex.primary.body
    post = exchanges[5].primary
    assert isinstance(post, Response) and post.status == 201  # never the 100 Continue
    assert {ex.connection_id for ex in exchanges if ex.request.target != "/other"} == {"gor:d4311f907f000001"}
    assert exchanges[3].id == exchanges[2].id + ".3" and exchanges[3].timings["primary"].first_byte_ns == 1_000_000
    assert report.notes == {
        "requests reusing the id of a waiting request (paired in order)": 1,
        "responses paired by connection and TCP sequence (pipelined requests sharing an id)": 1,
        "interim 1xx responses (100 Continue: not kept, the final response is)": 1,
    }


def test_an_interim_response_on_the_same_id_is_not_the_answer() -> None:
    # GoReplay 1.2 ids are one hash for a request and all its responses.
    rid = "9" * 40
    post = b"POST /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"
    data = (
        record(1, rid, 100, post)
        + record(2, rid, 110, b"HTTP/1.1 100 Continue\r\n\r\n")
        + record(2, rid, 120, ok(b"done"))
    )
    (ex,), reader = _parse_with_reader(data)
    assert isinstance(ex.primary, Response) and ex.primary.status == 200 and ex.primary.body == b"done"
    assert reader.report.skipped == {}


def test_a_response_is_paired_by_sequence_only_when_it_continues_the_connection() -> None:
    conn = "c3501f900a000007"
    first = ok(b"first")
    data = (
        record(1, f"{conn}00000100", 1, get("/a"))
        + record(1, f"{conn}00000100", 2, get("/b"))
        + record(2, f"{conn}00000100", 3, first)
        # Not where the connection's next answer starts: no guess, it is skipped and counted.
        + record(2, f"{conn}{0x100 + len(first) + 1:08x}", 4, ok(b"second"))
    )
    exchanges, reader = _parse_with_reader(data)
    assert [ex.primary is None for ex in exchanges] == [False, True]
    assert reader.report.skipped == {"type 2 responses with no waiting request": 1}


def test_goreplay_13_ids_name_the_client_connection() -> None:
    # Client port 0xc350, server port 0x1f90, client IP 10.0.0.7, then the ack number.
    same_connection = ["c3501f900a000007" + ack for ack in ("00000001", "000001f4")]
    other = "c3511f900a000007" + "00000001"
    data = b"".join(
        record(1, rid, i, get(f"/{i}")) + record(2, rid, i + 1, ok(b"x"))
        for i, rid in enumerate([*same_connection, other, "f" * 40])
    )
    exchanges = _parse(data)
    assert [ex.connection_id for ex in exchanges] == [
        "gor:c3501f900a000007",
        "gor:c3501f900a000007",
        "gor:c3511f900a000007",
        "",  # a GoReplay 1.2 id is a hash: no connection to name
    ]


def test_interleaved_ids_keep_request_order_and_pair_by_id() -> None:
    a, b = "1" * 40, "2" * 40
    data = (
        record(1, a, 100, get("/a"))
        + record(1, b, 110, get("/b"))
        + record(2, b, 120, ok(b"for b"))
        + record(2, a, 130, ok(b"for a"))
    )
    exchanges = _parse(data)
    assert [ex.request.path for ex in exchanges] == ["/a", "/b"]
    assert [ex.primary.body for ex in exchanges if isinstance(ex.primary, Response)] == [b"for a", b"for b"]


def test_replayed_responses_become_the_replay_outcome() -> None:
    rid = "c" * 24
    data = record(1, rid, 100, get("/x")) + record(2, rid, 150, ok(b"orig"), 50) + record(3, rid, 300, ok(b"new"), 70)
    (ex,) = _parse(data)
    assert isinstance(ex.primary, Response) and ex.primary.body == b"orig"
    replay = ex.shadows[REPLAY]
    assert isinstance(replay, Response) and replay.body == b"new"
    assert ex.timings[REPLAY].first_byte_ns == 70 and ex.timings["primary"].first_byte_ns == 50


def test_orphan_responses_are_skipped_with_a_reason() -> None:
    data = record(2, "d" * 24, 100, ok(b"nobody asked")) + record(1, "e" * 24, 200, get("/x"))
    exchanges, reader = _parse_with_reader(data)
    assert len(exchanges) == 1 and exchanges[0].primary is None
    assert reader.report.skipped == {"type 2 responses with no waiting request": 1}


def test_three_field_headers_and_absolute_form_targets_are_read() -> None:
    payload = b"GET http://proxy.test:8080/p?q=1 HTTP/1.1\r\nHost: proxy.test:8080\r\n\r\n"
    (ex,) = _parse(record(1, "f" * 40, 5, payload, latency=None))
    assert ex.request.target == "/p?q=1" and ex.request.authority == "proxy.test:8080"
    assert "gor.request_latency_ns" not in ex.tags


def test_pending_window_is_bounded() -> None:
    data = b"".join(record(1, f"{i:024x}", i, get(f"/{i}")) for i in range(10))
    data += b"".join(record(2, f"{i:024x}", 100 + i, ok(b"r")) for i in range(10))
    exchanges, reader = _parse_with_reader(data, max_pending=3)
    assert [ex.request.path for ex in exchanges] == [f"/{i}" for i in range(10)]
    # Requests pushed out of the window before their response arrived keep no response.
    answered = [ex for ex in exchanges if ex.primary is not None]
    assert 3 <= len(answered) < 10
    assert reader.report.skipped["type 2 responses with no waiting request"] == 10 - len(answered)


def test_body_shorter_than_content_length_is_marked_truncated() -> None:
    payload = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"
    (ex,) = _parse(record(1, "a" * 24, 1, get("/")) + record(2, "a" * 24, 2, payload))
    assert isinstance(ex.primary, Response) and ex.primary.truncated_from == 100 and ex.primary.body == b"only part"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello world\n" + SEPARATOR, "not a GoReplay record header"),
        (b"1 " + b"a" * 24 + b" notanumber 5\n" + get("/") + SEPARATOR, "bad GoReplay timestamp"),
        (record(1, "a" * 24, 1, b"NOT HTTP AT ALL\r\n\r\n"), "malformed request line"),
        (record(1, "a" * 24, 1, get("/")) + record(2, "a" * 24, 2, b"HTTP/1.1 2000 OK\r\n\r\n"), "status line"),
        (record(1, "a" * 24, 1, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"), "malformed header line"),
        (record(1, "a" * 24, 1, b"GET / HTTP/1.1\r\nHost: x\r\n"), "no blank line"),
    ],
)
def test_malformed_input_names_the_file_and_offset(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.gor"
    path.write_bytes(data)
    with pytest.raises(InputFormatError, match=message) as info:
        list(GorReader(path))
    assert info.value.path == str(path) and info.value.offset is not None
    assert 0 <= info.value.offset <= len(data)


def test_error_offset_points_into_the_bad_record(tmp_path: Path) -> None:
    good = record(1, "a" * 24, 1, get("/")) + record(2, "a" * 24, 2, ok(b"x"))
    bad = record(1, "b" * 24, 3, b"GET / HTTP/1.1\r\nbroken\r\n\r\n")
    path = tmp_path / "bad.gor"
    path.write_bytes(good + bad)
    with pytest.raises(InputFormatError) as info:
        list(GorReader(path))
    offset = info.value.offset
    assert offset is not None and (good + bad)[offset:].startswith(b"broken")


def test_a_record_past_the_size_bound_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "huge.gor"
    path.write_bytes(b"1 " + b"a" * 24 + b" 1 1\n" + b"x" * 5000)
    with pytest.raises(InputFormatError, match="longer than 1024 bytes"):
        list(GorReader(path, max_record_bytes=1024))


def test_export_round_trip_keeps_requests_responses_and_ids(tmp_path: Path) -> None:
    original, _ = read(FIXTURES / "httpbin.gor")
    out = tmp_path / "out.gor"
    report = write_gor(original, out)
    assert report.exported == 14 and report.skipped == {}
    again, reader = read(out)
    assert reader.report.imported == 14
    for before, after in zip(original, again, strict=True):
        assert after.request == before.request
        assert after.primary == before.primary
        assert after.tags["gor.id"] == before.tags["gor.id"]
        assert after.started_at_ns == before.started_at_ns


def test_export_of_a_real_capture_reproduces_goreplays_own_bytes(tmp_path: Path) -> None:
    # GoReplay itself cannot run here, so the next best proof that it can replay our files: writing
    # back what we read from its capture gives its own bytes, record for record.
    source = FIXTURES / "httpbin.gor"
    out = tmp_path / "again.gor"
    write_gor(GorReader(source), out)
    theirs, ours = source.read_bytes().split(SEPARATOR), out.read_bytes().split(SEPARATOR)
    assert len(theirs) == len(ours) == 29
    different = [t.split(b"\n", 1)[0] for t, o in zip(theirs, ours, strict=True) if t != o]
    # Only the chunked /stream/3 response differs: its three chunks are written back as one.
    assert len(different) == 1 and different[0].startswith(b"2 42def6e3")


def test_export_rechunks_chunked_bodies_and_adds_missing_lengths(tmp_path: Path) -> None:
    chunked = Response(200, "OK", ((b"Transfer-Encoding", b"chunked"),), b"hello chunks")
    request = Request("POST", "/p?x=1", ((b"Host", b"h.test"),), b"payload")
    ex = Exchange(id="not-hex-id", started_at_ns=10**18, request=request, primary=chunked)
    out = tmp_path / "out.gor"
    write_gor([ex], out)
    raw = out.read_bytes()
    assert b"c\r\nhello chunks\r\n0\r\n\r\n" in raw and b"Content-Length: 7\r\n" in raw
    (back,) = list(GorReader(out))
    assert back.request.body == b"payload" and isinstance(back.primary, Response)
    assert back.primary.body == b"hello chunks"
    assert len(back.tags["gor.id"]) == 40 and back.connection_id == ""


def test_export_counts_what_gor_cannot_hold(tmp_path: Path) -> None:
    ex = Exchange(
        id="x",
        started_at_ns=1,
        request=Request("GET", "/"),
        primary=Failure(FailureKind.TIMEOUT, "slow"),
        shadows={"v2": Response(200), REPLAY: Response(201)},
        timings={REPLAY: Timing(sent_ns=0, first_byte_ns=9)},
    )
    report = write_gor([ex], tmp_path / "o.gor")
    assert report.skipped == {
        "primary failures (no error record in .gor)": 1,
        "shadow responses (only 'replay' maps to type 3)": 1,
    }
    (back,) = list(GorReader(tmp_path / "o.gor"))
    replay = back.shadows[REPLAY]
    assert isinstance(replay, Response) and replay.status == 201 and back.primary is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=20513))
def test_fuzz_any_truncation_gives_complete_records_or_a_clear_error(tmp_path: Path, cut: int) -> None:
    data = (FIXTURES / "httpbin.gor").read_bytes()[:cut]
    path = tmp_path / "cut.gor"
    path.write_bytes(data)
    reader = GorReader(path)
    try:
        exchanges = list(reader)
    except InputFormatError as exc:
        # Only a cut inside the very first header line can look like something that is not GoReplay.
        assert exc.offset == 0 and cut < 80
        return
    assert reader.report.records == data.count(SEPARATOR)
    assert (reader.report.torn_tail is None) == (data.endswith(SEPARATOR) or not data)
    assert len(exchanges) == (reader.report.records + 1) // 2


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=400)
    | st.lists(
        st.sampled_from(
            [
                b"1 ",
                b"2 ",
                b"a" * 24,
                b" 5",
                b"\n",
                SEPARATOR,
                b"GET / HTTP/1.1\r\n",
                b"\r\n",
                b"HTTP/1.1 200 OK\r\n",
                b"Content-Length: 3\r\n",
                b"Transfer-Encoding: chunked\r\n",
                b"3\r\nabc\r\n0\r\n\r\n",
                b"x",
            ]
        ),
        max_size=30,
    ).map(b"".join)
)
def test_fuzz_random_input_never_hangs_or_escapes_the_error_tree(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.gor"
    path.write_bytes(data)
    try:
        list(GorReader(path))
    except InputFormatError as exc:
        assert exc.path == str(path) and str(exc)


def _parse_with_reader(data: bytes, **kwargs: int) -> tuple[list[Exchange], GorReader]:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "t.gor"
        path.write_bytes(data)
        reader = GorReader(path, **kwargs)
        return list(reader), reader


def _parse(data: bytes) -> list[Exchange]:
    return _parse_with_reader(data)[0]


def test_gzip_captures_read_like_plain_ones_and_export_to_gz(tmp_path: Path) -> None:
    plain = (FIXTURES / "httpbin.gor").read_bytes()
    packed = tmp_path / "httpbin.gor.gz"
    packed.write_bytes(gzip.compress(plain))
    expected, _ = read(FIXTURES / "httpbin.gor")
    got, reader = read(packed)
    assert got == expected and reader.report.torn_tail is None
    out = tmp_path / "out.gor.gz"
    write_gor(got, out)
    assert gzip.decompress(out.read_bytes()) == write_gor_bytes(got, tmp_path)


def write_gor_bytes(exchanges: list[Exchange], tmp_path: Path) -> bytes:
    write_gor(exchanges, tmp_path / "plain.gor")
    return (tmp_path / "plain.gor").read_bytes()


def test_a_cut_gzip_capture_gives_its_complete_records(tmp_path: Path) -> None:
    # A raw deflate stream without gzip's trailer, as a killed writer leaves it, cut mid-record.
    plain = (FIXTURES / "httpbin.gor").read_bytes()
    compressor = zlib.compressobj(wbits=31)
    data = compressor.compress(plain[:12_000]) + compressor.flush(zlib.Z_SYNC_FLUSH)
    cut = tmp_path / "cut.gor.gz"
    cut.write_bytes(data)
    exchanges, reader = read(cut)
    assert reader.report.records == plain[:12_000].count(SEPARATOR)
    assert reader.report.torn_tail is not None and len(exchanges) >= 10
    assert "gzip stream cut before its end (everything before the cut was read)" in reader.report.notes


def test_corrupt_gzip_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gor.gz"
    bad.write_bytes(gzip.compress(b"1 " + b"a" * 24 + b" 1 1\n")[:10] + b"\xff" * 40)
    with pytest.raises(InputFormatError, match="gzip") as info:
        list(GorReader(bad))
    assert info.value.path == str(bad)


def test_memory_stays_bounded_however_long_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    from shadowtap.recorder.formats import gor as gor_module

    body = b"x" * 900
    exchanges = (
        Exchange(
            id=f"{i:024x}",
            started_at_ns=10**18 + i,
            request=Request("GET", f"/{i}", ((b"Host", b"h.test"),)),
            primary=Response(200, "OK", ((b"Content-Length", b"900"),), body),
        )
        for i in range(4000)
    )
    path = tmp_path / "long.gor"
    write_gor(exchanges, path)
    assert path.stat().st_size > 4_000_000
    monkeypatch.setattr(gor_module, "_CHUNK_BYTES", 64 * 1024)
    tracemalloc.start()
    try:
        count = sum(1 for _ in GorReader(path, max_pending=20))
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 4000
    # A read chunk, its copy while compacting, and 20 waiting exchanges: far below the 4 MB file.
    assert peak_bytes < 1_000_000


def test_keep_alive_capture_exports_and_reads_back_the_same_pairs(tmp_path: Path) -> None:
    original, _ = read(FIXTURES / "keepalive-1.3.gor")
    out = tmp_path / "again.gor"
    assert write_gor(original, out).exported == 6
    again, reader = read(out)
    # Written back, each response carries its request's id, so no sequence pairing is needed.
    assert [(ex.request, ex.primary) for ex in again] == [(ex.request, ex.primary) for ex in original]
    assert reader.report.skipped == {} and reader.report.imported == 6
