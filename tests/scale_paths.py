"""Request paths at scale: up to a million distinct ones with ids of every shape, and the stable
routes that must stay apart beside them.

Used by ``tests/shadowtap/test_million_paths_functional.py`` and ``bench/replay_memory.py``. Every
path is a pure function of its number, so a tape is the same on every run and every machine.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Final

__all__ = ["ORDERS", "RESOURCES", "STABLE", "USERS", "distinct_path", "slug"]

#: Real top-level resources (each hit many times: they must stay 22 templates).
RESOURCES: Final = tuple(
    f"{name}s"
    for name in (
        "account", "address", "alert", "audit", "badge", "basket", "brand", "campaign", "card", "carrier",
        "coupon", "device", "event", "invoice", "locale", "merchant", "note", "offer", "plan", "refund",
        "region", "ticket",
    )
)  # fmt: skip
#: Routes hit over and over, literal templates beside the parameters of their positions.
STABLE: Final = (*(f"/api/v1/{r}" for r in RESOURCES), "/files/recent", "/healthz", "/api/v1/users/me")
USERS: Final = "GET /api/v1/users/{id}"
ORDERS: Final = "GET /api/v1/orders/{id}/items"
_WORDS: Final = ("alpha", "brisk", "cedar", "delta", "ember", "fjord", "grove", "haven", "iris", "juniper")
_DAY_ONE: Final = datetime.date(2001, 1, 1).toordinal()


def slug(n: int) -> str:
    """Six words: a million distinct values, none shaped like an id (only their number says they
    are a parameter)."""
    parts = []
    for _ in range(6):
        n, r = divmod(n, len(_WORDS))
        parts.append(_WORDS[r])
    return "-".join(parts)


def distinct_path(k: int) -> tuple[str, str]:
    """Distinct path number ``k`` (0 <= k < 6,000,000, no two alike) and its template."""
    kind, n = k % 6, k // 6
    if kind == 0:
        return f"/api/v1/users/{k}", USERS
    if kind == 1:
        return f"/api/v1/orders/{uuid.UUID(int=k)}/items", ORDERS
    if kind == 2:
        return f"/blobs/{k:040x}", "GET /blobs/{id}"
    if kind == 3:
        return f"/files/{slug(n)}", "GET /files/{id}"
    if kind == 4:
        return f"/reports/{datetime.date.fromordinal(_DAY_ONE + n).isoformat()}/summary", "GET /reports/{id}/summary"
    return f"/sessions/tok{k:012d}AbCdEfGh", "GET /sessions/{id}"
