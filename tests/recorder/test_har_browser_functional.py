"""Acceptance: a HAR that Chromium writes right now (through Playwright) imports whole.

The committed fixture (tests/fixtures/chromium/) pins one recording; this records a fresh one with
the browser on this machine, so a newer Chromium or Playwright that writes its HAR differently is
caught here first. About 3 s: one page, two recordings (bodies embedded, and attached as files).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shadowtap.recorder import Exchange, Failure, FailureKind, Response
from shadowtap.recorder.formats import HarReader, open_importer
from tests.recorder.browser_har import BINARY, CHROMIUM, GZIPPED_JSON, UPLOAD, record


@pytest.fixture(autouse=True)
def _chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-system-deps.sh chromium")


def imported(path: Path) -> tuple[dict[str, Exchange], HarReader]:
    reader = open_importer(path)
    assert isinstance(reader, HarReader)
    return {ex.request.target: ex for ex in reader}, reader


def body(ex: Exchange) -> bytes:
    assert isinstance(ex.primary, Response), ex.request.target
    return ex.primary.body


@pytest.mark.parametrize("content", ["embed", "attach"])
def test_a_fresh_chromium_har_imports_whole(tmp_path: Path, content: str) -> None:
    har = tmp_path / "fresh.har"
    seen = record(har, content=content)
    # The page saw what the HAR must show: three requests stopped in the browser, one refused.
    assert (seen["aborted"], seen["blocked"], seen["refused"]) == ("AbortError", "TypeError", "TypeError")
    assert seen["websocket"] == "pong:ping" and seen["upload"] == "got 4 bytes"
    statuses = [e["response"]["status"] for e in json.loads(har.read_text())["log"]["entries"]]
    assert statuses.count(-1) == 4  # what made the whole import fail before

    got, reader = imported(har)
    report = reader.report
    assert report.records == report.imported == len(statuses) == 15 and report.skipped == {}
    assert report.failures == {"aborted": 3, "connect-error": 1}
    assert got["/blocked/pixel.png"].primary == Failure(FailureKind.ABORTED, "net::ERR_BLOCKED_BY_CLIENT.Inspector")
    assert got["/slow"].primary == Failure(FailureKind.ABORTED, "net::ERR_ABORTED")
    assert got["/blocked/api"].primary == Failure(FailureKind.ABORTED, "net::ERR_FAILED")
    assert got["/nothing"].primary == Failure(FailureKind.CONNECT_ERROR, "net::ERR_CONNECTION_REFUSED")
    assert body(got["/binary"]) == BINARY and body(got["/gzip"]) == GZIPPED_JSON
    assert json.loads(got["/api/echo"].request.body) == {"name": "café", "n": 1}
    assert got["/form"].request.body == b"q=a+b&lang=%C3%A9" and len(got["/multipart"].request.body) == 276
    upload = got["/upload"].request
    # Embedded, Playwright drops an octet-stream request body (its size stays); attached, it is a file.
    assert (upload.body, upload.truncated_from) == ((b"", 4) if content == "embed" else (UPLOAD, None))
    assert got["/ws"].tags["har.websocket_messages"] == "2" and body(got["/ws"]) == b""
