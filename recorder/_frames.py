"""Tape bytes: the segment header, checksummed frames, zstd blocks and format-version migrations.

Pure code over bytes (no files, no clock), shared by the writer and the reader; the byte layout is
specified in docs/tape-format.md and this module is its reference implementation. It must never do
I/O and never hand out a payload whose checksum has not been verified.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any, Final

import msgpack
import ormsgpack

from shadowtap.recorder.errors import TapeFormatError, TapeVersionError
from shadowtap.recorder.model import Exchange, exchange_to_wire

__all__ = [
    "FLAG_ZSTD",
    "FORMAT_VERSION",
    "FRAME_HEADER",
    "FRAME_HEADER_SIZE",
    "FRAME_SYNC",
    "KIND_EXCHANGE",
    "KIND_ZSTD_BLOCK",
    "MAGIC",
    "MAX_BLOCK_DECOMPRESSED_BYTES",
    "MAX_FRAME_BYTES",
    "MIGRATIONS",
    "SEGMENT_HEADER_SIZE",
    "SEGMENT_SUFFIX",
    "FrameEncoder",
    "Migration",
    "encode_frame",
    "encode_segment_header",
    "find_sync",
    "frame_crc",
    "migration_chain",
    "parse_segment_header",
    "segment_header_checksum_ok",
]

#: First 8 bytes of every segment. The high-bit byte catches 7-bit transports and the CR LF pair
#: catches newline translation, as PNG's signature does.
MAGIC: Final = b"\x89STAPE\r\n"
#: The version this code writes. Readers refuse newer versions and migrate older ones.
FORMAT_VERSION: Final = 2
SEGMENT_SUFFIX: Final = ".stape"

# magic, version u16, flags u16, crc32 of the 12 bytes before it.
_SEGMENT_HEADER: Final = struct.Struct("<8sHHI")
SEGMENT_HEADER_SIZE: Final = _SEGMENT_HEADER.size
#: Segment flag bit 0: the writer stored its frames in zstd blocks (informational: readers decode
#: frames by their kind, whatever the flags say). Other bits are reserved, written 0, ignored.
FLAG_ZSTD: Final = 1

#: Two bytes that open every frame, so a salvaging reader can find the next frame after corruption
#: with a fast byte search. As a little-endian u16 it reads 0x1DF5.
FRAME_SYNC: Final = 0x1DF5
_FRAME_SYNC_BYTES: Final = b"\xf5\x1d"
# sync u16, kind u8, payload length u32, crc32 u32 of the first 7 header bytes then the payload.
FRAME_HEADER: Final = struct.Struct("<HBII")
FRAME_HEADER_SIZE: Final = FRAME_HEADER.size
_FRAME_PREFIX: Final = struct.Struct("<HBI")
_CRC: Final = struct.Struct("<I")

#: Payload is one msgpack-encoded Exchange record (the model's positional array).
KIND_EXCHANGE: Final = 1
#: Payload is one zstd frame whose content is a run of complete KIND_EXCHANGE frames.
KIND_ZSTD_BLOCK: Final = 2
#: A frame longer than this is treated as corruption: it bounds what a damaged length can make a
#: reader allocate. Far above any block the writer makes (blocks are about 1 MiB).
MAX_FRAME_BYTES: Final = 256 * 1024 * 1024
#: Same bound for a decompressed block, so a hostile zstd frame cannot balloon memory.
MAX_BLOCK_DECOMPRESSED_BYTES: Final = 512 * 1024 * 1024

Migration = Callable[[Any], Any]

# Version 2 gave request element 8 and response element 7 (after the tag) a meaning: trailers, then
# the gRPC message list. A version-1 reader ignores them, and would read a gRPC call that failed
# (its grpc-status lives in the trailers) as a success: hence the bump.
_V1_REQUEST_FIELDS: Final = 8
_V1_RESPONSE_FIELDS: Final = 7


def _v1_outcome(outcome: Any) -> Any:
    if type(outcome) in (tuple, list) and len(outcome) > _V1_RESPONSE_FIELDS and outcome[0] == 0:
        return outcome[:_V1_RESPONSE_FIELDS]
    return outcome


def _v1_to_v2(record: Any) -> Any:
    """A version-1 exchange record as version 2: requests and responses have no trailers and no
    messages, and an HTTP version left out is 1.1 (as in v1). A v1 writer could append elements a v1
    reader ignores; the positions v2 defines are cut from v1 records, so such an element is never
    read as trailers. Records are left as they are otherwise (a malformed one is refused by the
    decoder, naming its field)."""
    if type(record) not in (tuple, list) or len(record) < 4:
        return record
    request = record[3]
    long_request = type(request) in (tuple, list) and len(request) > _V1_REQUEST_FIELDS
    shadows = record[5] if len(record) > 5 else None
    long_outcome = any(
        type(o) in (tuple, list) and len(o) > _V1_RESPONSE_FIELDS
        for o in (record[4] if len(record) > 4 else None, *(shadows.values() if type(shadows) is dict else ()))
    )
    if not (long_request or long_outcome):
        return record
    out = list(record)
    if long_request:
        out[3] = request[:_V1_REQUEST_FIELDS]
    if len(out) > 4:
        out[4] = _v1_outcome(out[4])
    if type(shadows) is dict:
        out[5] = {name: _v1_outcome(o) for name, o in shadows.items()}
    return out


#: ``MIGRATIONS[n]`` turns one exchange record array of format version ``n`` into version ``n + 1``.
MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2}


def frame_crc(kind: int, payload: bytes | memoryview) -> int:
    """The checksum stored in a frame header: crc32 over the first 7 header bytes then the payload."""
    return zlib.crc32(payload, zlib.crc32(_FRAME_PREFIX.pack(FRAME_SYNC, kind, len(payload))))


def encode_segment_header(flags: int = 0, version: int = FORMAT_VERSION) -> bytes:
    head = _SEGMENT_HEADER.pack(MAGIC, version, flags, 0)[:12]
    return head + _CRC.pack(zlib.crc32(head))


def parse_segment_header(head: bytes, path: str) -> tuple[int, int]:
    """(version, flags) of a 16-byte segment header; raises with ``path`` on any mismatch."""
    if not MAGIC.startswith(head[: len(MAGIC)]):
        raise TapeFormatError("not a shadowtap tape segment (bad magic)", path=path, offset=0)
    if len(head) < SEGMENT_HEADER_SIZE:
        raise TapeFormatError("segment header is incomplete", path=path, offset=len(head))
    _magic, version, flags, _crc = _SEGMENT_HEADER.unpack_from(head)
    if not segment_header_checksum_ok(head):
        raise TapeFormatError("segment header checksum mismatch", path=path, offset=12)
    if version > FORMAT_VERSION:
        raise TapeVersionError(
            f"written by a newer shadowtap (tape format v{version}); this one reads up to v{FORMAT_VERSION}: "
            "upgrade shadowtap to read it",
            path=path,
            offset=8,
        )
    return version, flags


def segment_header_checksum_ok(head: bytes) -> bool:
    """Whether a 16-byte segment header's checksum matches its first 12 bytes."""
    stored: int = _CRC.unpack_from(head, 12)[0]
    return zlib.crc32(head[:12]) == stored


def migration_chain(version: int, path: str) -> Migration | None:
    """The function that upgrades a record of ``version`` to the current one; None when current."""
    if version == FORMAT_VERSION:
        return None
    steps: list[Migration] = []
    for from_version in range(version, FORMAT_VERSION):
        step = MIGRATIONS.get(from_version)
        if step is None:
            raise TapeVersionError(
                f"tape format v{version} is not readable by this shadowtap (no migration from v{from_version})",
                path=path,
                offset=8,
            )
        steps.append(step)

    def migrate(record: Any) -> Any:
        for step in steps:
            record = step(record)
        return record

    return migrate


class FrameEncoder:
    """Turns exchanges into frame bytes. Holds a msgpack Packer (the fallback), so one per thread."""

    __slots__ = ("_fallback",)

    def __init__(self) -> None:
        self._fallback = msgpack.Packer(use_bin_type=True, autoreset=True).pack

    def pack(self, record: Any) -> bytes:
        """``record`` packed by ormsgpack (Rust): the same bytes as ``msgpack.Packer(use_bin_type=True)``
        for what a record holds (str, bytes, int, float, None, bool, list, tuple, dict with str keys)
        at about a third of the cost, which on the proxy is CPU taken from the data path (the writer
        thread shares its GIL). What ormsgpack refuses (a dict with non-str keys) goes to msgpack, so
        every record msgpack could encode is still encoded, and identically."""
        try:
            return ormsgpack.packb(record)
        except TypeError:  # ormsgpack.MsgpackEncodeError is one
            return self._fallback(record)

    def exchange_parts(self, exchange: Exchange, out: list[bytes], rewrite: Callable[[list[Any]], None] | None) -> int:
        """Append one KIND_EXCHANGE frame to ``out`` (as 3 parts for a later join); return its size.

        ``rewrite`` may change the record array in place before it is packed (redaction).
        """
        return self.record_parts(exchange_to_wire(exchange), out, rewrite)

    def record_parts(self, record: list[Any], out: list[bytes], rewrite: Callable[[list[Any]], None] | None) -> int:
        """``exchange_parts`` for a record array already in wire form (``shadowtap.recorder.model.exchange_record``)."""
        if rewrite is not None:
            rewrite(record)
        payload: bytes = self.pack(record)
        prefix = _FRAME_PREFIX.pack(FRAME_SYNC, KIND_EXCHANGE, len(payload))
        out.append(prefix)
        out.append(_CRC.pack(zlib.crc32(payload, zlib.crc32(prefix))))
        out.append(payload)
        return FRAME_HEADER_SIZE + len(payload)


def encode_frame(kind: int, payload: bytes) -> bytes:
    """One complete frame of ``kind`` around ``payload``."""
    prefix = _FRAME_PREFIX.pack(FRAME_SYNC, kind, len(payload))
    return prefix + _CRC.pack(zlib.crc32(payload, zlib.crc32(prefix))) + payload


def find_sync(buf: bytes, start: int) -> int:
    """Offset of the next frame sync marker in ``buf`` at or after ``start``, or -1."""
    return buf.find(_FRAME_SYNC_BYTES, start)
