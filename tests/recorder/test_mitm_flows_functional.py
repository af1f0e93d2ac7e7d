"""Acceptance: a flow file mitmdump writes right now, with flows of every type, imports whole.

The committed fixture (tests/fixtures/mitmproxy/every-type.mitm) pins one recording; this records a
fresh one with the installed mitmproxy (about 2.5 s), so a mitmproxy upgrade that changes its flows or
its error messages is caught here first.
"""

from __future__ import annotations

from pathlib import Path

from shadowtap.recorder import Failure, FailureKind, Response
from shadowtap.recorder.formats import MitmReader, open_importer
from tests.recorder.mitm_flows import BIG_BYTES, record


def test_a_fresh_mitmdump_capture_of_every_flow_type_imports(tmp_path: Path) -> None:
    out = tmp_path / "fresh.mitm"
    seen = record(out, tmp_path)
    assert seen["refused"] == 502 and seen["slow"] == "client gave up" and seen["websocket"] == ["pong:one", "pong:two"]
    assert seen["tcp"] == b"echo:hello tcp" and seen["udp"] == b"echo:hello udp" and seen["dns"] > 12

    reader = open_importer(out)
    assert isinstance(reader, MitmReader)
    got = {ex.request.target: ex for ex in reader}
    report = reader.report
    assert set(report.skipped) == {"TCPFlow flows (not HTTP)", "UDPFlow flows (not HTTP)", "DNSFlow flows (not HTTP)"}
    assert report.records == report.imported + 3 and report.torn_tail is None
    assert got["/slow"].primary == Failure(FailureKind.ABORTED, "Client disconnected.")
    refused = got["/nothing"].primary
    assert isinstance(refused, Failure) and refused.kind == FailureKind.CONNECT_ERROR
    assert got["/kill"].primary == Failure(FailureKind.CANCELLED, "Connection killed.")
    big = got["/big"].primary
    assert isinstance(big, Response) and big.body == b"" and big.truncated_from == BIG_BYTES
    assert got["/get?h2=1"].request.http_version == "2" and got["/ws"].tags["mitm.websocket_messages"] == "4"
    for target in ("/get?x=1", "/post", "/get?via=proxy", "/get?tunnel=1"):
        assert isinstance(got[target].primary, Response) and got[target].primary.status == 200
