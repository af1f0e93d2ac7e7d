"""RuntimeFlags: the admin API's changes, shared by every worker, validated as a whole before any applies."""

from __future__ import annotations

import pytest

from shadowtap.proxy.config import ProxyConfig
from shadowtap.proxy.flags import RuntimeFlags
from shadowtap.recorder.errors import ConfigError
from tests.proxy.test_config import FULL


def test_runtime_flags_apply_and_share() -> None:
    config = ProxyConfig.from_mapping(FULL)
    flags = RuntimeFlags(config)
    assert flags.snapshot() == {
        "mirroring": True,
        "recording": True,
        "record_sample_percent": 50.0,
        "shadows": {
            "v2": {"mirroring": True, "sample_percent": 25.0, "recording": True},
            "v3": {"mirroring": True, "sample_percent": 100.0, "recording": True},
        },
    }
    other_worker_view = RuntimeFlags(config, flags.shared_array)
    assert other_worker_view.unrecorded_shadows() == frozenset()  # read once: now cached
    flags.apply({"mirroring": False, "shadows": {"v3": {"sample_percent": 5}}})
    assert not other_worker_view.mirroring and other_worker_view.shadow_percent(1) == 5.0
    flags.apply({"shadows": {"v2": {"recording": False}}})
    assert not other_worker_view.shadow_recording(0) and other_worker_view.shadow_recording(1)
    # The cached answer of the other worker follows the switch (and the switch back).
    assert other_worker_view.unrecorded_shadows() == {"v2"}
    flags.apply({"shadows": {"v2": {"recording": True}, "v3": {"recording": False}}})
    assert other_worker_view.unrecorded_shadows() == {"v3"} and flags.unrecorded_shadows() == {"v3"}
    flags.apply({"shadows": {"v2": {"recording": False}, "v3": {"recording": True}}})
    assert other_worker_view.unrecorded_shadows() == {"v2"}
    # Each shadow's slots are its own: switching v2's recording moved nothing of v3's.
    assert other_worker_view.shadow_mirroring(1) and other_worker_view.shadow_percent(1) == 5.0
    flags.apply({"sample_percent": 1})
    assert other_worker_view.shadow_percent(0) == 1.0
    # A bad document changes nothing, even when its first part was good.
    for bad, field in [
        ({"recording": False, "shadows": {"nope": {}}}, "flags.shadows.nope"),
        ({"recording": False, "sample_percent": 200}, "flags.sample_percent"),
        ({"recording": "off"}, "flags.recording"),
        ({"shadows": {"v2": {"recording": "no"}}}, "flags.shadows.v2.recording"),
        ({"kill": True}, "flags.kill"),
        ([1], "flags"),
    ]:
        with pytest.raises(ConfigError) as info:
            flags.apply(bad)
        assert info.value.field == field
    assert flags.recording


def test_runtime_flags_refuse_nan() -> None:
    flags = RuntimeFlags(ProxyConfig.from_mapping(FULL))
    with pytest.raises(ConfigError, match="finite"):
        flags.apply({"sample_percent": float("nan")})
