"""False alarms the tool would cause itself on HTTP/2 and gRPC, one rule each: two copies of one
service must compare equal however each framed, encoded or timed its answer, while a real change
still shows. (The same on real processes: tests/shadowtap/test_no_change_grpc_functional.py.)"""

from __future__ import annotations

import json
import random
import uuid

import pytest

from shadowtap.differ import CompareOptions
from shadowtap.differ.compare import Comparator, Difference
from shadowtap.differ.grpc import grpc_message, grpc_status
from shadowtap.differ.protobuf import ProtoSchema, decode_schemaless
from shadowtap.differ.volatile import is_schemaless_timestamp
from shadowtap.recorder.model import Response
from shadowtap.wire.grpc import encode_message
from tests.grpc_fixtures.orders import SERVICE, Compiled, compile_orders

GRPC = ((b"content-type", b"application/grpc"),)
GET_ORDER = f"{SERVICE}GetOrder"


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    return compile_orders(tmp_path_factory.mktemp("orders"))


@pytest.fixture(scope="module")
def schema(orders: Compiled) -> ProtoSchema:
    return ProtoSchema.from_file(orders.descriptor_set)


def compare(a: Response, b: Response, schema: ProtoSchema | None = None) -> list[Difference]:
    return Comparator(CompareOptions(proto=schema)).compare(a, b, method=GET_ORDER)


def signal(differences: list[Difference]) -> set[tuple[str, str, str]]:
    return {(d.path, d.kind, d.transition) for d in differences if d.volatile is None}


def answer(*messages: bytes, trailers: tuple[tuple[bytes, bytes], ...] = ((b"grpc-status", b"0"),)) -> Response:
    return Response(
        200, headers=GRPC, body=b"".join(encode_message(m) for m in messages), http_version="2", trailers=trailers
    )


# --- grpc-message -------------------------------------------------------------------------------------


def test_grpc_message_is_compared_percent_decoded() -> None:
    assert grpc_message(b"caf%C3%A9 ferm%C3%A9 %25") == "café fermé %"
    assert grpc_message(b"no order 7") == "no order 7"
    assert grpc_message(b"100%") == "100%"  # not an escape: kept
    assert grpc_message(b"%FF%FE") == "%FF%FE"  # not UTF-8 once decoded: as sent
    encoded = Response(200, headers=(*GRPC, (b"grpc-status", b"5"), (b"grpc-message", b"caf%C3%A9 introuvable")))
    plain = Response(200, headers=(*GRPC, (b"grpc-status", b"5"), (b"grpc-message", "café introuvable".encode())))
    assert grpc_status(encoded) == grpc_status(plain) == ("NOT_FOUND", "café introuvable")
    assert compare(encoded, plain) == []


def test_a_grpc_message_naming_its_request_id_is_volatile_and_other_words_are_not() -> None:
    def not_found(message: str) -> Response:
        return Response(200, headers=(*GRPC, (b"grpc-status", b"5"), (b"grpc-message", message.encode())))

    ids = [not_found(f"no order 7 (request {uuid.uuid4()})") for _ in range(2)]
    assert [(d.path, d.volatile) for d in compare(*ids)] == [("grpc-message", "volatile:uuid")]
    worded = compare(
        not_found(f"no order 7 (request {uuid.uuid4()})"), not_found(f"no order 8 (request {uuid.uuid4()})")
    )
    assert signal(worded) == {("grpc-message", "header", "changed")}


# --- trailers-only and header framing -------------------------------------------------------------------


def test_trailing_metadata_of_a_trailers_only_answer_is_compared_as_trailers() -> None:
    status = ((b"grpc-status", b"5"), (b"grpc-message", b"no order"))
    only = Response(200, headers=(*GRPC, *status, (b"x-region", b"orders")), http_version="2")
    framed = Response(200, headers=GRPC, http_version="2", trailers=(*status, (b"x-region", b"orders")))
    assert compare(only, framed) == [] and compare(framed, only) == []
    other = Response(200, headers=GRPC, http_version="2", trailers=(*status, (b"x-region", b"billing")))
    assert signal(compare(only, other)) == {("trailer.x-region", "header", "changed")}
    # Response metadata that is not a trailer on the other side stays a header.
    with_header = Response(200, headers=(*GRPC, *status, (b"x-shard", b"3")), http_version="2")
    assert signal(compare(with_header, framed)) == {
        ("header.x-shard", "header", "present->missing"),
        ("trailer.x-region", "header", "missing->present"),
    }


def test_an_http2_answer_and_an_http1_copy_of_it_are_equal() -> None:
    """Header case, framing headers and pseudo-headers are the hop's, not the answer's."""
    body = json.dumps({"id": 7, "name": "lamp"}).encode()
    h2 = Response(
        200, headers=((b":status", b"200"), (b"content-type", b"application/json")), body=body, http_version="2"
    )
    h1 = Response(
        200,
        headers=(
            (b"Content-Type", b"application/json"),
            (b"Content-Length", b"%d" % len(body)),
            (b"Connection", b"keep-alive"),
        ),
        body=body,
    )
    assert compare(h2, h1) == []
    chunked = Response(
        200, headers=((b"Content-Type", b"application/json"), (b"Transfer-Encoding", b"chunked")), body=body
    )
    assert compare(h2, chunked) == []


# --- protobuf's own encodings ---------------------------------------------------------------------------


def test_field_order_packing_and_explicit_defaults_read_the_same_with_a_schema(
    orders: Compiled, schema: ProtoSchema
) -> None:
    pb2 = orders.pb2
    canonical = pb2.Order(id="o1", state=pb2.OPEN, tags=[1, 2, 3]).SerializeToString()
    # The same message written another way: fields out of order, tags unpacked, stock-like zero sent.
    reordered = (
        b"\x10\x01"  # state = OPEN (field 2) first
        + b"\x38\x01\x38\x02\x38\x03"  # tags unpacked (field 7, varints)
        + b"\x0a\x02o1"  # id (field 1) last
        + b"\x49"
        + b"\x00" * 8  # total = 0.0 (field 9, fixed64) sent though it is the default
    )
    assert pb2.Order.FromString(reordered) == pb2.Order.FromString(canonical)
    assert compare(answer(canonical), answer(reordered), schema) == []


def test_a_timestamp_with_a_schema_is_one_rfc3339_value_and_volatile(orders: Compiled, schema: ProtoSchema) -> None:
    pb2 = orders.pb2

    def order(nanos: int) -> bytes:
        message = pb2.Order(id="o1")
        message.served_at.FromNanoseconds(nanos)
        return message.SerializeToString()

    tree = schema.message_tree(pb2.Order.DESCRIPTOR, order(1_764_918_062_123_000_000))
    assert tree == {"id": "o1", "served_at": "2025-12-05T07:01:02.123Z"}
    assert schema.message_tree(pb2.Order.DESCRIPTOR, order(1_764_918_062_000_000_001))["served_at"] == (
        "2025-12-05T07:01:02.000000001Z"
    )
    assert schema.message_tree(pb2.Order.DESCRIPTOR, order(1_764_918_062_000_000_000))["served_at"] == (
        "2025-12-05T07:01:02Z"
    )
    differences = compare(answer(order(1_764_918_062_123_000_000)), answer(order(1_764_918_063_000_000_000)), schema)
    assert [(d.path, d.kind, d.volatile) for d in differences] == [("body.served_at", "value", "volatile:iso-date")]


def test_a_timestamp_without_a_schema_is_one_instant(orders: Compiled) -> None:
    pb2 = orders.pb2

    def order(nanos: int) -> bytes:
        message = pb2.Order(id="o1")
        message.served_at.FromNanoseconds(nanos)
        return message.SerializeToString()

    assert is_schemaless_timestamp({"1": 1_764_918_062, "2": 5}) and is_schemaless_timestamp({"1": 1_764_918_062})
    assert not is_schemaless_timestamp({"1": 42, "2": 5})  # not a plausible epoch
    assert not is_schemaless_timestamp({"1": 1_764_918_062, "2": 5, "3": 1})  # a third field: not a Timestamp
    assert not is_schemaless_timestamp({"1": 1_764_918_062, "2": 1_000_000_000})  # nanos past a second
    # Nanos that differ, and nanos 0 (absent from the wire) against some: one volatile instant.
    second = 1_764_918_062_000_000_000
    for a, b in ((second + 123_000_000, second + 456_000_000), (second, second + 7)):
        differences = compare(answer(order(a)), answer(order(b)))
        assert [(d.path, d.kind, d.volatile) for d in differences] == [("body.8", "value", "volatile:epoch")]
    assert compare(answer(order(1_764_918_062_000_000_001)), answer(order(1_764_918_062_000_000_001))) == []
    # A message of two numbers that is no Timestamp keeps both fields' changes.
    line_a, line_b = pb2.Line(sku="", qty=3, price_cents=10), pb2.Line(sku="", qty=4, price_cents=10)
    changed = compare(
        answer(pb2.Order(lines=[line_a]).SerializeToString()), answer(pb2.Order(lines=[line_b]).SerializeToString())
    )
    assert signal(changed) == {("body.3.2", "value", "int->int")}


def test_map_entries_without_a_schema_are_matched_by_key_not_by_order(orders: Compiled, schema: ProtoSchema) -> None:
    pb2 = orders.pb2
    labels = {"customer": "c-1", "channel": "web", "region": "eu-west", "tier": "gold"}

    def order(entries: dict[str, str]) -> bytes:
        # Each entry written by hand, in the order given: the wire order of a map is the writer's.
        data = pb2.Order(id="o1").SerializeToString()
        for key, value in entries.items():
            entry = pb2.Order(labels={key: value}).SerializeToString()
            data += entry
        return data

    keys = list(labels)
    shuffled = dict(labels)
    while list(shuffled) == keys:
        order_keys = random.sample(keys, len(keys))
        shuffled = {k: labels[k] for k in order_keys}
    assert decode_schemaless(order(labels))["4"] != decode_schemaless(order(shuffled))["4"]  # the wire differs
    for used in (None, schema):
        assert compare(answer(order(labels)), answer(order(shuffled)), used) == [], used
    # A value changed, a key gone: still differences, at the entry's value and as a removal.
    changed = {**shuffled, "tier": "silver"}
    assert signal(compare(answer(order(labels)), answer(order(changed)))) == {("body.4[*].2", "value", "str->str")}
    fewer = {k: v for k, v in shuffled.items() if k != "region"}
    assert signal(compare(answer(order(labels)), answer(order(fewer)))) == {("body.4[*]", "removed", "object->missing")}
    assert signal(compare(answer(order(labels)), answer(order(changed)), schema)) == {
        ("body.labels.tier", "value", "str->str")
    }


def test_a_repeated_message_that_is_no_map_keeps_its_order(orders: Compiled) -> None:
    pb2 = orders.pb2
    lines = [pb2.Line(sku=f"s{i}", qty=i + 1, price_cents=100) for i in range(3)]
    a = pb2.Order(lines=lines).SerializeToString()
    b = pb2.Order(lines=list(reversed(lines))).SerializeToString()
    assert signal(compare(answer(a), answer(b))) == {
        ("body.3[*].1", "value", "str->str"),
        ("body.3[*].2", "value", "int->int"),
    }


def test_a_stream_split_into_other_frames_is_the_same_answer(orders: Compiled, schema: ProtoSchema) -> None:
    """The messages are compared, not how they were cut into DATA frames or when they came."""
    pb2 = orders.pb2
    messages = [pb2.Order(id=f"o{i}").SerializeToString() for i in range(3)]
    one = answer(*messages)
    again = Response(200, headers=GRPC, body=one.body, http_version="2", trailers=one.trailers)
    assert compare(one, again, schema) == []
