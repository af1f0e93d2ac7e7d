"""gRPC diff benchmark: protobuf decoding and diff of 1 KiB messages, differing pairs per CPU-second.

Each pair is one unary gRPC exchange (``/shop.Catalog/GetProduct``, tests/grpc_fixtures/shop.proto)
whose primary and candidate answers are real encoded ``shop.Product`` messages of about 1 KiB (14
variants with prices, a 160-byte blob), differing in a few places (an enum, a price, a removed variant, a renamed
field) and in a timestamp. What is measured, over the same pre-built exchanges, in this one process:

* ``decode x2`` baseline: parsing both messages with the generated class (protobuf's C parser), the
  least any field-level diff must do;
* ``descriptor set``: ``DiffEngine.compare_exchange`` with the schema (names and types);
* ``schema-less``: the same without a schema (fields by number, nested messages guessed);
* ``identical``: byte-equal answers (the fast path, no decoding).

Budget (issue 23): >= 5,000 differing pairs per CPU-second. Never run in a test, never touches the
network. Usage::

    .venv/bin/python bench/grpc_diff_bench.py [--pairs 2000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shadowtap.differ import CompareOptions, DiffEngine, protobuf  # noqa: E402
from shadowtap.differ.protobuf import ProtoSchema  # noqa: E402
from shadowtap.recorder import Exchange, Request, Response  # noqa: E402
from shadowtap.wire.grpc import encode_message  # noqa: E402
from tests.grpc_fixtures import compile_shop  # noqa: E402

GRPC = ((b"content-type", b"application/grpc"),)
BUDGET_PAIRS_PER_CPU_S = 5_000


def product(pb2: ModuleType, rng: random.Random, *, changed: bool) -> bytes:
    variants = [
        pb2.Variant(
            sku=f"SKU-{rng.randrange(10**8):08d}-{i}",
            colour=rng.choice(("red", "green", "blue", "black", "white")) + " matte finish",
            price=pb2.Price(currency="EUR", amount_cents=1000 + i * 100),
        )
        for i in range(14)
    ]
    if changed:
        variants[3].price.amount_cents += 1
        del variants[-1]
    message = pb2.Product(
        id=f"product-{rng.randrange(10**6)}",
        name="" if changed else "An adjustable desk lamp with a weighted base and a long arm",
        stock=rng.randrange(100),
        availability=pb2.BACKORDER if changed else pb2.IN_STOCK,
        variants=variants,
        updated_at_unix_ms=1_764_000_000_000 + rng.randrange(10**6) + (250 if changed else 0),
        blob=bytes(rng.randrange(256) for _ in range(160)),
    )
    data: bytes = message.SerializeToString()
    if changed:
        data += b"\x42\x0bDesk lamp 2"
    return data


def pairs(pb2: ModuleType, count: int, seed: int = 7) -> list[Exchange]:
    out = []
    for i in range(count):
        # Same content but for the planted changes: one generator state per side.
        state = random.Random(seed + i).getstate()
        baseline, candidate = random.Random(), random.Random()
        baseline.setstate(state)
        candidate.setstate(state)
        a = product(pb2, baseline, changed=False)
        b = product(pb2, candidate, changed=True)
        request = Request("POST", "/shop.Catalog/GetProduct", GRPC, encode_message(b"\x0a\x02p1"), http_version="2")
        trailers = ((b"grpc-status", b"0"),)
        primary = Response(200, headers=GRPC, body=encode_message(a), http_version="2", trailers=trailers)
        shadow = Response(200, headers=GRPC, body=encode_message(b), http_version="2", trailers=trailers)
        out.append(Exchange(f"ex-{i}", 1_764_000_000_000_000_000 + i, request, primary, {"v2": shadow}))
    return out


def rate(label: str, work: Callable[[Exchange], object], exchanges: list[Exchange], seconds: float) -> float:
    done = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.process_time() - cpu0 < seconds:
        for exchange in exchanges:
            work(exchange)
        done += len(exchanges)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    per_cpu = done / cpu
    print(f"  {label:<22} {per_cpu:>10,.0f} pairs/CPU-s   ({done / wall:,.0f}/s wall, {done:,} pairs)")
    return per_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shop = compile_shop(Path(tmp))
        schema = ProtoSchema.from_file(shop.descriptor_set)
    pb2 = shop.pb2
    exchanges = pairs(pb2, args.pairs)
    sizes = [len(e.primary.body) for e in exchanges if isinstance(e.primary, Response)]
    python = sys.version.split()[0]
    print(f"gRPC diff bench: {len(exchanges):,} pairs, messages {min(sizes)}-{max(sizes)} bytes, python {python}")
    with_schema = DiffEngine(CompareOptions(proto=schema), candidate="v2")
    schemaless = DiffEngine(CompareOptions(), candidate="v2")

    def schemaless_fresh(exchange: Exchange) -> object:
        # The schema-less decoder remembers small sub-messages by their bytes; forgetting them before
        # each pair measures decoding, not the memo (only the pair's two sides share it).
        protobuf._MEMO.clear()
        return schemaless.compare_exchange(exchange)

    sample = with_schema.compare_exchange(exchanges[0])
    print("  differences of one pair (descriptor set):")
    for d in sample.differences:
        print(f"    {d.full_path:<36} {d.kind:<8} {d.transition:<16} {d.volatile or ''}")

    def decode_both(exchange: Exchange) -> None:
        for outcome in (exchange.primary, exchange.shadows["v2"]):
            assert isinstance(outcome, Response)
            pb2.Product.FromString(outcome.body[5:])

    identical = [replace(e, shadows={"v2": e.primary}) for e in exchanges]  # type: ignore[dict-item]
    baseline = rate("decode x2 (baseline)", decode_both, exchanges, args.seconds)
    named = rate("descriptor set", with_schema.compare_exchange, exchanges, args.seconds)
    numbered = rate("schema-less", schemaless_fresh, exchanges, args.seconds)
    rate("identical", with_schema.compare_exchange, identical, args.seconds / 2)
    print(f"  descriptor set / decode baseline: {named / baseline:.3f}x; schema-less: {numbered / baseline:.3f}x")
    verdict = "OK" if min(named, numbered) >= BUDGET_PAIRS_PER_CPU_S else "BELOW"
    print(f"  budget >= {BUDGET_PAIRS_PER_CPU_S:,} differing pairs per CPU-second: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
