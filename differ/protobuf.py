"""Protobuf messages as field trees: plain dicts, lists, strings and numbers the differ walks like JSON.

Three ways to name fields, best first: a descriptor set (``protoc --descriptor_set_out
--include_imports``), the same descriptors fetched once from a server by gRPC server reflection
(``reflect_descriptor_set``), or none: a schema-less reading of the wire format. With descriptors a
field is keyed by its name and typed (enums by value name, 64-bit ints as ints, bytes as base64,
maps as objects, repeated fields always as arrays, ``google.protobuf.Timestamp`` and ``Duration``
as the text proto3's JSON mapping gives them: ``"2026-12-05T07:41:02.123Z"``, ``"1.500s"``), and a
field the descriptors do not know keeps its number as key, read schema-less. Without descriptors
keys are field numbers (``"3"``), a field seen more than once is an array, a varint or fixed-width
value is an unsigned int, and a length-delimited value is a nested message only when it is not
printable text and parses fully as a message (field numbers 1 to 2**29 - 1, no groups, at most
``MAX_DEPTH`` deep); otherwise a string when it is valid UTF-8, else its base64. Decoding never
runs past ``MAX_DEPTH`` levels and raises ``ProtobufDecodeError`` for anything that is not a message
of its type. This module must never do I/O but in ``reflect_descriptor_set`` and
``ProtoSchema.from_file``, and never compare anything.
"""

from __future__ import annotations

import base64
import contextlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

if TYPE_CHECKING:
    from google.protobuf.descriptor import Descriptor, FieldDescriptor
    from google.protobuf.message import Message

__all__ = [
    "MAX_DEPTH",
    "MethodTypes",
    "ProtoSchema",
    "ProtobufDecodeError",
    "decode_schemaless",
    "load_schema",
    "reflect_descriptor_set",
]

#: Nesting deeper than this is refused: protobuf's own parsers stop at 100; a hostile message must
#: not exhaust the stack. Real schemas rarely pass 20.
MAX_DEPTH: Final = 64
_MAX_FIELD_NUMBER: Final = (1 << 29) - 1
# C0 controls but tab, LF and CR: their presence means "bytes that happen to be UTF-8", not text.
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class ProtobufDecodeError(ValueError):
    """Bytes that are not a protobuf message (of the expected type), or nested past ``MAX_DEPTH``."""


# --- schema-less -----------------------------------------------------------------------------------


def _bytes_value(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# Sub-messages and strings recur: the two answers of a pair share most of theirs, and so do answers
# of one method. Decoded values of small length-delimited fields are remembered by their bytes (trees
# are never modified once built, so sharing them is safe); bounded in entries and in each value's
# size, and cleared when full.
_MEMO: dict[bytes, Any] = {}
_MEMO_MAX_ENTRIES: Final = 16_384
_MEMO_MAX_VALUE_BYTES: Final = 2048
_MISSING: Final = object()


def _length_delimited(data: bytes, depth: int) -> Any:
    """A length-delimited value without a schema: message, else text, else bytes (base64)."""
    if not data:
        return ""
    small = len(data) <= _MEMO_MAX_VALUE_BYTES
    if small:
        known = _MEMO.get(data, _MISSING)
        if known is not _MISSING:
            return known
    value: Any
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and _CONTROL.search(text) is None:
        value = text
    else:
        value = _MISSING
        if depth < MAX_DEPTH:
            with contextlib.suppress(ProtobufDecodeError):
                value = _schemaless(data, depth + 1)
        if value is _MISSING:
            value = text if text is not None else _bytes_value(data)
    if small:
        if len(_MEMO) >= _MEMO_MAX_ENTRIES:
            _MEMO.clear()
        _MEMO[data] = value
    return value


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise ProtobufDecodeError("message ends inside a varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ProtobufDecodeError("varint longer than 10 bytes")


def _schemaless(data: bytes, depth: int) -> dict[str, Any]:
    # The wire format read in Python, one-byte tags, varints and lengths taken without a call: this
    # loop runs once per field. (Parsing as an empty message type with protobuf's C parser and reading
    # its unknown fields was slower: protobuf builds those items in Python.)
    out: dict[str, Any] = {}
    repeated: set[str] | None = None
    pos, end = 0, len(data)
    value: Any
    while pos < end:
        tag = data[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = _varint(data, pos - 1, end)
            if tag >> 3 > _MAX_FIELD_NUMBER:
                raise ProtobufDecodeError(f"field number {tag >> 3} out of range")
        wire_type = tag & 7
        if wire_type == 0:
            if pos >= end:
                raise ProtobufDecodeError("message ends inside a varint")
            value = data[pos]
            pos += 1
            if value >= 0x80:
                value, pos = _varint(data, pos - 1, end)
        elif wire_type == 2:
            if pos >= end:
                raise ProtobufDecodeError("message ends inside a length")
            length = data[pos]
            pos += 1
            if length >= 0x80:
                length, pos = _varint(data, pos - 1, end)
            stop = pos + length
            if stop > end:
                raise ProtobufDecodeError(f"field {tag >> 3}: {length} bytes announced, {end - pos} left")
            value = _length_delimited(data[pos:stop], depth)
            pos = stop
        elif wire_type == 1 or wire_type == 5:
            stop = pos + (8 if wire_type == 1 else 4)
            if stop > end:
                raise ProtobufDecodeError(f"message ends inside a {64 if wire_type == 1 else 32}-bit value")
            value = int.from_bytes(data[pos:stop], "little")
            pos = stop
        else:
            raise ProtobufDecodeError(f"field {tag >> 3}: wire type {wire_type} (a group, or invalid)")
        if tag < 8:
            raise ProtobufDecodeError("field number 0")
        key = str(tag >> 3)
        previous = out.get(key, _MISSING)
        if previous is _MISSING:
            out[key] = value
        elif repeated is not None and key in repeated:
            previous.append(value)
        else:
            out[key] = [previous, value]
            if repeated is None:
                repeated = set()
            repeated.add(key)
    return out


def decode_schemaless(data: bytes) -> dict[str, Any]:
    """A message's fields by number, read from the wire format alone (see the module's docstring)."""
    return _schemaless(data, 0)


# --- with descriptors ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MethodTypes:
    """A gRPC method's message types and streaming kinds."""

    request: Descriptor
    response: Descriptor
    client_streaming: bool
    server_streaming: bool


# How each field is turned into a tree value, decided once per field descriptor.
_PLAIN: Final = 0
_ENUM: Final = 1
_BYTES: Final = 2
_MESSAGE: Final = 3
_MAP: Final = 4
_TIMESTAMP: Final = 5
_DURATION: Final = 6
#: Well-known types read as proto3's JSON mapping writes them: one value, not their two numbers.
_WELL_KNOWN: Final = {"google.protobuf.Timestamp": _TIMESTAMP, "google.protobuf.Duration": _DURATION}
#: (key in the tree, kind, repeated, extra: enum names by number, or a map's value plan)
_Plan = tuple[str, int, bool, Any]


def _field_plan(fd: FieldDescriptor) -> _Plan:
    if fd.type == fd.TYPE_MESSAGE:
        if fd.message_type.GetOptions().map_entry:
            return fd.name, _MAP, False, _field_plan(fd.message_type.fields_by_name["value"])
        return fd.name, _WELL_KNOWN.get(fd.message_type.full_name, _MESSAGE), fd.is_repeated, None
    if fd.type == fd.TYPE_ENUM:
        names = {number: value.name for number, value in fd.enum_type.values_by_number.items()}
        return fd.name, _ENUM, fd.is_repeated, names
    if fd.type == fd.TYPE_BYTES:
        return fd.name, _BYTES, fd.is_repeated, None
    return fd.name, _PLAIN, fd.is_repeated, None


def _single(plan: _Plan, value: Any, depth: int, plans: dict[Any, _Plan], unknown: bool) -> Any:
    kind = plan[1]
    if kind == _MESSAGE:
        return _tree(value, depth + 1, plans, unknown)
    if kind == _ENUM:
        return plan[3].get(value, value)
    if kind == _BYTES:
        return _bytes_value(value)
    if kind == _TIMESTAMP:
        return _timestamp_text(value.seconds, value.nanos) or _tree(value, depth + 1, plans, unknown)
    if kind == _DURATION:
        return _duration_text(value.seconds, value.nanos)
    return value


def _fraction(nanos: int) -> str:
    """Nanoseconds as proto3 JSON writes them: none, or 3, 6 or 9 digits."""
    if nanos == 0:
        return ""
    if nanos % 1_000_000 == 0:
        return f".{nanos // 1_000_000:03d}"
    if nanos % 1_000 == 0:
        return f".{nanos // 1_000:06d}"
    return f".{nanos:09d}"


def _timestamp_text(seconds: int, nanos: int) -> str | None:
    """A ``google.protobuf.Timestamp`` as RFC 3339 in UTC (``2026-12-05T07:41:02.123Z``), as proto3's
    JSON mapping writes it; None outside what RFC 3339 can say (years 1 to 9999, nanos in range)."""
    if not 0 <= nanos < 1_000_000_000:
        return None
    try:
        moment = _EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        return None
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}{_fraction(nanos)}Z"
    )


def _duration_text(seconds: int, nanos: int) -> str:
    """A ``google.protobuf.Duration`` as proto3's JSON mapping writes it (``1.500s``, ``-0.250s``)."""
    sign = "-" if seconds < 0 or nanos < 0 else ""
    return f"{sign}{abs(seconds)}{_fraction(abs(nanos))}s"


def _tree(message: Message, depth: int, plans: dict[Any, _Plan], unknown: bool) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise ProtobufDecodeError(f"message nested deeper than {MAX_DEPTH} levels")
    out: dict[str, Any] = {}
    for fd, value in message.ListFields():
        plan = plans.get(fd)
        if plan is None:
            plan = plans[fd] = _field_plan(fd)
        name, kind, repeated, extra = plan
        if kind == _PLAIN:
            out[name] = list(value) if repeated else value
        elif kind == _MAP:
            out[name] = {str(k): _single(extra, v, depth, plans, unknown) for k, v in value.items()}
        elif repeated:
            out[name] = [_single(plan, v, depth, plans, unknown) for v in value]
        else:
            out[name] = _single(plan, value, depth, plans, unknown)
    if unknown:
        _unknown_fields(message, out, depth)
    return out


def _unknown_fields(message: Message, out: dict[str, Any], depth: int) -> None:
    unknown = UnknownFieldSet(message)
    if not len(unknown):
        return
    for item in unknown:
        key = str(item.field_number)
        wire_type = item.wire_type
        if wire_type == 2:
            value: Any = _length_delimited(item.data, depth)
        elif wire_type in (0, 1, 5):
            value = item.data
        else:
            continue  # a group: no reader for its contents without the schema
        previous = out.get(key)
        if previous is None:
            out[key] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            out[key] = [previous, value]


@dataclass(slots=True)
class ProtoSchema:
    """The descriptors of a ``FileDescriptorSet`` (serialized), ready to decode messages by type.

    Only the bytes and their ``source`` are pickled (workers rebuild the pool on first use), so a
    schema crosses process boundaries as cheaply as its file.
    """

    descriptor_set: bytes
    source: str = ""
    _pool: Any = field(default=None, init=False, repr=False, compare=False)
    _classes: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    _methods: dict[str, MethodTypes | None] = field(default_factory=dict, init=False, repr=False, compare=False)
    _plans: dict[Any, _Plan] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._load()

    def __getstate__(self) -> tuple[bytes, str]:
        return self.descriptor_set, self.source

    def __setstate__(self, state: tuple[bytes, str]) -> None:
        self.descriptor_set, self.source = state
        self._classes, self._methods, self._plans = {}, {}, {}
        self._load()

    @classmethod
    def from_file(cls, path: Path) -> ProtoSchema:
        """Read a descriptor set file (``protoc --descriptor_set_out=FILE --include_imports``)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ProtobufDecodeError(f"cannot read descriptor set {path}: {exc.strerror or exc}") from exc
        return cls(data, str(path))

    def _load(self) -> None:
        from google.protobuf import descriptor_pb2, descriptor_pool

        files = descriptor_pb2.FileDescriptorSet()
        where = self.source or "descriptor set"
        try:
            files.ParseFromString(self.descriptor_set)
        except DecodeError as exc:
            raise ProtobufDecodeError(f"{where} is not a serialized FileDescriptorSet: {exc}") from exc
        if not files.file:
            raise ProtobufDecodeError(f"{where} holds no .proto files")
        pool = descriptor_pool.DescriptorPool()
        try:
            for proto in files.file:
                pool.Add(proto)
            # Resolving each file now reports a missing import here rather than at the first message.
            for proto in files.file:
                pool.FindFileByName(proto.name)
        except (TypeError, KeyError) as exc:
            raise ProtobufDecodeError(f"{where}: {exc} (was it written with --include_imports?)") from exc
        self._pool = pool

    def method(self, path: str) -> MethodTypes | None:
        """The types of gRPC method ``path`` (``/shop.Catalog/GetProduct``); None when unknown."""
        known = self._methods.get(path, False)
        if known is not False:
            return known  # type: ignore[return-value]
        service_name, _, method_name = path.lstrip("/").partition("/")
        found: MethodTypes | None = None
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            service = None
        if service is not None:
            method = service.methods_by_name.get(method_name)
            if method is not None:
                found = MethodTypes(
                    method.input_type, method.output_type, method.client_streaming, method.server_streaming
                )
        if len(self._methods) < 4096:  # a bound: paths come from the tape
            self._methods[path] = found
        return found

    def message_tree(self, descriptor: Descriptor, data: bytes) -> dict[str, Any]:
        """One message of type ``descriptor`` as a tree of field names."""
        from google.protobuf import message_factory

        cls = self._classes.get(descriptor.full_name)
        if cls is None:
            cls = self._classes[descriptor.full_name] = message_factory.GetMessageClass(descriptor)
        try:
            message = cls.FromString(data)
            # Fields the descriptors do not know are kept (as numbers), but looking for them in every
            # nested message costs more than the rest of the walk: drop them, and when that changes
            # the size, parse again and look. (A non-canonical encoding takes the slow path too.)
            message.DiscardUnknownFields()
            unknown = message.ByteSize() != len(data)
            if unknown:
                message = cls.FromString(data)
        except (DecodeError, RecursionError) as exc:
            raise ProtobufDecodeError(f"not a {descriptor.full_name} message: {exc}") from None
        return _tree(message, 0, self._plans, unknown)


def _probe(target: str, timeout_s: float) -> None:
    """Fail at once when ``target`` (``host:port`` or ``[v6]:port``) refuses TCP: gRPC's channel would
    retry a refused connection until the deadline, so a mistyped port cost the whole wait."""
    import socket

    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # a name gRPC resolves itself (dns:///..., unix:...): leave it to the channel
    try:
        socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ProtobufDecodeError(f"gRPC server reflection: cannot connect to {target}: {reason}") from None


def reflect_descriptor_set(target: str, timeout_s: float = 10.0) -> bytes:
    """The serialized ``FileDescriptorSet`` of every service ``target`` (``host:port``) lists through
    gRPC server reflection, with the files they import. Needs the ``grpc`` extra."""
    try:
        import grpc
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    except ImportError as exc:
        raise ProtobufDecodeError("--proto-reflection needs grpcio-reflection: pip install 'shadowtap[grpc]'") from exc
    from google.protobuf import descriptor_pb2

    _probe(target, timeout_s)
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        database = ProtoReflectionDescriptorDatabase(channel)
        files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        for service in database.get_services():
            if service.startswith("grpc.reflection."):
                continue
            pending = [database.FindFileContainingSymbol(service)]
            while pending:
                proto = pending.pop()
                if proto.name in files:
                    continue
                files[proto.name] = proto
                pending.extend(database.FindFileByName(dep) for dep in proto.dependency if dep not in files)
    except grpc.FutureTimeoutError as exc:
        raise ProtobufDecodeError(f"gRPC server reflection: {target} did not answer in {timeout_s:g} s") from exc
    except (grpc.RpcError, KeyError) as exc:
        raise ProtobufDecodeError(f"gRPC server reflection at {target} failed: {exc}") from exc
    finally:
        channel.close()
    descriptor_set = descriptor_pb2.FileDescriptorSet()
    # Dependencies first, as protoc writes them: a pool adds each file after its imports.
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered or name not in files:
            return
        for dep in files[name].dependency:
            visit(dep)
        ordered.append(name)

    for name in sorted(files):
        visit(name)
    descriptor_set.file.extend(files[name] for name in ordered)
    serialized: bytes = descriptor_set.SerializeToString()
    return serialized


def load_schema(descriptor_path: str | Path | None, reflection_target: str | None) -> ProtoSchema | None:
    """The schema a run was told to use: a descriptor set file, or a server's reflection (not both);
    None for neither (bodies are then read schema-less)."""
    if descriptor_path is not None and reflection_target is not None:
        raise ProtobufDecodeError("give a descriptor set or a reflection target, not both")
    if descriptor_path is not None:
        return ProtoSchema.from_file(Path(descriptor_path))
    if reflection_target is not None:
        return ProtoSchema(reflect_descriptor_set(reflection_target), f"reflection:{reflection_target}")
    return None
