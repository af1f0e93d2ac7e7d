"""A GoReplay 1.3 capture of one keep-alive connection, built per the documented format: GoReplay
is not installable here, so this writes what its ``tcp`` package would (see tests/fixtures/README.md).

GoReplay 1.3's id is 24 hex digits: client port, server port and client IP (the connection), then a
TCP number. A request's is the acknowledgement number of its first packet, a response's the sequence
number of its first packet, so a response shares its request's id when nothing else was sent between.
Requests pipelined before any answer share one id while their responses do not; ``Expect:
100-continue`` moves the request's id past the 25-byte interim answer (GoReplay's Fix100Continue).
``python -m tests.recorder.gor_keepalive`` rewrites the fixture.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

FIXTURE: Final = Path(__file__).resolve().parents[1] / "fixtures" / "goreplay" / "keepalive-1.3.gor"
SEPARATOR: Final = "\n🐵🙈🙉\n".encode()
CONNECTION: Final = "d4311f90" + "7f000001"  # client port 54321, server port 8080, client IP 127.0.0.1
OTHER_CONNECTION: Final = "d4321f90" + "7f000001"  # the same client's next port
START_NS: Final = 1_767_225_600_000_000_000
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def gor_id(connection: str, number: int) -> str:
    return f"{connection}{number & 0xFFFFFFFF:08x}"


def record(kind: int, rid: str, offset_ns: int, latency_ns: int, payload: bytes) -> bytes:
    return f"{kind} {rid} {START_NS + offset_ns} {latency_ns}\n".encode() + payload + SEPARATOR


def request(method: str, path: str, extra: bytes = b"", body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n".encode()
    if body:
        extra += b"Content-Length: %d\r\n" % len(body)
    return head + extra + b"\r\n" + body


def response(body: bytes, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


def build() -> bytes:
    out = b""
    # Close to the 32-bit wrap, so the sequence numbers wrap inside this connection.
    seq = 0xFFFFFF80
    first = response(b'{"id": 1, "name": "first"}')
    out += record(1, gor_id(CONNECTION, seq), 0, 0, request("GET", "/items/1"))
    out += record(2, gor_id(CONNECTION, seq), 900_000, 900_000, first)
    seq += len(first)
    second = response(b'{"id": 2, "name": "second"}')
    out += record(1, gor_id(CONNECTION, seq), 5_000_000, 0, request("GET", "/items/2"))
    out += record(2, gor_id(CONNECTION, seq), 5_800_000, 800_000, second)
    seq += len(second)
    # Pipelined: both requests leave before the first answer, so both carry the same ack; another
    # connection's exchange lands in between.
    third, fourth = response(b'{"id": 3, "name": "third"}'), response(b'{"id": 4, "name": "fourth"}')
    out += record(1, gor_id(CONNECTION, seq), 10_000_000, 0, request("GET", "/items/3"))
    out += record(1, gor_id(CONNECTION, seq), 10_100_000, 0, request("GET", "/items/4"))
    out += record(1, gor_id(OTHER_CONNECTION, 0x12345678), 10_200_000, 0, request("GET", "/other"))
    out += record(2, gor_id(CONNECTION, seq), 11_000_000, 1_000_000, third)
    out += record(2, gor_id(OTHER_CONNECTION, 0x12345678), 11_050_000, 850_000, response(b'{"other": true}'))
    out += record(2, gor_id(CONNECTION, seq + len(third)), 11_100_000, 1_000_000, fourth)
    seq += len(third) + len(fourth)
    # Expect: 100-continue: the interim answer is complete before the request (its body follows the
    # answer), and the request's id is shifted past it, onto its final response's.
    body = b'{"name": "fifth"}'
    post = request("POST", "/items", b"Content-Type: application/json\r\nExpect: 100-continue\r\n", body)
    out += record(2, gor_id(CONNECTION, seq), 20_300_000, 300_000, CONTINUE)
    out += record(1, gor_id(CONNECTION, seq + len(CONTINUE)), 20_000_000, 0, post)
    out += record(2, gor_id(CONNECTION, seq + len(CONTINUE)), 21_000_000, 1_000_000, response(body, b"201 Created"))
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURE
    target.write_bytes(build())
