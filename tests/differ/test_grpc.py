"""The differ on gRPC answers: grpc-status as the status, trailers as headers, protobuf field trees
with a descriptor set and schema-less, exactly the planted changes found, bad bodies as errors."""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shadowtap.differ import CompareOptions
from shadowtap.differ.compare import Comparator, Difference
from shadowtap.differ.engine import DiffEngine
from shadowtap.differ.grpc import grpc_body, grpc_status, is_grpc
from shadowtap.differ.protobuf import ProtoSchema
from shadowtap.differ.signatures import is_structural, severity
from shadowtap.recorder.model import Response
from shadowtap.wire.grpc import encode_message
from tests.differ.grpc_exchanges import (
    GRPC_HEADERS,
    get_product,
    grpc_response,
    not_found_pair,
    planted_pair,
    product,
)
from tests.grpc_fixtures import CompiledShop, compile_shop


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> CompiledShop:
    return compile_shop(tmp_path_factory.mktemp("shop"))


@pytest.fixture(scope="module")
def schema(shop: CompiledShop) -> ProtoSchema:
    return ProtoSchema.from_file(shop.descriptor_set)


def signal(differences: tuple[Difference, ...] | list[Difference]) -> set[tuple[str, str, str]]:
    """The differences no detector explains."""
    return {(d.path, d.kind, d.transition) for d in differences if d.volatile is None}


def noise(differences: tuple[Difference, ...] | list[Difference]) -> set[tuple[str, str | None]]:
    return {(d.path, d.volatile) for d in differences if d.volatile is not None}


def engine(schema: ProtoSchema | None) -> DiffEngine:
    return DiffEngine(CompareOptions(proto=schema), candidate="v2")


def test_with_a_descriptor_set_exactly_the_planted_changes_show_by_field_name(
    shop: CompiledShop, schema: ProtoSchema
) -> None:
    result = engine(schema).compare_exchange(planted_pair(shop.pb2))
    assert result.status == "compared"
    assert signal(result.differences) == {
        ("body.name", "removed", "str->missing"),
        ("body.8", "added", "missing->str"),
        ("body.availability", "value", "str->str"),
        ("body.variants", "length", "shorter"),
    }
    assert noise(result.differences) == {
        ("body.updated_at_unix_ms", "volatile:epoch"),
        ("header.req-id", "volatile:uuid"),
    }
    full = {d.full_path for d in result.differences}
    assert "body.variants" in full and "body.availability" in full


def test_without_a_schema_the_same_changes_show_by_field_number(shop: CompiledShop) -> None:
    result = engine(None).compare_exchange(planted_pair(shop.pb2))
    assert signal(result.differences) == {
        ("body.2", "removed", "str->missing"),
        ("body.8", "added", "missing->str"),
        ("body.4", "value", "int->int"),
        ("body.5", "length", "shorter"),
    }
    assert noise(result.differences) == {("body.6", "volatile:epoch"), ("header.req-id", "volatile:uuid")}


def test_a_status_change_to_not_found_is_a_critical_status_and_nothing_else(
    shop: CompiledShop, schema: ProtoSchema
) -> None:
    for proto in (schema, None):
        result = engine(proto).compare_exchange(not_found_pair(shop.pb2))
        assert [(d.path, d.kind, d.transition) for d in result.differences] == [
            ("grpc-status", "status", "OK->NOT_FOUND")
        ]
        (difference,) = result.differences
        assert severity(difference.kind, difference.transition) == "critical"
        assert is_structural(difference.kind, difference.transition)


def test_equal_answers_are_equal_and_a_changed_message_or_trailer_is_a_header_change(shop: CompiledShop) -> None:
    comparator = Comparator(CompareOptions())
    body = [product(shop.pb2, "v1", 1)]
    same = grpc_response(body)
    assert comparator.compare(same, replace(same), method="/shop.Catalog/GetProduct") == []
    a = grpc_response([], status=5, message="no product p1")
    b = grpc_response([], status=5, message="product p1 is gone")
    assert signal(comparator.compare(a, b)) == {("grpc-message", "header", "changed")}
    c = replace(same, trailers=(*same.trailers, (b"shop-region", b"eu")))
    d = replace(same, trailers=(*same.trailers, (b"shop-region", b"us"), (b"x-request-id", b"abc")))
    assert signal(comparator.compare(c, d)) == {("trailer.shop-region", "header", "changed")}
    # NOT_FOUND -> INVALID_ARGUMENT is a status change too, and the bodies are still compared.
    e = grpc_response([], status=3, message="bad id")
    assert signal(comparator.compare(a, e)) == {("grpc-status", "status", "NOT_FOUND->INVALID_ARGUMENT")}


def test_a_streaming_answer_is_the_array_of_its_messages(shop: CompiledShop, schema: ProtoSchema) -> None:
    pb2 = shop.pb2
    one = pb2.Product(id="a", name="A", availability=pb2.IN_STOCK).SerializeToString()
    two = pb2.Product(id="b", name="B", availability=pb2.IN_STOCK).SerializeToString()
    two_v2 = pb2.Product(id="b", name="B", availability=pb2.DISCONTINUED).SerializeToString()
    a, b = grpc_response([one, two]), grpc_response([one, two_v2])
    comparator = Comparator(CompareOptions(proto=schema))
    assert signal(comparator.compare(a, b, method="/shop.Catalog/ListProducts")) == {
        ("body[*].availability", "value", "str->str")
    }
    assert [d.full_path for d in comparator.compare(a, b, method="/shop.Catalog/ListProducts")] == [
        "body[1].availability"
    ]
    # A server stream of one message is still an array, as its schema says.
    body = grpc_body(GRPC_HEADERS, encode_message(one), False, "/shop.Catalog/ListProducts", schema)
    assert body.kind == "json" and body.value == [{"id": "a", "name": "A", "availability": "IN_STOCK"}]
    # A stream losing a message is a shorter array.
    assert signal(comparator.compare(a, grpc_response([one]), method="/shop.Catalog/ListProducts")) == {
        ("body", "length", "shorter")
    }


def test_the_tree_is_plain_data_with_names_enums_and_bytes(shop: CompiledShop, schema: ProtoSchema) -> None:
    pb2 = shop.pb2
    data = pb2.Product(id="p", variants=[pb2.Variant(sku="s", price=pb2.Price(amount_cents=5))], blob=b"\x00\xff")
    body = grpc_body(GRPC_HEADERS, encode_message(data.SerializeToString()), False, "/shop.Catalog/GetProduct", schema)
    assert body.value == {"id": "p", "variants": [{"sku": "s", "price": {"amount_cents": 5}}], "blob": "AP8="}
    # An unknown method or no schema: read schema-less (keys are field numbers).
    unknown = grpc_body(GRPC_HEADERS, encode_message(data.SerializeToString()), False, "/other.Svc/Get", schema)
    assert unknown.value == {"1": "p", "5": {"1": "s", "3": {"2": 5}}, "7": "AP8="}


def bad_bodies() -> dict[str, tuple[tuple[tuple[bytes, bytes], ...], bytes]]:
    bomb = gzip.compress(b"\x00" * (16 * 1024 * 1024))
    return {
        "truncated frame": (GRPC_HEADERS, encode_message(b"\x0a\x02p1")[:-1]),
        "invalid protobuf": (GRPC_HEADERS, encode_message(b"\x0a\x09short")),
        "compression bomb": (((b"content-type", b"application/grpc"), (b"grpc-encoding", b"gzip")), b"\x01"
                             + len(bomb).to_bytes(4, "big") + bomb),
        "oversized message": (GRPC_HEADERS, b"\x00\x7f\xff\xff\xff"),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(bad_bodies()))
def test_a_bad_body_is_a_clear_difference_for_that_exchange_not_a_crash(
    case: str, shop: CompiledShop, schema: ProtoSchema
) -> None:
    headers, body = bad_bodies()[case]
    good = grpc_response([product(shop.pb2, "v1", 1)])
    bad = Response(200, headers=headers, body=body, http_version="2", trailers=good.trailers)
    decoded = grpc_body(headers, body, False, "/shop.Catalog/GetProduct", schema)
    assert decoded.kind == "invalid"
    assert str(decoded.value).startswith("invalid gRPC body: ")
    for proto in (schema, None):
        ex = get_product(shop.pb2, case, bad, good)
        result = engine(proto).compare_exchange(ex)
        assert signal(result.differences) == {("body", "type", "json->invalid")}


def test_status_and_content_type_readers() -> None:
    assert is_grpc(((b"Content-Type", b"application/grpc+proto"),))
    assert not is_grpc(((b"content-type", b"application/grpc-web+proto"),))
    assert not is_grpc(())
    assert grpc_status(Response(200, trailers=((b"grpc-status", b"14"), (b"grpc-message", b"down")))) == (
        "UNAVAILABLE", "down"
    )  # fmt: skip
    assert grpc_status(Response(200, headers=((b"grpc-status", b"99"),))) == ("99", "")
    assert grpc_status(Response(200)) == ("missing", "")


def test_a_schema_crosses_to_worker_processes_by_its_bytes(schema: ProtoSchema) -> None:
    import pickle

    copy: Any = pickle.loads(pickle.dumps(CompareOptions(proto=schema)))
    assert copy.proto == schema
    assert copy.proto.method("/shop.Catalog/Chat").client_streaming


def test_a_bad_descriptor_file_is_a_clear_error(tmp_path: Path) -> None:
    from shadowtap.differ.protobuf import ProtobufDecodeError

    (tmp_path / "x.desc").write_bytes(b"\xff\xff not a descriptor set")
    with pytest.raises(ProtobufDecodeError, match="not a serialized FileDescriptorSet"):
        ProtoSchema.from_file(tmp_path / "x.desc")
    with pytest.raises(ProtobufDecodeError, match="cannot read descriptor set"):
        ProtoSchema.from_file(tmp_path / "missing.desc")


def test_reports_show_a_grpc_body_as_its_field_tree_and_a_bad_one_with_the_reason(shop: CompiledShop) -> None:
    import json

    from shadowtap.differ.reports._bodies import display_body

    pb2 = shop.pb2
    message = pb2.Product(id="p1", name="Desk lamp", availability=pb2.IN_STOCK).SerializeToString()
    shown = display_body(GRPC_HEADERS, encode_message(message))
    assert shown.kind == "json"
    assert json.loads(shown.text) == {"1": "p1", "2": "Desk lamp", "4": 1}
    bad = display_body(GRPC_HEADERS, encode_message(message)[:-2])
    assert bad.kind == "binary"
    assert bad.note is not None and "invalid gRPC body: truncated message" in bad.note


def test_report_snippets_show_the_grpc_status_trailers_and_field_values(shop: CompiledShop) -> None:
    from shadowtap.differ.reports._bodies import value_at

    pb2 = shop.pb2
    message = pb2.Product(id="p1", name="Desk lamp").SerializeToString()
    found = grpc_response([message])
    found = replace(found, trailers=(*found.trailers, (b"shop-region", b"eu")))
    missing = grpc_response([], status=5, message="no product p1")
    assert value_at(found, "grpc-status") == "OK"
    assert value_at(missing, "grpc-status") == "NOT_FOUND"
    assert value_at(missing, "grpc-message") == "no product p1"
    assert value_at(found, "trailer.shop-region") == "eu"
    assert value_at(found, "trailer.absent") == "(absent)"
    assert value_at(found, "body.2") == '"Desk lamp"'


def test_learned_noise_ignore_rules_and_signatures_work_on_protobuf_trees(
    shop: CompiledShop, schema: ProtoSchema, tmp_path: Path
) -> None:
    """A stock count that the secondary (v1 again) also changes is learned noise; an ignore rule
    silences the timestamp's value changes; the planted changes stay, as signatures by field name."""
    import random

    from shadowtap.differ import DiffSession, DiffStore, RunMeta, build_report, config_from_mapping
    from tests.differ.grpc_exchanges import get_product, request_id

    pb2, rng = shop.pb2, random.Random(5)

    def answer(version: str, stock: int) -> Response:
        message = pb2.Product(id="p1", name="Lamp", stock=stock, updated_at_unix_ms=rng.randrange(10**6),
                              availability=pb2.IN_STOCK if version == "v1" else pb2.BACKORDER)  # fmt: skip
        return grpc_response([message.SerializeToString()], metadata=request_id())

    config = config_from_mapping({"diff": {"ignore": ["body.updated_at_unix_ms"]}})
    config = replace(config, compare=replace(config.compare, proto=schema))
    store = DiffStore(tmp_path / "diff.db")
    session = DiffSession(store, config, RunMeta("primary", "v2", "secondary", ("test",)))
    for i in range(60):
        ex = get_product(pb2, f"ex-{i}", answer("v2", rng.randrange(50)), answer("v1", rng.randrange(50)))
        session.add(replace(ex, shadows={**ex.shadows, "secondary": answer("v1", rng.randrange(50))}))
    session.finish()
    report = build_report(store, config)
    signatures = {(s.path, s.kind, s.transition, s.suppressed, s.suppression_reason)
                  for e in report.endpoints for s in e.signatures}  # fmt: skip
    assert ("body.availability", "value", "str->str", False, None) in signatures
    assert ("body.stock", "value", "int->int", True, "learned-noise") in signatures
    assert ("body.updated_at_unix_ms", "value", "int->int", True, "rule:body.updated_at_unix_ms") in signatures
    assert {e.endpoint for e in report.endpoints} == {"POST /shop.Catalog/GetProduct"}
    assert [s.path for e in report.endpoints for s in e.signatures if not s.suppressed] == ["body.availability"]


def test_a_compressed_message_is_compared_decompressed(shop: CompiledShop, schema: ProtoSchema) -> None:
    message = product(shop.pb2, "v1", 1)
    plain = grpc_response([message])
    gzipped = Response(
        200,
        headers=(*GRPC_HEADERS, (b"grpc-encoding", b"gzip")),
        body=encode_message(gzip.compress(message), compressed=True),
        http_version="2",
        trailers=plain.trailers,
    )
    assert Comparator(CompareOptions(proto=schema)).compare(plain, gzipped, method="/shop.Catalog/GetProduct") == []


def test_a_snippet_for_a_schema_named_path_says_so_rather_than_absent(shop: CompiledShop) -> None:
    from shadowtap.differ.reports._bodies import value_at

    found = grpc_response([shop.pb2.Product(id="p1", name="Desk lamp").SerializeToString()])
    assert value_at(found, "body.name", 200) == "(a field named by the schema: see the body, fields by number)"
    assert value_at(found, "body.9") == "(absent)"
