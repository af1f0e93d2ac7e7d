"""Live results without sockets: a live store written by hand, read back as the proxy reads it."""

from __future__ import annotations

import time
from pathlib import Path

from shadowtap.differ.config import DifferConfig
from shadowtap.differ.live import open_live_store
from shadowtap.differ.store import DiffStore, RunMeta
from shadowtap.proxy.config import ProxyConfig
from shadowtap.proxy.flags import RuntimeFlags
from shadowtap.proxy.live_results import LiveResults
from shadowtap.proxy.metrics import ProxyMetrics
from shadowtap.proxy.trips import TripGuard


def add_pairs(store: DiffStore, first: int, count: int, *, critical: bool, secondary: bool) -> None:
    route = store.route_id("GET", "/orders/1", "GET /orders/{id}")
    diff_set = store.set_id(((store.key_id("status", "status", "200->404"), ""),)) if critical else 0
    for i in range(first, first + count):
        store.add_pair(f"e{i}", time.time_ns(), route, "compared", secondary, diff_set)
    store.commit()


async def test_the_noise_model_warms_up_from_the_store_before_a_diff_rule_may_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sqlite")
    store = open_live_store(path)
    store.set_meta(RunMeta("primary", "v2", "secondary", ("test",)))
    config = ProxyConfig.from_mapping(
        {"primary": "http://127.0.0.1:9", "shadows": {"v2": "http://127.0.0.1:10"}, "trips": ["diff.critical>=1;min=3"]}
    )
    flags, metrics = RuntimeFlags(config), ProxyMetrics()
    guard = TripGuard(config.trips, flags, metrics, clock_ns=lambda: time.time_ns() - 10_000_000_000)
    results = LiveResults((("v2", path),), DifferConfig(min_samples=10), metrics, guard)
    try:
        # Critical pairs, but only 6 of the 10 the secondary must answer before noise is known.
        add_pairs(store, 0, 6, critical=True, secondary=True)
        await results.tick()
        [entry] = guard.snapshot()
        assert entry["state"] == "waiting for live diff"
        assert entry["waiting"] == "noise model warming up: 6 of 10 pairs answered by secondary"
        assert flags.shadow_mirroring(0)
        # The metrics count them all the same.
        assert results.view()[0][("v2", "GET /orders/{id}", "differing")] == 6
        add_pairs(store, 6, 4, critical=True, secondary=True)
        await results.tick()
        assert not flags.shadow_mirroring(0) and flags.tripped_by(0) == "diff.critical>=1;min=3"
        assert results.view()[1][("v2", "critical")] == 1
    finally:
        store.close()
