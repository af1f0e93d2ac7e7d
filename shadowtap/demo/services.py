"""The built-in demo service: a small JSON shop API in two versions, with planted changes and noise.

Version 1 is the primary (and, run twice, the ``secondary`` that teaches the differ what noise looks
like); version 2 is the shadow with a few deliberate behaviour changes. Both answer with the noise
real services have: timestamps, request ids, uuids, lists in no stable order. The planted changes
are listed in ``PLANTED`` so the demo and its test can check that the report finds exactly those.

It must never be mistaken for a real service: it listens on loopback only and keeps state in memory.
Run one with ``python -m shadowtap.demo.services --version 1 --port 0``; it prints ``listening on
http://127.0.0.1:PORT`` once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web


@dataclass(frozen=True, slots=True)
class PlantedChange:
    """One deliberate difference between version 1 and version 2."""

    endpoint: str
    path: str
    kind: str
    severity: str
    description: str


#: What version 2 does differently. Everything else differing between runs is noise.
PLANTED: tuple[PlantedChange, ...] = (
    PlantedChange(
        "GET /api/orders/{id}", "status", "status", "critical", "orders whose id is a multiple of 7 fail with 500"
    ),
    PlantedChange("GET /api/users/{id}", "body.email", "removed", "high", "the email field was dropped"),
    PlantedChange("GET /api/products", "body.items[*].price", "type", "high", "prices became strings"),
    PlantedChange("GET /api/cart/{id}", "body.total", "value", "medium", "totals are rounded differently"),
)

CATEGORIES = ("books", "games", "garden", "kitchen")
TAGS = ("new", "sale", "eco", "popular", "limited")


def _stable_int(*parts: object) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _noisy_json(payload: dict[str, Any], status: int = 200) -> web.Response:
    """A JSON response with the volatile parts every real service has."""
    body = {**payload, "request_id": str(uuid.uuid4()), "generated_at": _now_iso()}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"X-Request-Id": uuid.uuid4().hex, "X-Served-By": f"demo-{random.randint(1, 9)}"},
    )


def _shuffled(items: list[Any]) -> list[Any]:
    out = list(items)
    random.shuffle(out)
    return out


def build_app(version: int) -> web.Application:
    """The demo API at ``version`` (1 or 2)."""
    if version not in (1, 2):
        raise ValueError(f"demo service version must be 1 or 2, not {version}")
    routes = web.RouteTableDef()

    @routes.get("/api/health")
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    @routes.get("/api/users/{user_id:\\d+}")
    async def user(request: web.Request) -> web.Response:
        user_id = int(request.match_info["user_id"])
        seed = _stable_int("user", user_id)
        payload: dict[str, Any] = {
            "id": user_id,
            "name": f"user-{seed % 10_000}",
            "roles": _shuffled(["reader", "buyer"] + (["admin"] if seed % 5 == 0 else [])),
            "last_login": int(time.time()) - seed % 86_400,
        }
        if version == 1:
            payload["email"] = f"user{user_id}@example.test"
        return _noisy_json(payload)

    @routes.get("/api/products")
    async def products(request: web.Request) -> web.Response:
        category = request.query.get("category", "books")
        items = []
        for n in range(4):
            seed = _stable_int("product", category, n)
            price = round(5 + (seed % 9_000) / 100, 2)
            items.append(
                {
                    "sku": f"{category[:2].upper()}-{seed % 100_000:05d}",
                    "price": price if version == 1 else f"{price:.2f}",
                    "tags": _shuffled([TAGS[seed % len(TAGS)], TAGS[(seed // 7) % len(TAGS)]]),
                }
            )
        return _noisy_json({"category": category, "items": items})

    @routes.get("/api/orders/{order_id:\\d+}")
    async def order(request: web.Request) -> web.Response:
        order_id = int(request.match_info["order_id"])
        if version == 2 and order_id % 7 == 0:
            return web.json_response({"error": "internal error"}, status=500)
        seed = _stable_int("order", order_id)
        return _noisy_json(
            {
                "id": order_id,
                "status": ("placed", "shipped", "delivered")[seed % 3],
                "tracking": str(uuid.UUID(int=seed << 64 | seed)),
            }
        )

    @routes.get("/api/cart/{cart_id:\\d+}")
    async def cart(request: web.Request) -> web.Response:
        cart_id = int(request.match_info["cart_id"])
        seed = _stable_int("cart", cart_id)
        lines = [round(1 + ((seed >> (8 * i)) % 5_000) / 100 + 0.005, 3) for i in range(3)]
        total = sum(lines)
        return _noisy_json(
            {"id": cart_id, "lines": len(lines), "total": round(total, 2) if version == 1 else int(total * 100) / 100}
        )

    @routes.post("/api/orders")
    async def place_order(request: web.Request) -> web.Response:
        body = await request.read()
        return _noisy_json({"accepted": True, "bytes": len(body), "id": random.randint(1000, 9999)}, status=201)

    app = web.Application()
    app.add_routes(routes)
    return app


async def serve(version: int, host: str, port: int) -> None:
    runner = web.AppRunner(build_app(version), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="shadowtap demo service")
    parser.add_argument("--version", type=int, choices=[1, 2], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.version, args.host, args.port))


if __name__ == "__main__":
    main()
