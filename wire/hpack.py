"""HPACK (RFC 7541) header compression for the HTTP/2 connections of the wire layer, compiled with the
data path: ``Encoder`` and ``Decoder`` take the place of the ``hpack`` package's on an ``h2``
connection (``install``), which stays the state machine.

The pure-Python ``hpack`` package decodes Huffman strings bit by bit and logs every field at debug
level; on the proxy's HTTP/2 path it was about a third of the CPU of a request. This codec decodes
Huffman a nibble at a time from a state table built once at import, and encodes without Huffman
(RFC 7541 lets an encoder choose: a literal costs a few bytes more on the wire, no CPU), indexing
fields in the dynamic table except those whose values rarely repeat (``:path``, dates, lengths).
It raises the ``hpack`` package's exceptions, so ``h2`` turns a bad header block into the same
protocol error (and an oversized one into the same denial-of-service error) as before.

Sans-IO and policy-free: bytes in, fields out. It must never accept a block ``hpack`` would refuse.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

import hpack.exceptions
import hpack.huffman_constants
import hpack.struct
import hpack.table

__all__ = ["Decoder", "Encoder", "install"]

#: RFC 7541 section 4.2: the dynamic table's size until SETTINGS say otherwise.
DEFAULT_TABLE_SIZE: Final = 4096
#: Header fields are decoded into ``(name, value)`` tuples; a literal never-indexed field keeps its
#: kind (``hpack.NeverIndexedHeaderTuple``) so whoever forwards it can keep it out of compression.
_NEVER_INDEXED: Final[Any] = hpack.struct.NeverIndexedHeaderTuple
#: Integers larger than this in a header block are refused (no field, size or index is that large;
#: the bound keeps a hostile run of continuation bytes from building a huge number).
_MAX_INTEGER: Final = 1 << 32

_STATIC: Final[tuple[tuple[bytes, bytes], ...]] = tuple(
    (bytes(name), bytes(value)) for name, value in hpack.table.HeaderTable.STATIC_TABLE
)
_STATIC_LEN: Final = len(_STATIC)


def _static_fields() -> dict[bytes, dict[bytes, int]]:
    fields: dict[bytes, dict[bytes, int]] = {}
    for index, (name, value) in enumerate(_STATIC, 1):
        fields.setdefault(name, {}).setdefault(value, index)
    return fields


def _static_names() -> dict[bytes, int]:
    names: dict[bytes, int] = {}
    for index, (name, _) in enumerate(_STATIC, 1):
        names.setdefault(name, index)
    return names


# By name, then value: no tuple to build and hash for each look-up. Final, each on its own:
# compiled, a Final global is a static, not a look-up in the module's dict.
_STATIC_FIELDS: Final = _static_fields()
_STATIC_NAMES: Final = _static_names()
#: Every one-byte string: an HPACK integer that fits its prefix is one of these (no bytearray).
_BYTE: Final[tuple[bytes, ...]] = tuple(bytes((i,)) for i in range(256))

#: Fields whose values seldom repeat from one request to the next: indexing them would only push
#: the ones that do repeat out of the table (nghttp2 leaves the same ones out).
_NOT_INDEXED: Final = frozenset(
    (b":path", b"content-length", b"date", b"etag", b"if-modified-since", b"if-none-match", b"last-modified",
     b"location", b"set-cookie", b"age", b"link", b"grpc-message", b"x-request-id")
)  # fmt: skip
#: Field values longer than this are sent as literals without indexing (a table holds little else).
_MAX_INDEXED_VALUE: Final = 256


def _entry_size(name: bytes, value: bytes) -> int:
    return len(name) + len(value) + 32


# --- Huffman decoding -------------------------------------------------------------------------------

#: Flags of a state-table entry (the low 8 bits are the next state).
_EMIT: Final = 1 << 16
_FAIL: Final = 1 << 17
#: An entry's symbol sits above bit 8.
_SYMBOL_SHIFT: Final = 8


def _huffman_states() -> tuple[list[int], list[bool]]:
    """The decoding table: for each internal node of the code tree (state) and each 4-bit input,
    the state reached, the symbol emitted on the way (at most one: no code is shorter than 5 bits)
    and whether the input is invalid (EOS inside a string); and which states may end a string
    (padding: at most 7 bits, all ones, RFC 7541 section 5.2)."""
    codes = hpack.huffman_constants.REQUEST_CODES
    lengths = hpack.huffman_constants.REQUEST_CODES_LENGTH
    # Internal nodes: children as node ids (>= 0) or leaves (-1 - symbol).
    zero: list[int] = [0]
    one: list[int] = [0]
    depth: list[int] = [0]
    all_ones: list[bool] = [True]
    for symbol in range(257):
        code = int(codes[symbol])
        length = int(lengths[symbol])
        node = 0
        for bit_index in range(length - 1, -1, -1):
            bit = (code >> bit_index) & 1
            children = one if bit else zero
            if bit_index == 0:
                children[node] = -1 - symbol
                break
            child = children[node]
            if child <= 0:
                child = len(zero)
                zero.append(0)
                one.append(0)
                depth.append(depth[node] + 1)
                all_ones.append(all_ones[node] and bit == 1)
                children[node] = child
            node = child
    table = [0] * (len(zero) * 16)
    for state in range(len(zero)):
        for nibble in range(16):
            node = state
            entry = 0
            for bit_index in range(3, -1, -1):
                bit = (nibble >> bit_index) & 1
                child = one[node] if bit else zero[node]
                if child < 0:
                    symbol = -1 - child
                    if symbol == 256:
                        entry |= _FAIL
                        break
                    entry |= _EMIT | (symbol << _SYMBOL_SHIFT)
                    node = 0
                else:
                    node = child
            table[state * 16 + nibble] = entry | (0 if entry & _FAIL else node)
    accepting = [all_ones[state] and depth[state] <= 7 for state in range(len(zero))]
    return table, accepting


_HUFFMAN, _ACCEPTING = _huffman_states()


def huffman_decode(data: bytes) -> bytes:
    """A Huffman-coded string (RFC 7541 section 5.2) decoded; ``HPACKDecodingError`` when invalid."""
    table = _HUFFMAN
    out = bytearray()
    state = 0
    for byte in data:
        entry = table[(state << 4) | (byte >> 4)]
        if entry & (_EMIT | _FAIL):
            if entry & _FAIL:
                raise hpack.exceptions.HPACKDecodingError("EOS in a Huffman-coded string")
            out.append((entry >> _SYMBOL_SHIFT) & 0xFF)
        state = entry & 0xFF
        entry = table[(state << 4) | (byte & 0xF)]
        if entry & (_EMIT | _FAIL):
            if entry & _FAIL:
                raise hpack.exceptions.HPACKDecodingError("EOS in a Huffman-coded string")
            out.append((entry >> _SYMBOL_SHIFT) & 0xFF)
        state = entry & 0xFF
    if not _ACCEPTING[state]:
        raise hpack.exceptions.HPACKDecodingError("invalid padding in a Huffman-coded string")
    return bytes(out)


# --- encoding ---------------------------------------------------------------------------------------


def _integer(first: int, value: int, prefix_bits: int) -> bytes:
    """``value`` with an N-bit prefix (RFC 7541 section 5.1); ``first`` has the pattern bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return _BYTE[first | value]
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


class Encoder:
    """Encodes header lists for one connection (its dynamic table is the peer's decoder's twin)."""

    def __init__(self) -> None:
        self._max_size = DEFAULT_TABLE_SIZE
        self._size = 0
        #: The dynamic table, oldest first: (name, value, sequence number).
        self._entries: deque[tuple[bytes, bytes, int]] = deque()
        self._inserted = 0
        #: Newest entry (its sequence number) of each field (by name, then value) and of each name.
        self._by_field: dict[bytes, dict[bytes, int]] = {}
        self._by_name: dict[bytes, int] = {}
        #: The smallest size set since the last block, when a size update is due (RFC 7541 4.2).
        self._resize_low = -1

    @property
    def header_table_size(self) -> int:
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE: this table follows it, said at the next block."""
        self._max_size = value
        self._resize_low = value if self._resize_low < 0 else min(self._resize_low, value)
        self._evict(0)

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        """One header block. ``headers``: (name, value) pairs, bytes or str; a
        ``hpack.NeverIndexedHeaderTuple`` stays out of every table. ``huffman`` is ignored (never used)."""
        parts: list[bytes] = []
        if self._resize_low >= 0:
            if self._resize_low < self._max_size:
                parts.append(_integer(0x20, self._resize_low, 5))
            parts.append(_integer(0x20, self._max_size, 5))
            self._resize_low = -1
        for header in headers:
            name = header[0]
            value = header[1]
            if type(name) is not bytes:
                name = _as_bytes(name)
            if type(value) is not bytes:
                value = _as_bytes(value)
            if type(header) is tuple:
                self._field(parts, name, value)
            elif isinstance(header, _NEVER_INDEXED):
                self._literal(parts, name, value, 0x10, 4)  # never indexed
            else:
                self._field(parts, name, value)
        return b"".join(parts)

    def _field(self, parts: list[bytes], name: bytes, value: bytes) -> None:
        values = _STATIC_FIELDS.get(name)
        if values is not None:
            index = values.get(value, 0)
            if index:
                parts.append(_BYTE[0x80 | index])
                return
        values = self._by_field.get(name)
        if values is not None:
            seq = values.get(value, -1)
            if seq >= 0:
                parts.append(_integer(0x80, _STATIC_LEN + self._inserted - seq, 7))
                return
        if name in _NOT_INDEXED or len(value) > _MAX_INDEXED_VALUE or _entry_size(name, value) > self._max_size:
            self._literal(parts, name, value, 0x00, 4)  # without indexing
        else:
            self._literal(parts, name, value, 0x40, 6)  # with incremental indexing
            self._add(name, value)

    def _literal(self, parts: list[bytes], name: bytes, value: bytes, first: int, prefix: int) -> None:
        name_index = _STATIC_NAMES.get(name, 0)
        if not name_index:
            seq = self._by_name.get(name, -1)
            if seq >= 0:
                name_index = _STATIC_LEN + self._inserted - seq
        if name_index:
            parts.append(_integer(first, name_index, prefix))
        else:
            parts.append(_BYTE[first])
            parts.append(_integer(0, len(name), 7))
            parts.append(name)
        parts.append(_integer(0, len(value), 7))
        parts.append(value)

    def _add(self, name: bytes, value: bytes) -> None:
        size = _entry_size(name, value)
        self._evict(size)
        seq = self._inserted
        self._inserted = seq + 1
        self._entries.append((name, value, seq))
        self._size += size
        values = self._by_field.get(name)
        if values is None:
            values = self._by_field[name] = {}
        values[value] = seq
        self._by_name[name] = seq

    def _evict(self, room: int) -> None:
        entries = self._entries
        while entries and self._size + room > self._max_size:
            name, value, seq = entries.popleft()
            self._size -= _entry_size(name, value)
            values = self._by_field[name]
            if values.get(value, -1) == seq:
                del values[value]
                if not values:
                    del self._by_field[name]
            if self._by_name.get(name, -1) == seq:
                del self._by_name[name]


# --- decoding ---------------------------------------------------------------------------------------


#: Decoded Huffman strings a decoder keeps, and the longest it keeps (``Decoder._huffman``).
_HUFFMAN_CACHE: Final = 256
_HUFFMAN_CACHED_BYTES: Final = 64


class Decoder:
    """Decodes the peer's header blocks for one connection."""

    def __init__(self, max_header_list_size: int = 1 << 16) -> None:
        #: The largest header list accepted (names, values and 32 bytes a field, RFC 9113 6.5.2).
        self.max_header_list_size = max_header_list_size
        #: The largest table the peer may ask for (our SETTINGS_HEADER_TABLE_SIZE).
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE
        self.header_table_size = DEFAULT_TABLE_SIZE
        self._size = 0
        #: The dynamic table, oldest first from ``_oldest`` (index 62 is the last entry): a list
        #: and a start rather than a deque, because a peer may add fields to it on every block
        #: (nginx adds its server, date, type and length to every answer), and compiled, a list's
        #: append and index are native where a deque's methods are calls by name.
        self._table: list[tuple[bytes, bytes]] = []
        self._oldest = 0
        #: Short Huffman-coded strings already decoded: a peer sends the same values again and again
        #: outside its table (a ``date`` for a second, a length), and decoding is a table step per
        #: four bits. Bounded: at most ``_HUFFMAN_CACHE`` strings of at most ``_HUFFMAN_CACHED_BYTES``.
        self._huffman: dict[bytes, bytes] = {}

    def decode(self, data: bytes, raw: bool = True) -> list[Any]:
        """One header block as ``(name, value)`` byte pairs (``raw`` is ignored: always bytes)."""
        headers: list[Any] = []
        end = len(data)
        at = 0
        inflated = 0
        limit = self.max_header_list_size
        while at < end:
            first = data[at]
            sensitive = False
            if first & 0x80:
                index, at = self._integer(data, at, 7)
                name, value = self._lookup(index)
            elif first & 0x40 or not first & 0x20:
                if first & 0x40:
                    index, at = self._integer(data, at, 6)
                else:
                    sensitive = bool(first & 0x10)
                    index, at = self._integer(data, at, 4)
                if index:
                    name = self._lookup(index)[0]
                else:
                    name, at = self._string(data, at)
                value, at = self._string(data, at)
                if first & 0x40:
                    self._add(name, value)
            else:
                if headers:
                    raise hpack.exceptions.HPACKDecodingError("Table size update not at the start of the block")
                size, at = self._integer(data, at, 5)
                if size > self.max_allowed_table_size:
                    raise hpack.exceptions.InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                self._evict(0)
                continue
            headers.append(_NEVER_INDEXED(name, value) if sensitive else (name, value))
            inflated += len(name) + len(value) + 32
            if inflated > limit:
                raise hpack.exceptions.OversizedHeaderListError(f"A header list larger than {limit} has been received")
        if self.header_table_size > self.max_allowed_table_size:
            raise hpack.exceptions.InvalidTableSizeError("Encoder did not shrink table size to within the max")
        return headers

    def _integer(self, data: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
        limit = (1 << prefix_bits) - 1
        value = data[at] & limit
        at += 1
        if value < limit:
            return value, at
        shift = 0
        end = len(data)
        while True:
            if at >= end:
                raise hpack.exceptions.HPACKDecodingError("integer runs past the end of the header block")
            byte = data[at]
            at += 1
            value += (byte & 0x7F) << shift
            if value > _MAX_INTEGER:
                raise hpack.exceptions.HPACKDecodingError("integer too large in a header block")
            if not byte & 0x80:
                return value, at
            shift += 7

    def _string(self, data: bytes, at: int) -> tuple[bytes, int]:
        if at >= len(data):
            raise hpack.exceptions.HPACKDecodingError("a string runs past the end of the header block")
        huffman = data[at] & 0x80
        length, at = self._integer(data, at, 7)
        end = at + length
        if end > len(data):
            raise hpack.exceptions.HPACKDecodingError("a string runs past the end of the header block")
        raw = data[at:end]
        if not huffman:
            return raw, end
        if length > _HUFFMAN_CACHED_BYTES:
            return huffman_decode(raw), end
        cache = self._huffman
        decoded = cache.get(raw)
        if decoded is None:
            decoded = huffman_decode(raw)  # raises for an invalid string: nothing is cached
            if len(cache) >= _HUFFMAN_CACHE:
                cache.clear()
            cache[raw] = decoded
        return decoded, end

    def _lookup(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LEN:
            return _STATIC[index - 1]
        table = self._table
        position = len(table) - (index - _STATIC_LEN)
        if index == 0 or position < self._oldest:
            raise hpack.exceptions.InvalidTableIndexError(f"Invalid table index {index}")
        return table[position]

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        self._evict(size)
        if size <= self.header_table_size:
            self._table.append((name, value))
            self._size += size

    def _evict(self, room: int) -> None:
        table = self._table
        oldest = self._oldest
        while oldest < len(table) and self._size + room > self.header_table_size:
            name, value = table[oldest]
            oldest += 1
            self._size -= len(name) + len(value) + 32
        if oldest > 64 and 2 * oldest > len(table):
            del table[:oldest]  # the evicted entries go, in one move now and then
            oldest = 0
        self._oldest = oldest


def install(connection: Any) -> None:
    """Give an ``h2`` connection this codec (before it sends or receives a header block)."""
    decoder = Decoder(int(connection.decoder.max_header_list_size))
    connection.encoder = Encoder()
    connection.decoder = decoder
