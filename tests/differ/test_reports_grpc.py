"""gRPC bodies in every report format: protobuf messages shown as readable field trees, named by the
schema the diff used (a descriptor set, given to the renderers with ``proto_schema``), numbered
without one; never raw bytes, hex or base64. Real encoded messages of the suite's shop.proto, a real
tape and ``shadowtap diff`` writing all five formats."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from shadowtap.differ.protobuf import ProtoSchema
from shadowtap.differ.reports import proto_schema
from shadowtap.differ.reports._bodies import display_body, value_at
from shadowtap.recorder import SyncTapeWriter, TapeOptions
from shadowtap.wire.grpc import encode_message
from tests.differ.grpc_exchanges import GRPC_HEADERS, grpc_response, not_found_pair, planted_pair
from tests.grpc_fixtures import CompiledShop, compile_shop
from tests.shadowtap.test_cmd_diff_functional import run_cli

METHOD = "/shop.Catalog/GetProduct"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> CompiledShop:
    return compile_shop(tmp_path_factory.mktemp("shop"))


@pytest.fixture(scope="module")
def schema(shop: CompiledShop) -> ProtoSchema:
    return ProtoSchema.from_file(shop.descriptor_set)


def test_with_the_schema_bodies_and_snippets_name_their_fields(shop: CompiledShop, schema: ProtoSchema) -> None:
    pb2 = shop.pb2
    answer = grpc_response([pb2.Product(id="p1", name="Desk lamp", availability=pb2.IN_STOCK).SerializeToString()])
    request_body = encode_message(pb2.GetProductRequest(id="p1").SerializeToString())
    with proto_schema(schema):
        shown = display_body(answer.headers, answer.body, None, METHOD)
        asked = display_body(GRPC_HEADERS, request_body, None, METHOD, True)
        assert value_at(answer, "body.name", 80, METHOD) == '"Desk lamp"'
        assert value_at(answer, "body.availability", 80, METHOD) == '"IN_STOCK"'
        assert value_at(answer, "body.stock", 80, METHOD) == "(absent)"
        # A method the schema does not know: fields by number, as without a schema.
        unknown = display_body(answer.headers, answer.body, None, "/other.Service/Get")
    assert shown.kind == "json" and json.loads(shown.text) == {
        "id": "p1",
        "name": "Desk lamp",
        "availability": "IN_STOCK",
    }
    assert asked.kind == "json" and json.loads(asked.text) == {"id": "p1"}
    assert json.loads(unknown.text) == {"1": "p1", "2": "Desk lamp", "4": 1}
    # Outside the block the same body is shown by field number again (the schema is per rendering).
    assert json.loads(display_body(answer.headers, answer.body, None, METHOD).text) == {
        "1": "p1",
        "2": "Desk lamp",
        "4": 1,
    }
    assert value_at(answer, "body.name", 200, METHOD).startswith("(a field named by the schema")


@pytest.fixture(scope="module")
def tape(shop: CompiledShop, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tape")
    with SyncTapeWriter(directory, TapeOptions(fsync="none")) as writer:
        for i in range(6):
            writer.write(replace(planted_pair(shop.pb2), id=f"planted-{i}"))
            writer.write(replace(not_found_pair(shop.pb2), id=f"not-found-{i}"))
    return directory


def _bodies(report: dict[str, object]) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "kind" in node and "sha256" in node:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(report)
    return found


@pytest.mark.parametrize("with_schema", [True, False], ids=["descriptor-set", "schema-less"])
def test_every_format_shows_decoded_messages_as_text(
    tape: Path, shop: CompiledShop, tmp_path: Path, with_schema: bool
) -> None:
    out = {kind: tmp_path / f"report.{kind}" for kind in ("html", "json", "md", "xml")}
    schema_flags = ["--proto-descriptor", str(shop.descriptor_set)] if with_schema else []
    result = run_cli(
        "diff", tape, *schema_flags, "--min-samples", "1", "--no-progress", "--no-color", "--full",
        "--html", out["html"], "--json", out["json"], "--markdown", out["md"], "--junit", out["xml"],
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    name, availability = ("body.name", "body.availability") if with_schema else ("body.2", "body.4")
    old, new = ('"IN_STOCK"', '"BACKORDER"') if with_schema else ("1", "2")

    markdown = out["md"].read_text()
    assert f'`{name}`: `"Desk lamp"` &rarr; `(absent)`' in markdown
    assert f"`{availability}`: `{old}` &rarr; `{new}`" in markdown

    html = out["html"].read_text()
    # The differing paths are highlighted in the shown bodies (the tree has the diff's field names).
    assert f'hl" title="{name}"' in html and f'hl" title="{availability}"' in html
    assert (
        f"<td><code>{old.replace(chr(34), '&quot;')}</code></td><td><code>{new.replace(chr(34), '&quot;')}</code>"
        in html
    )

    report = json.loads(out["json"].read_text())
    bodies = [b for b in _bodies(report) if b["wire_bytes"]]
    assert bodies and all(b["kind"] == "json" and "base64" not in b for b in bodies)
    product = next(json.loads(str(b["text"])) for b in bodies if "Desk lamp" in str(b["text"]))
    if with_schema:
        assert product["name"] == "Desk lamp" and product["variants"][0]["price"]["currency"] == "EUR"
    else:
        assert product["2"] == "Desk lamp" and product["5"][0]["3"]["1"] == "EUR"

    # No format shows the messages' bytes: no base64, no hex dump, no placeholder for a named field.
    junit = out["xml"].read_text()
    for text in (markdown, html, junit, result.stdout):
        assert "fields by number)" not in text
        assert not re.search(r"\b(?:[0-9a-f]{2} ){16}", text)  # a hex preview
        assert "binary," not in text
