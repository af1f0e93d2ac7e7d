"""gRPC message framing, sans-IO: a call's body split into its length-prefixed messages, and back.

Each direction of a gRPC call is a run of messages, each ``flag u8 | length u32 big-endian | bytes``
(gRPC over HTTP/2, "Length-Prefixed-Message"); flag bit 0 says the message is compressed with the
call's ``grpc-encoding``. This module frames and, on request, undoes a message's compression under
a size bound: it never interprets a message, holds no policy (what to record, compare or mirror),
and imports nothing of shadowtap's other packages.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MESSAGE_HEADER_BYTES",
    "GrpcFramingError",
    "GrpcMessage",
    "MessageSplitter",
    "decompress_message",
    "encode_message",
    "split_messages",
]

#: Flag byte, then the length as a big-endian u32.
MESSAGE_HEADER_BYTES: Final = 5
_HEADER: Final = struct.Struct(">BI")
#: gRPC's own default limit on a received message (grpc-java, grpc-go, grpcio: 4 MiB). A larger
#: length is refused before anything is buffered, so a hostile length cannot make a reader allocate.
DEFAULT_MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
_FLAG_COMPRESSED: Final = 0x01


class GrpcFramingError(ValueError):
    """A body that is not a run of gRPC messages, a message over the bound, or one that cannot be
    decompressed within it. ``offset`` is the byte offset in the body where the bad message starts."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset


@dataclass(frozen=True, slots=True)
class GrpcMessage:
    """One gRPC message: ``data`` as it was on the wire (still compressed when ``compressed``)."""

    compressed: bool
    data: bytes


def encode_message(data: bytes, compressed: bool = False) -> bytes:
    """One message with its 5-byte prefix."""
    return _HEADER.pack(_FLAG_COMPRESSED if compressed else 0, len(data)) + data


def _header(buf: bytes | bytearray, pos: int, max_message_bytes: int, base: int = 0) -> tuple[bool, int]:
    """(compressed, length) of the prefix at ``pos``; errors name the body offset ``base + pos``."""
    flag, length = _HEADER.unpack_from(buf, pos)
    if flag & ~_FLAG_COMPRESSED:
        raise GrpcFramingError(f"message flag {flag:#04x} has reserved bits set", base + pos)
    if length > max_message_bytes:
        raise GrpcFramingError(f"message of {length} bytes exceeds the {max_message_bytes}-byte bound", base + pos)
    return bool(flag), length


def split_messages(body: bytes, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[GrpcMessage]:
    """The messages of a complete body. Raises ``GrpcFramingError`` for a truncated message (the body
    ends inside a prefix or a message), reserved flag bits, or a message over ``max_message_bytes``."""
    out: list[GrpcMessage] = []
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < MESSAGE_HEADER_BYTES:
            raise GrpcFramingError(f"truncated message prefix ({end - pos} of 5 bytes)", pos)
        compressed, length = _header(body, pos, max_message_bytes)
        start = pos + MESSAGE_HEADER_BYTES
        if start + length > end:
            raise GrpcFramingError(f"truncated message: {end - start} of {length} bytes", pos)
        out.append(GrpcMessage(compressed, body[start : start + length]))
        pos = start + length
    return out


class MessageSplitter:
    """Incremental ``split_messages`` for a body that arrives in pieces (an HTTP/2 stream's DATA).

    ``feed`` returns the messages completed by a piece; at most one incomplete message is buffered,
    and never more than ``max_message_bytes`` of it. ``end`` says whether the body ended cleanly.
    """

    __slots__ = ("_buf", "_consumed", "_max")

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_message_bytes
        #: Bytes of the body already handed out as messages (for error offsets).
        self._consumed = 0

    def feed(self, data: bytes) -> list[GrpcMessage]:
        buf = self._buf
        buf += data
        out: list[GrpcMessage] = []
        pos = 0
        while len(buf) - pos >= MESSAGE_HEADER_BYTES:
            compressed, length = _header(buf, pos, self._max, self._consumed)
            start = pos + MESSAGE_HEADER_BYTES
            if start + length > len(buf):
                break
            out.append(GrpcMessage(compressed, bytes(buf[start : start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
            self._consumed += pos
        return out

    def end(self) -> None:
        """Raise ``GrpcFramingError`` when the body stopped inside a message."""
        if self._buf:
            raise GrpcFramingError(f"body ended inside a message ({len(self._buf)} bytes pending)", self._consumed)

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)


def decompress_message(data: bytes, encoding: str, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    """A compressed message's bytes, decoded by its call's ``grpc-encoding`` (``gzip``, ``deflate``,
    ``identity``) without ever producing more than ``max_bytes``: a small message that inflates past
    the bound (a compression bomb) raises ``GrpcFramingError``, as does damaged data or another
    encoding."""
    coding = encoding.strip().lower()
    if coding in ("identity", ""):
        if len(data) > max_bytes:
            raise GrpcFramingError(f"message of {len(data)} bytes exceeds the {max_bytes}-byte bound")
        return data
    if coding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif coding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise GrpcFramingError(f"unsupported grpc-encoding {encoding!r} (gzip, deflate and identity are)")
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(data, max_bytes)
    except zlib.error as exc:
        raise GrpcFramingError(f"cannot decompress {coding} message: {exc}") from exc
    if decoder.unconsumed_tail:
        raise GrpcFramingError(f"{coding} message inflates past the {max_bytes}-byte bound (a compression bomb?)")
    if not decoder.eof:
        raise GrpcFramingError(f"{coding} message is truncated")
    return out
