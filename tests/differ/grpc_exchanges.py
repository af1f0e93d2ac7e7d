"""gRPC exchanges for the differ's tests, built from real messages of tests/grpc_fixtures/shop.proto.

v1 and v2 answer like two versions of the shop service: v2 renames ``name`` (moved to field 8, as a
renamed field that changed its number), answers ``BACKORDER`` where v1 says ``IN_STOCK``, drops the
last variant, and answers ``NOT_FOUND`` for a product v1 finds. Noise on every answer: the
``updated_at_unix_ms`` timestamp and a request id in the response metadata.
"""

from __future__ import annotations

import uuid
from types import ModuleType

from shadowtap.recorder.model import Exchange, Request, Response
from shadowtap.wire.grpc import encode_message

GRPC_HEADERS = ((b"content-type", b"application/grpc"),)


def product(pb2: ModuleType, version: str, updated_at_ms: int) -> bytes:
    variants = [
        pb2.Variant(sku=f"LAMP-{colour}", colour=colour, price=pb2.Price(currency="EUR", amount_cents=1299 + i))
        for i, colour in enumerate(("red", "green", "blue"))
    ]
    message = pb2.Product(
        id="p1",
        name="Desk lamp" if version == "v1" else "",
        stock=7,
        availability=pb2.IN_STOCK if version == "v1" else pb2.BACKORDER,
        variants=variants if version == "v1" else variants[:2],
        updated_at_unix_ms=updated_at_ms,
    )
    data: bytes = message.SerializeToString()
    if version == "v2":
        data += b"\x42\x09Desk lamp"  # field 8, length-delimited: the renamed field's new number
    return data


def grpc_response(
    messages: list[bytes], status: int = 0, message: str = "", metadata: tuple[tuple[bytes, bytes], ...] = ()
) -> Response:
    trailers = ((b"grpc-status", str(status).encode()),)
    if message:
        trailers += ((b"grpc-message", message.encode()),)
    if not messages and status != 0:
        # Trailers-only: the status rides in the only HEADERS frame.
        return Response(200, headers=GRPC_HEADERS + metadata + trailers, http_version="2")
    body = b"".join(encode_message(m) for m in messages)
    return Response(200, headers=GRPC_HEADERS + metadata, body=body, http_version="2", trailers=trailers)


def request_id() -> tuple[tuple[bytes, bytes], ...]:
    return ((b"req-id", str(uuid.uuid4()).encode()),)


def get_product(pb2: ModuleType, exchange_id: str, candidate: Response, primary: Response) -> Exchange:
    body = encode_message(pb2.GetProductRequest(id="p1").SerializeToString())
    request = Request(
        "POST", "/shop.Catalog/GetProduct", GRPC_HEADERS + ((b"te", b"trailers"),), body, http_version="2"
    )
    return Exchange(exchange_id, 1_700_000_000_000_000_000, request, primary=primary, shadows={"v2": candidate})


def planted_pair(pb2: ModuleType) -> Exchange:
    """GetProduct: v1 finds the product, v2 finds it changed in every planted way."""
    primary = grpc_response([product(pb2, "v1", 1_764_000_000_000)], metadata=request_id())
    candidate = grpc_response([product(pb2, "v2", 1_764_000_000_123)], metadata=request_id())
    return get_product(pb2, "planted", candidate, primary)


def not_found_pair(pb2: ModuleType) -> Exchange:
    """GetProduct: v1 finds it, v2 answers NOT_FOUND (trailers-only)."""
    primary = grpc_response([product(pb2, "v1", 1_764_000_000_000)], metadata=request_id())
    candidate = grpc_response([], status=5, message="no product p1", metadata=request_id())
    return get_product(pb2, "not-found", candidate, primary)
