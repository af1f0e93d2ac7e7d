"""Generated traffic for the differ: a v1 primary, a v1 ``secondary`` and a v2 ``candidate`` with
planted regressions, all three drowning in realistic noise (UUIDs, timestamps, epochs, request ids,
session cookies, shuffled unordered arrays, a field whose value is random on every version).

``PLANTED`` lists exactly what a correct differ must report unsuppressed; the ``CONFIG`` tells it
which arrays are unordered. Deterministic for a given seed.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from typing import Any, Final

from shadowtap.recorder import Exchange, Failure, FailureKind, Request, Response

CANDIDATE: Final = "v2"
SECONDARY: Final = "secondary"
CONFIG: Final[dict[str, Any]] = {"diff": {"unordered_arrays": ["body.friends"]}}
T0_NS: Final = 1_714_557_600_000_000_000

#: (endpoint, path, kind, transition) of every planted regression.
PLANTED: Final = {
    ("GET /users/{id}", "body.email", "removed", "str->missing"),
    ("GET /users/{id}", "status", "error", "200->timeout"),
    ("GET /orders/{id}", "body.total", "type", "float->str"),
    ("GET /products", "body.products[*].badge", "added", "missing->str"),
    ("POST /checkout", "status", "status", "200->500"),
    ("GET /prices/{id}", "body.price", "value", "float->float"),
    ("GET /health", "header.x-version", "header", "changed"),
}

_SLUG_WORDS: Final = ("blue", "river", "stone", "quiet", "amber", "north", "maple", "swift")
# A long tail (336 slugs, each page seen a few times at most): the templater learns it is a parameter.
SLUGS: Final = tuple(
    f"{a}-{b}-{c}" for a in _SLUG_WORDS for b in _SLUG_WORDS for c in _SLUG_WORDS if len({a, b, c}) == 3
)


def _json(status: int, body: Any, rng: random.Random, extra: tuple[tuple[bytes, bytes], ...] = ()) -> Response:
    headers = (
        (b"Content-Type", b"application/json"),
        (b"Date", f"Wed, 01 May 2024 10:{rng.randrange(60):02d}:{rng.randrange(60):02d} GMT".encode()),
        (b"X-Request-Id", str(uuid.UUID(int=rng.getrandbits(128))).encode()),
        (b"Set-Cookie", f"sid={rng.getrandbits(64):016x}; Path=/; HttpOnly".encode()),
        *extra,
    )
    return Response(status, "OK" if status < 400 else "Error", headers, json.dumps(body).encode())


def _iso(rng: random.Random) -> str:
    return f"2024-05-01T10:{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z"


class _Service:
    """One deployment: ``version`` 1 or 2; ``planted`` turns v2's regressions on."""

    def __init__(self, version: int, planted: bool, rng: random.Random) -> None:
        self.v2 = version == 2 and planted
        self.rng = rng

    def answer(self, request: Request, seed: int) -> Response | Failure:
        rng = self.rng
        # What the request determines is the same on every version (the per-request ``seed``);
        # what the service makes up on each call comes from its own ``rng``.
        fixed = random.Random(seed)
        path = request.path
        # Drawn on every version, so the rest of ``fixed`` stays in step between them.
        fault_roll = fixed.random()
        if path.startswith("/users/"):
            if self.v2 and fault_roll < 0.03:
                return Failure(FailureKind.TIMEOUT, "2s")
            user_id = int(path.rsplit("/", 1)[1])
            friends = [fixed.randrange(10_000) for _ in range(6)]
            rng.shuffle(friends)
            body: dict[str, Any] = {
                "id": user_id,
                "name": f"user {user_id}",
                "email": f"user{user_id}@example.com",
                "updated_at": _iso(rng),
                "request_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "session": f"{rng.getrandbits(96):024x}",
                "friends": friends,
                # Random on every version ~30% of the time: learned noise, not a regression.
                "score": round(fixed.random() * 100, 2) if rng.random() > 0.3 else round(rng.random() * 100, 2),
            }
            if self.v2:
                del body["email"]
            return _json(200, body, rng)
        if path.startswith("/orders/"):
            total = round(fixed.uniform(5, 500), 2) + 0.25
            return _json(
                200,
                {
                    "order_id": path.rsplit("/", 1)[1],
                    "total": f"{total:.2f}" if self.v2 else total,
                    "items": [{"sku": f"SKU-{fixed.randrange(100)}", "qty": fixed.randrange(1, 5)} for _ in range(3)],
                    "created": 1_714_557_600_000 + rng.randrange(10**6),
                },
                rng,
            )
        if path == "/products":
            products = [{"sku": f"SKU-{i}", "name": f"product {i}"} for i in range(fixed.randrange(2, 6))]
            if self.v2:
                for product in products:
                    product["badge"] = "new"
            return _json(200, {"products": products, "generated_at": _iso(rng)}, rng)
        if path == "/checkout":
            if self.v2 and fault_roll < 0.1:
                return _json(500, {"error": "NullPointerException"}, rng)
            return _json(200, {"ok": True, "receipt": str(uuid.UUID(int=rng.getrandbits(128)))}, rng)
        if path.startswith("/prices/"):
            price = round(fixed.uniform(1, 100), 2) + 0.5
            return _json(200, {"price": round(price * 1.1, 2) if self.v2 else price, "currency": "EUR"}, rng)
        if path.startswith("/page/"):
            html = f"<html><p>{path}</p><input name=csrf value={rng.getrandbits(128):032x}> at {_iso(rng)}</html>"
            return Response(200, "OK", ((b"Content-Type", b"text/html; charset=utf-8"),), html.encode())
        version = b"2" if self.v2 else b"1"
        return _json(200, {"status": "up"}, rng, ((b"X-Version", version),))


def _request(rng: random.Random) -> Request:
    roll = rng.random()
    headers = ((b"Host", b"shop.test"), (b"Authorization", b"Bearer secret-token"))
    if roll < 0.25:
        return Request("GET", f"/users/{rng.randrange(1, 5000)}", headers)
    if roll < 0.4:
        return Request("GET", f"/orders/{uuid.UUID(int=rng.getrandbits(128))}", headers)
    if roll < 0.55:
        return Request("GET", f"/products?page={rng.randrange(1, 9)}", headers)
    if roll < 0.7:
        return Request("POST", "/checkout", headers, b'{"cart": 1}')
    if roll < 0.8:
        return Request("GET", f"/prices/{rng.randrange(1, 300)}", headers)
    if roll < 0.9:
        return Request("GET", f"/page/{rng.choice(SLUGS)}", headers)
    return Request("GET", "/health", headers)


def traffic(count: int, *, planted: bool = True, seed: int = 7) -> Iterator[Exchange]:
    """``count`` exchanges with ``primary`` (v1), ``secondary`` (v1) and ``v2`` outcomes."""
    rng = random.Random(seed)
    primary = _Service(1, planted, random.Random(seed + 1))
    secondary = _Service(1, planted, random.Random(seed + 2))
    candidate = _Service(2, planted, random.Random(seed + 3))
    for index in range(count):
        request = _request(rng)
        request_seed = rng.getrandbits(32)
        yield Exchange(
            id=f"ex-{seed}-{index:06d}",
            started_at_ns=T0_NS + index * 1_000_000,
            request=request,
            primary=primary.answer(request, request_seed),
            shadows={
                SECONDARY: secondary.answer(request, request_seed),
                CANDIDATE: candidate.answer(request, request_seed),
            },
        )
