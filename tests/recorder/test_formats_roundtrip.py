"""Round trips through real tapes: tape -> HAR -> tape, tape -> gor -> tape, tape -> mitm -> tape."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowtap.recorder import (
    Exchange,
    Failure,
    FailureKind,
    Request,
    Response,
    SyncTapeWriter,
    TapeOptions,
    TapeReader,
)
from shadowtap.recorder.formats import GorReader, HarReader, MitmReader, open_importer, write_gor, write_har, write_mitm
from shadowtap.recorder.formats._common import ExportReport

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RAW = TapeOptions(fsync="none", redaction=None)

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=12)
# Header values as a wire would carry them: no CR/LF, no surrounding whitespace (HTTP strips it).
VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=20)
PATH_SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~%", min_size=1, max_size=8)


@st.composite
def exchanges(draw: st.DrawFn, *, http2: bool) -> Exchange:
    authority = draw(st.sampled_from(["api.test", "127.0.0.1:8080", "[::1]:9000"]))
    path = "/" + "/".join(draw(st.lists(PATH_SEGMENT, max_size=3)))
    query = draw(st.none() | st.lists(st.tuples(TOKEN, TOKEN), max_size=3))
    target = path + ("?" + "&".join(f"{k}={v}" for k, v in query) if query is not None else "")
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    headers = [(b"Host", authority.encode())]
    headers += [(b"X-" + n.encode(), v.encode("utf-8")) for n, v in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=4))]
    body = draw(st.binary(max_size=64) | st.text(max_size=40).map(str.encode)) if method != "GET" else b""
    if body:
        headers.append((b"Content-Length", str(len(body)).encode()))
    status = draw(st.sampled_from([200, 201, 302, 400, 404, 418, 500, 503]))
    chunked = draw(st.booleans())
    response_body = draw(st.binary(max_size=64) | st.text(max_size=40).map(str.encode))
    response_headers = [(b"Content-Type", b"application/octet-stream")]
    response_headers.append(
        (b"Transfer-Encoding", b"chunked") if chunked else (b"Content-Length", str(len(response_body)).encode())
    )
    version = draw(st.sampled_from(["1.1", "2"])) if http2 else "1.1"
    return Exchange(
        id=draw(st.uuids()).hex,
        started_at_ns=draw(st.integers(min_value=1_500_000_000, max_value=2_000_000_000)) * 10**9
        + draw(st.integers(0, 999_999)) * 1_000,
        request=Request(
            method, target, tuple(headers), body, draw(st.sampled_from(["http", "https"])), authority, version
        ),
        primary=Response(
            status, draw(st.sampled_from(["OK", "Nope", ""])), tuple(response_headers), response_body, version
        ),
    )


def through(
    items: Iterable[Exchange], write: Callable[[Iterable[Exchange], Path], ExportReport], suffix: str
) -> list[Exchange]:
    """Exchanges -> tape -> format file -> import -> tape -> exchanges."""
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        with SyncTapeWriter(root / "a", RAW) as writer:
            writer.write_many(items)
        exported = root / f"x.{suffix}"
        write(TapeReader(root / "a"), exported)
        with SyncTapeWriter(root / "b", RAW) as writer:
            writer.write_many(open_importer(exported))
        return list(TapeReader(root / "b"))


def assert_same_http(before: list[Exchange], after: list[Exchange]) -> None:
    assert len(after) == len(before)
    for a, b in zip(before, after, strict=True):
        assert (b.request.method, b.request.target, b.request.headers, b.request.body) == (
            a.request.method,
            a.request.target,
            a.request.headers,
            a.request.body,
        )
        assert isinstance(a.primary, Response) and isinstance(b.primary, Response)
        assert (b.primary.status, b.primary.headers, b.primary.body) == (
            a.primary.status,
            a.primary.headers,
            a.primary.body,
        )
        assert b.started_at_ns == a.started_at_ns


@settings(max_examples=40, deadline=None)
@given(st.lists(exchanges(http2=True), min_size=1, max_size=5))
def test_tape_har_tape(items: list[Exchange]) -> None:
    after = through(items, write_har, "har")
    assert_same_http(items, after)
    for a, b in zip(items, after, strict=True):
        assert (b.request.scheme, b.request.authority, b.request.http_version) == (
            a.request.scheme,
            a.request.authority,
            a.request.http_version,
        )


@settings(max_examples=40, deadline=None)
@given(st.lists(exchanges(http2=False), min_size=1, max_size=5))
def test_tape_gor_tape(items: list[Exchange]) -> None:
    assert_same_http(items, through(items, write_gor, "gor"))


@settings(max_examples=25, deadline=None)
@given(st.lists(exchanges(http2=True), min_size=1, max_size=5))
def test_tape_mitm_tape(items: list[Exchange]) -> None:
    after = through(items, write_mitm, "mitm")
    assert_same_http(items, after)
    assert [b.id for b in after] == [a.id for a in items]


def test_real_captures_survive_every_round_trip() -> None:
    for reader, write, suffix in (
        (GorReader(FIXTURES / "goreplay" / "httpbin.gor"), write_gor, "gor"),
        (HarReader(FIXTURES / "mitmproxy" / "httpbin.har"), write_har, "har"),
        (MitmReader(FIXTURES / "mitmproxy" / "httpbin.mitm"), write_mitm, "mitm"),
    ):
        before = list(reader)
        assert len(before) == 14
        assert_same_http(before, through(before, write, suffix))


@pytest.mark.parametrize(
    ("write", "name"),
    [(write_har, "x.har"), (write_mitm, "x.mitm"), (write_gor, "x.gor"), (write_gor, "x.gor.gz")],
)
@pytest.mark.parametrize("existing_mode", [None, 0o644])
def test_exports_are_private_files(
    tmp_path: Path, write: Callable[[Iterable[Exchange], Path], ExportReport], name: str, existing_mode: int | None
) -> None:
    item = Exchange(
        id="e1",
        started_at_ns=1_700_000_000_000_000_000,
        request=Request("GET", "/a", headers=((b"host", b"h"),)),
        primary=Response(200, "OK", headers=((b"content-length", b"2"),), body=b"ok"),
    )
    path = tmp_path / name
    if existing_mode is not None:
        path.write_bytes(b"old")
        path.chmod(existing_mode)
    previous = os.umask(0o022)
    try:
        write([item], path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (back,) = open_importer(path)
    assert back.request.path == "/a" and isinstance(back.primary, Response) and back.primary.body == b"ok"


def test_a_browser_hars_failures_keep_their_kind_through_har_and_mitm() -> None:
    before = list(HarReader(FIXTURES / "chromium" / "playwright.har"))
    kinds = [ex.primary.kind if isinstance(ex.primary, Failure) else None for ex in before]
    assert sorted(k for k in kinds if k) == ["aborted", "aborted", "aborted", "connect-error"]
    failure = Exchange(
        id="f", started_at_ns=1, request=Request("GET", "/x"), primary=Failure(FailureKind.TIMEOUT, "upstream slow")
    )
    for write, suffix in ((write_har, "har"), (write_mitm, "mitm")):
        after = through([*before, failure], write, suffix)
        assert [ex.primary for ex in after if isinstance(ex.primary, Failure)] == [
            ex.primary for ex in [*before, failure] if isinstance(ex.primary, Failure)
        ], suffix
