"""A real grpcio server for shop.Catalog (``grpc.aio``, port 0 on 127.0.0.1), for tests that need a
primary, a shadow or a replay target speaking gRPC.

``CatalogServicer`` answers from the request alone (nothing random), with a few planted behaviours:
``GetProduct(id="missing")`` fails with NOT_FOUND and a message; ``GetProduct(id="big-<n>")``
returns a product whose ``blob`` is n bytes; ``ListProducts(limit=n)`` streams n products;
``UploadPrices`` counts updates (an update with an empty sku is rejected); ``Chat`` echoes each
message with ``text`` upper-cased. ``version`` goes into every product's name (``v1``/``v2`` shadows).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from tests.grpc_fixtures import CompiledShop


def make_servicer(shop: CompiledShop, version: str = "v1") -> Any:
    pb2 = shop.pb2

    def product(product_id: str, index: int = 0) -> Any:
        return pb2.Product(
            id=product_id,
            name=f"{product_id} ({version})",
            stock=index,
            availability=pb2.IN_STOCK,
            variants=[
                pb2.Variant(
                    sku=f"{product_id}-{i}", colour="red", price=pb2.Price(currency="EUR", amount_cents=100 + i)
                )
                for i in range(2)
            ],
            updated_at_unix_ms=1_700_000_000_000 + index,
        )

    class CatalogServicer(shop.pb2_grpc.CatalogServicer):  # type: ignore[misc,name-defined]
        async def GetProduct(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if request.id == "missing":
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no product {request.id}")
            answer = product(request.id)
            if request.id.startswith("big-"):
                answer.blob = bytes(range(256)) * (int(request.id[4:]) // 256)
            return answer

        async def ListProducts(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            for index in range(request.limit):
                yield product(f"{request.category}-{index}", index)

        async def UploadPrices(
            self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            accepted = rejected = 0
            async for update in request_iterator:
                if update.sku:
                    accepted += 1
                else:
                    rejected += 1
            return pb2.UploadSummary(accepted=accepted, rejected=rejected)

        async def Chat(
            self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async for message in request_iterator:
                yield pb2.ChatMessage(
                    **{"from": version, "text": message.text.upper(), "sent_at_unix_ms": message.sent_at_unix_ms}
                )

    return CatalogServicer()


async def start_catalog(shop: CompiledShop, version: str = "v1") -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server with the catalog on 127.0.0.1 (a free port); stop it with
    ``await server.stop(None)``."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
    )
    shop.pb2_grpc.add_CatalogServicer_to_server(make_servicer(shop, version), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port
