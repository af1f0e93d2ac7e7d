"""`shadowtap diff` on a tape of gRPC exchanges: with a descriptor set, with server reflection from a
real grpcio server (127.0.0.1, port 0), and schema-less; each finds exactly the planted changes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

from shadowtap.differ.protobuf import ProtoSchema, reflect_descriptor_set
from shadowtap.recorder import SyncTapeWriter, TapeOptions, TapeReader
from tests.differ.grpc_exchanges import not_found_pair, planted_pair
from tests.grpc_fixtures import CompiledShop, compile_shop
from tests.shadowtap.test_cmd_diff_functional import run_cli

ENDPOINT = "POST /shop.Catalog/GetProduct"
PLANTED_BY_NAME = {
    (ENDPOINT, "body.name", "removed", "str->missing"),
    (ENDPOINT, "body.8", "added", "missing->str"),
    (ENDPOINT, "body.availability", "value", "str->str"),
    (ENDPOINT, "body.variants", "length", "shorter"),
    (ENDPOINT, "grpc-status", "status", "OK->NOT_FOUND"),
}
PLANTED_BY_NUMBER = {
    (ENDPOINT, "body.2", "removed", "str->missing"),
    (ENDPOINT, "body.8", "added", "missing->str"),
    (ENDPOINT, "body.4", "value", "int->int"),
    (ENDPOINT, "body.5", "length", "shorter"),
    (ENDPOINT, "grpc-status", "status", "OK->NOT_FOUND"),
}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> CompiledShop:
    return compile_shop(tmp_path_factory.mktemp("shop"))


@pytest.fixture(scope="module")
def tape(shop: CompiledShop, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tape")
    with SyncTapeWriter(directory, TapeOptions(fsync="none")) as writer:
        for i in range(12):
            writer.write(_renamed(planted_pair(shop.pb2), f"planted-{i}"))
            writer.write(_renamed(not_found_pair(shop.pb2), f"not-found-{i}"))
    return directory


def _renamed(exchange: Any, exchange_id: str) -> Any:
    from dataclasses import replace

    return replace(exchange, id=exchange_id)


@pytest.fixture(scope="module")
def reflection_server(shop: CompiledShop) -> Iterator[str]:
    """A real grpcio server of shop.Catalog with server reflection on, on a port the kernel picked."""
    import grpc
    from grpc_reflection.v1alpha import reflection

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    shop.pb2_grpc.add_CatalogServicer_to_server(shop.pb2_grpc.CatalogServicer(), server)
    service_names = (shop.pb2.DESCRIPTOR.services_by_name["Catalog"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(service_names, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def live_signatures(report: Path) -> set[tuple[str, str, str, str]]:
    document = json.loads(report.read_text())
    return {
        (e["endpoint"], s["path"], s["kind"], s["transition"])
        for e in document["endpoints"]
        for s in e["signatures"]
        if not s["suppressed"]
    }


def check(result: subprocess.CompletedProcess[str], report: Path, planted: set[tuple[str, str, str, str]]) -> None:
    assert "Traceback" not in result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    assert live_signatures(report) == planted


def test_the_tape_holds_http2_grpc_exchanges_with_trailers(tape: Path) -> None:
    exchanges = list(TapeReader(tape))
    assert len(exchanges) == 24
    assert {ex.request.http_version for ex in exchanges} == {"2"}
    first = exchanges[0].primary
    assert first is not None and getattr(first, "trailers", None) == ((b"grpc-status", b"0"),)


def test_diff_with_a_descriptor_set_names_the_planted_fields(tape: Path, shop: CompiledShop, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    args = ("diff", tape, "--candidate", "v2", "--proto-descriptor", shop.descriptor_set, "--json", report)
    check(run_cli(*args), report, PLANTED_BY_NAME)


def test_diff_without_a_schema_numbers_the_planted_fields(tape: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    check(run_cli("diff", tape, "--candidate", "v2", "--json", report), report, PLANTED_BY_NUMBER)


def test_diff_with_server_reflection_names_the_planted_fields(
    tape: Path, reflection_server: str, shop: CompiledShop, tmp_path: Path
) -> None:
    schema = ProtoSchema(reflect_descriptor_set(reflection_server), "reflection")
    method = schema.method("/shop.Catalog/ListProducts")
    assert method is not None and method.server_streaming and method.response.full_name == "shop.Product"
    report = tmp_path / "report.json"
    args = ("diff", tape, "--candidate", "v2", "--proto-reflection", reflection_server, "--json", report)
    check(run_cli(*args), report, PLANTED_BY_NAME)


def test_a_bad_schema_source_is_one_clear_line(tape: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.desc").write_bytes(b"\xff\xffnot a descriptor set")
    result = run_cli("diff", tape, "--candidate", "v2", "--proto-descriptor", tmp_path / "bad.desc")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a serialized FileDescriptorSet" in result.stderr
    result = run_cli("diff", tape, "--candidate", "v2", "--proto-reflection", "127.0.0.1:1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "gRPC server reflection: cannot connect to 127.0.0.1:1" in result.stderr


def test_report_from_the_store_decodes_bodies_with_the_schema_flags(
    tape: Path, shop: CompiledShop, tmp_path: Path
) -> None:
    db = tmp_path / "diff.sqlite"
    result = run_cli("diff", tape, "--candidate", "v2", "--proto-descriptor", shop.descriptor_set, "--db", db)
    assert result.returncode == 1, result.stdout + result.stderr
    named, numbered = tmp_path / "named.md", tmp_path / "numbered.md"
    result = run_cli("report", "--db", db, "--proto-descriptor", shop.descriptor_set, "--markdown", named)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    result = run_cli("report", "--db", db, "--markdown", numbered)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    # The store keeps the schema's field names in its signatures; the values at those paths in the
    # examples come from the bodies decoded by the schema given to `report`: without it they can
    # only be read by field number, and the report says so.
    assert '`body.availability`: `"IN_STOCK"` &rarr; `"BACKORDER"`' in named.read_text()
    assert "fields by number" not in named.read_text()
    assert "BACKORDER" not in numbered.read_text() and "fields by number" in numbered.read_text()
    result = run_cli("report", "--db", db, "--proto-descriptor", tmp_path / "missing.desc")
    assert result.returncode == 2 and "--proto-descriptor" in result.stderr and "Traceback" not in result.stderr
