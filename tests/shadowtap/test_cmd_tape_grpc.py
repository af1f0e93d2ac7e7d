"""`shadowtap tape cat` of HTTP/2 and gRPC exchanges: trailers and the message list are shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadowtap.cli import main
from shadowtap.recorder import Exchange, Request, Response, SyncTapeWriter, TapeOptions
from shadowtap.recorder.model import StreamMessage
from shadowtap.wire.grpc import encode_message


def test_cat_shows_trailers_and_grpc_messages_only_when_there_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grpc = ((b"content-type", b"application/grpc"),)
    exchanges = [
        Exchange(
            "grpc-1",
            1_764_000_000_000_000_000,
            Request(
                "POST",
                "/shop.Catalog/GetProduct",
                grpc,
                encode_message(b"\x0a\x02p1"),
                http_version="2",
                messages=(StreamMessage(0, 4, 1_000),),
            ),  # fmt: skip
            primary=Response(
                200,
                headers=grpc,
                body=encode_message(b"\x0a\x02p1"),
                http_version="2",
                trailers=((b"grpc-status", b"0"),),
                messages=(StreamMessage(0, 4, 9_000),),
            ),  # fmt: skip
        ),
        Exchange("http-1", 1_764_000_000_000_000_001, Request("GET", "/"), primary=Response(200)),
    ]
    with SyncTapeWriter(tmp_path / "tape", TapeOptions(redaction=None, fsync="none")) as writer:
        writer.write_many(exchanges)
    assert main(["tape", "cat", str(tmp_path / "tape"), "--bodies", "none"]) == 0
    grpc_line, http_line = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert grpc_line["request"]["http_version"] == "2"
    assert grpc_line["request"]["messages"] == [{"flags": 0, "length": 4, "at_ns": 1_000}]
    assert grpc_line["primary"]["trailers"] == [["grpc-status", "0"]]
    assert grpc_line["primary"]["messages"] == [{"flags": 0, "length": 4, "at_ns": 9_000}]
    assert "trailers" not in http_line["request"] and "messages" not in http_line["primary"]
