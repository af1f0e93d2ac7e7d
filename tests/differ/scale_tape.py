"""Generated tapes for the differ at scale: many endpoints, ids in paths, maps keyed by ids, 2 KiB JSON.

Used by the scale tests (small sizes) and by ``bench/diff_scale.py`` (1M exchanges). Everything is
a pure function of the exchange's index, so a tape is the same on every run and every machine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from shadowtap.recorder import Exchange, Request, Response, SyncTapeWriter, TapeOptions

__all__ = ["BASE_NS", "RESOURCES", "SHOP_METHODS", "scale_exchange", "shop_exchange", "shop_templates", "write_tape"]

BASE_NS: Final = 1_714_557_600_000_000_000
#: Top-level resources of the generated API: a few with ids in the path, one answering maps keyed by ids.
RESOURCES: Final = (
    "accounts", "alerts", "badges", "baskets", "brands", "campaigns", "cards", "carriers", "coupons", "devices",
    "events", "invoices", "locales", "merchants", "notes", "offers", "plans", "refunds", "regions", "tickets",
    "widgets", "zones", "orders", "payments", "returns", "reviews", "shipments", "stores", "suppliers", "taxes",
    "teams", "tokens", "users", "vendors", "venues", "wallets", "warehouses", "webhooks", "workflows", "wishlists",
)  # fmt: skip
_JSON: Final = ((b"Content-Type", b"application/json"),)
_LOCALES: Final = ("en-us", "en-gb", "de-de", "fr-fr", "es-es", "it-it", "nl-nl", "pt-br", "ja-jp", "ko-kr")
_CATEGORIES: Final = ("shoes", "shirts", "coats", "hats", "bags", "belts", "socks", "gloves", "scarves", "skirts")
_SUBS: Final = ("men", "women", "kids", "sale", "new", "eco", "sport", "formal", "casual", "outdoor")
_LEAVES: Final = ("list", "top", "cheap", "rated", "fresh")


def _document(i: int, *, changed: bool, keyed: bool) -> dict[str, Any]:
    items = [
        {
            "sku": f"SKU-{j:04d}",
            "name": f"Product number {j} with a descriptive name",
            "price": round(10 + j * 1.25, 2),
            "tags": ["sale", "eco", "new"][: 1 + j % 3],
            "stock": 100 - j,
        }
        for j in range(12)
    ]
    doc: dict[str, Any] = {
        "request_id": f"{i:08x}-0000-4000-8000-{(i * 7919) % 10**12:012d}",
        "generated_at": f"2024-05-01T10:{i % 60:02d}:{(i // 60) % 60:02d}Z",
        "user": {"id": 42, "name": "Ada", "email": "ada@example.com", "roles": ["admin", "dev"]},
        "items": items,
        "total": 1234.5,
    }
    if keyed:
        # A map of user id to value: every response names other users.
        doc["users"] = {f"u{i * 3 + k}": {"name": f"user {k}", "score": k} for k in range(3)}
    if changed:
        doc["total"] = 1234.75
        doc["items"][3]["price"] = 99.0 + (i % 2)
        doc["user"]["roles"] = ["dev"]
        del doc["user"]["email"]
        if keyed:
            for value in doc["users"].values():
                value["score"] += 1
    return doc


def _pair(i: int, path: str, *, keyed: bool, method: str = "GET", same_every: int = 4) -> Exchange:
    before = json.dumps(_document(i, changed=False, keyed=keyed)).encode()
    # One exchange in ``same_every`` answers the same (0: none does).
    same = same_every > 0 and i % same_every == 0
    after = before if same else json.dumps(_document(i, changed=True, keyed=keyed)).encode()
    return Exchange(
        id=f"x{i:09d}",
        started_at_ns=BASE_NS + i * 1_000_000,
        request=Request(method, path, ((b"Host", b"api.local"),), b""),
        primary=Response(200, "OK", _JSON, before),
        shadows={"v2": Response(200, "OK", _JSON, after)},
    )


def scale_exchange(i: int, distinct_paths: int = 100_000, same_every: int = 4) -> Exchange:
    """Exchange ``i`` of the scale tape: 40 resources, each with and without an id among
    ``distinct_paths`` in its path (half of the requests), every tenth answering a map keyed by user ids,
    one in ``same_every`` answering the same on both sides (0: every pair differs)."""
    resource = RESOURCES[i % len(RESOURCES)]
    path = f"/api/v1/{resource}"
    if (i // len(RESOURCES)) % 2:
        path += f"/{(i * 2_654_435_761) % distinct_paths}/detail"
    return _pair(i, path, keyed=i % 10 == 3, same_every=same_every)


#: The shop's paths are split over these methods: a templater keeps about 2,000 templates per method.
SHOP_METHODS: Final = ("GET", "PUT", "DELETE")


def shop_templates() -> Iterator[str]:
    """5,000 paths that are each their own endpoint (with ``shop_exchange``'s methods): few literal
    children per position, each path hit again and again."""
    for locale in _LOCALES:
        for category in _CATEGORIES:
            for sub in _SUBS:
                for leaf in _LEAVES:
                    yield f"/shop/{locale}/{category}/{sub}/{leaf}"


def shop_exchange(i: int, paths: list[str]) -> Exchange:
    """Exchange ``i`` of the shop tape: path ``i`` modulo the paths, each path always with one method."""
    index = i % len(paths)
    return _pair(i, paths[index], keyed=False, method=SHOP_METHODS[index % len(SHOP_METHODS)])


def write_tape(directory: Path, exchanges: Iterator[Exchange], segment_bytes: int = 128 << 20) -> Path:
    options = TapeOptions(redaction=None, fsync="none", max_segment_bytes=segment_bytes)
    with SyncTapeWriter(directory, options) as writer:
        writer.write_many(exchanges)
    return directory
