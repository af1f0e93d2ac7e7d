"""The runtime flags: the few settings the admin API changes while the proxy runs (mirroring and
recording on or off, sampling percents: the kill switch), in a shared-memory array so every worker
process sees a change at once. This module must never do I/O or read settings from anywhere but the
config it was made from and the changes the admin API hands it.
"""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Mapping
from typing import Any, Final

from shadowtap.proxy.config import ProxyConfig
from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.settings import typed_value

__all__ = ["RuntimeFlags"]


class RuntimeFlags:
    """The settings the admin API changes while running, shared by every worker process.

    Layout of the shared array of doubles: [mirroring on, recording on, record percent, changes, live
    diff on (``shadowtap.proxy.live``: off pauses the live differ)] then,
    per shadow, [mirroring on, sample percent, recording on, tripped]. ``tripped`` is 0, or the number
    (from 1) of the trip rule (``config.trips``) that switched the shadow's mirroring off
    (``shadowtap.proxy.trips``); turning the shadow's mirroring back on through ``apply`` clears it.
    Plain doubles are written and read whole, so a reader sees the old or the new value, never a mix;
    a change is visible at the next request.
    ``changes`` is stamped anew at every per-shadow recording switch, so ``unrecorded_shadows`` (read
    for every recorded exchange) reads one slot, not one per shadow, while nothing changed.
    """

    __slots__ = ("_array", "_unrecorded", "live_diff_shown", "shadow_index", "shadow_names", "trip_rules")

    _GLOBAL_SLOTS: Final = 5
    _SHADOW_SLOTS: Final = 4
    _CHANGES: Final = 3

    def __init__(self, config: ProxyConfig, array: Any | None = None) -> None:
        self.shadow_names = tuple(s.name for s in config.shadows)
        self.shadow_index = {name: i for i, name in enumerate(self.shadow_names)}
        self.trip_rules = tuple(rule.text for rule in config.trips)
        size = self._GLOBAL_SLOTS + self._SHADOW_SLOTS * len(self.shadow_names)
        if array is None:
            array = multiprocessing.get_context("spawn").RawArray("d", size)
            array[0] = 1.0 if config.mirror.enabled else 0.0
            array[1] = 1.0 if config.record.tape is not None else 0.0
            array[2] = config.record.sample_percent
            array[4] = 1.0
            for i, shadow in enumerate(config.shadows):
                base = self._GLOBAL_SLOTS + self._SHADOW_SLOTS * i
                array[base] = 1.0
                array[base + 1] = shadow.sample_percent
                array[base + 2] = 1.0
        self._array = array
        # (the changes stamp it was read at, the names): see unrecorded_shadows.
        self._unrecorded: tuple[float, frozenset[str]] = (-1.0, frozenset())
        #: Whether ``live_diff`` is in the snapshot: set when a live differ runs.
        self.live_diff_shown = False

    @property
    def shared_array(self) -> Any:
        """Pass this to a worker process (``RuntimeFlags(config, array)``) to share the flags."""
        return self._array

    @property
    def mirroring(self) -> bool:
        return bool(self._array[0] != 0.0)

    @mirroring.setter
    def mirroring(self, on: bool) -> None:
        self._array[0] = 1.0 if on else 0.0

    @property
    def recording(self) -> bool:
        return bool(self._array[1] != 0.0)

    @recording.setter
    def recording(self, on: bool) -> None:
        self._array[1] = 1.0 if on else 0.0

    @property
    def record_percent(self) -> float:
        return float(self._array[2])

    @record_percent.setter
    def record_percent(self, percent: float) -> None:
        self._array[2] = percent

    @property
    def live_diff(self) -> bool:
        return bool(self._array[4] != 0.0)

    @live_diff.setter
    def live_diff(self, on: bool) -> None:
        self._array[4] = 1.0 if on else 0.0

    def shadow_mirroring(self, index: int) -> bool:
        return bool(self._array[self._GLOBAL_SLOTS + self._SHADOW_SLOTS * index] != 0.0)

    def set_shadow_mirroring(self, index: int, on: bool) -> None:
        self._array[self._GLOBAL_SLOTS + self._SHADOW_SLOTS * index] = 1.0 if on else 0.0

    def shadow_percent(self, index: int) -> float:
        return float(self._array[self._GLOBAL_SLOTS + self._SHADOW_SLOTS * index + 1])

    def set_shadow_percent(self, index: int, percent: float) -> None:
        self._array[self._GLOBAL_SLOTS + self._SHADOW_SLOTS * index + 1] = percent

    def shadow_recording(self, index: int) -> bool:
        """Whether this shadow's answers go on the tape (recording as a whole must be on too)."""
        return bool(self._array[self._GLOBAL_SLOTS + self._SHADOW_SLOTS * index + 2] != 0.0)

    def set_shadow_recording(self, index: int, on: bool) -> None:
        self._array[self._GLOBAL_SLOTS + self._SHADOW_SLOTS * index + 2] = 1.0 if on else 0.0
        # After the switch itself, so a reader that sees the new stamp also sees the new switch. A
        # random stamp, not a count: two workers' admin servers may switch at once, and two
        # read-increment-writes could both write the same count, hiding the second switch.
        self._array[self._CHANGES] = random.random()

    def shadow_tripped(self, index: int) -> int:
        """0, or the number (from 1) of the trip rule that switched this shadow off."""
        return int(self._array[self._GLOBAL_SLOTS + self._SHADOW_SLOTS * index + 3])

    def set_tripped(self, index: int, rule_number: int) -> None:
        self._array[self._GLOBAL_SLOTS + self._SHADOW_SLOTS * index + 3] = float(rule_number)

    def clear_tripped(self, index: int) -> None:
        self._array[self._GLOBAL_SLOTS + self._SHADOW_SLOTS * index + 3] = 0.0

    def tripped_by(self, index: int) -> str | None:
        """The text of the trip rule that switched this shadow off, or None."""
        number = self.shadow_tripped(index)
        if not 1 <= number <= len(self.trip_rules):
            return None
        return self.trip_rules[number - 1]

    def unrecorded_shadows(self) -> frozenset[str]:
        """The shadows whose recording is switched off (their answers stay off the tape)."""
        changes = self._array[self._CHANGES]
        seen, names = self._unrecorded
        if changes != seen:
            names = frozenset(name for i, name in enumerate(self.shadow_names) if not self.shadow_recording(i))
            self._unrecorded = (changes, names)
        return names

    def snapshot(self) -> dict[str, Any]:
        shadows: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(self.shadow_names):
            shadow: dict[str, Any] = {
                "mirroring": self.shadow_mirroring(i),
                "sample_percent": self.shadow_percent(i),
                "recording": self.shadow_recording(i),
            }
            if self.trip_rules:
                # The trip rule holding this shadow's mirroring off, or None (only with trip rules).
                shadow["tripped"] = self.tripped_by(i)
            shadows[name] = shadow
        out: dict[str, Any] = {
            "mirroring": self.mirroring,
            "recording": self.recording,
            "record_sample_percent": self.record_percent,
            "shadows": shadows,
        }
        if self.live_diff_shown:
            out["live_diff"] = self.live_diff
        return out

    def apply(self, change: Any) -> None:
        """Apply a ``PUT /flags`` document; validates everything before changing anything."""
        if not isinstance(change, Mapping):
            raise ConfigError(f"expected a JSON object, not {change!r}", field="flags")
        updates: list[tuple[str, int, Any]] = []
        for key, value in change.items():
            if key in ("mirroring", "recording", "live_diff"):
                updates.append((key, -1, typed_value(value, bool, f"flags.{key}")))
            elif key in ("record_sample_percent", "sample_percent"):
                updates.append((key, -1, _percent(value, f"flags.{key}")))
            elif key == "shadows":
                if not isinstance(value, Mapping):
                    raise ConfigError(f"expected an object of shadow names, not {value!r}", field="flags.shadows")
                for name, spec in value.items():
                    if name not in self.shadow_index:
                        raise ConfigError(f"no shadow named {name!r}", field=f"flags.shadows.{name}")
                    if not isinstance(spec, Mapping):
                        raise ConfigError(f"expected an object, not {spec!r}", field=f"flags.shadows.{name}")
                    for sub, sub_value in spec.items():
                        where = f"flags.shadows.{name}.{sub}"
                        if sub == "mirroring":
                            updates.append(
                                ("shadow_mirroring", self.shadow_index[name], typed_value(sub_value, bool, where))
                            )
                        elif sub == "sample_percent":
                            updates.append(("shadow_percent", self.shadow_index[name], _percent(sub_value, where)))
                        elif sub == "recording":
                            updates.append(
                                ("shadow_recording", self.shadow_index[name], typed_value(sub_value, bool, where))
                            )
                        else:
                            raise ConfigError("unknown flag (known: mirroring, recording, sample_percent)", field=where)
            else:
                raise ConfigError(
                    "unknown flag (known: mirroring, recording, record_sample_percent, sample_percent, shadows, "
                    "live_diff)",
                    field=f"flags.{key}",
                )
        for key, index, value in updates:
            if key == "mirroring":
                self.mirroring = value
            elif key == "recording":
                self.recording = value
            elif key == "live_diff":
                self.live_diff = value
            elif key == "record_sample_percent":
                self.record_percent = value
            elif key == "sample_percent":
                for i in range(len(self.shadow_names)):
                    self.set_shadow_percent(i, value)
            elif key == "shadow_mirroring":
                if value:
                    # A person turning a tripped shadow back on re-arms its rules (shadowtap.proxy.trips).
                    self.clear_tripped(index)
                self.set_shadow_mirroring(index, value)
            elif key == "shadow_recording":
                self.set_shadow_recording(index, value)
            else:
                self.set_shadow_percent(index, value)


def _percent(value: Any, where: str) -> float:
    percent: float = typed_value(value, float, where)
    if not 0.0 <= percent <= 100.0:
        raise ConfigError(f"must be within 0..100, not {value!r}", field=where)
    return percent
