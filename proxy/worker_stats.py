"""The parent's one view of its workers' mirroring state (``--workers N``).

Every worker answers ``/stats`` for itself; this module merges the answers into the sections one
process's ``/stats`` has (``mirror``, ``trips``, ``requests_by_status``, ``flags``), in the same
shape, so whatever reads one process's stats (the live page, a script) reads the workers' too. It
adds what only a merge has: each shadow's breaker per worker (``breakers``), the workers a trip
rule tripped in (``tripped_in``), and which workers answered (``merged``). A worker that did not
answer is named there and its figures are left out. Plain code over the stats documents: it must
never do I/O (``shadowtap.proxy.admin.WorkersSource`` asks the workers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

__all__ = ["merge_workers_stats"]

#: One process's per-shadow counters and gauges that add up over the workers (each worker has its
#: own queue, copies in flight and breaker).
_SUMMED: Final = ("queue_depth", "queue_size", "in_flight", "breaker_opened")
#: The combined breaker word is the worst any worker has: open if any is open.
_BREAKER_RANK: Final = {"open": 0, "half-open": 1, "closed": 2}
#: A rule's merged state is the one furthest from "armed" that any worker has: the flags are shared,
#: so a rule tripped in one worker has switched the shadow off for all of them.
_TRIP_RANK: Final = {"tripped": 0, "waiting for live diff": 1, "warming up": 2, "armed": 3}
#: Fields of a trip entry that are the merge's own, not copied from one worker's entry.
_TRIP_MERGED: Final = ("trips", "tripped_in")


def merge_workers_stats(workers: Sequence[Mapping[str, Any]], flags: Mapping[str, Any]) -> dict[str, Any]:
    """The merged sections of the parent's ``/stats`` from the ``workers`` entries of
    ``WorkersSource.stats`` (``{"worker": i, "stats": {...}}``, or ``"error"`` for a worker that did
    not answer) and the shared runtime ``flags`` (``RuntimeFlags.snapshot``)."""
    answered = [(int(entry["worker"]), entry["stats"]) for entry in workers if isinstance(entry.get("stats"), dict)]
    out: dict[str, Any] = {
        "merged": {
            "workers": len(workers),
            "answered": [worker for worker, _ in answered],
            "unanswered": [
                {"worker": entry["worker"], "error": str(entry.get("error", "no stats"))}
                for entry in workers
                if not isinstance(entry.get("stats"), dict)
            ],
        },
        "flags": dict(flags),
        "requests_by_status": _sum_counts(stats.get("requests_by_status", {}) for _, stats in answered),
    }
    mirror = _merge_mirror(answered)
    if mirror is not None:
        out["mirror"] = mirror
    trips = _merge_trips(answered, flags)
    if trips is not None:
        out["trips"] = trips
    return out


def _sum_counts(parts: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for key, n in part.items():
            total[key] = total.get(key, 0) + int(n)
    return total


def _merge_mirror(answered: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[str, Any] | None:
    """Each shadow's counters summed over the workers, its breaker per worker and combined; None
    when no worker that answered mirrors (as one process without shadows has no ``mirror``)."""
    sections = [(worker, stats["mirror"]) for worker, stats in answered if isinstance(stats.get("mirror"), dict)]
    if not sections:
        return None
    shadows: dict[str, dict[str, Any]] = {}
    outcomes: dict[str, list[Mapping[str, Any]]] = {}
    for worker, section in sections:
        for name, figures in section.items():
            merged = shadows.get(name)
            if merged is None:
                merged = shadows[name] = {key: 0 for key in _SUMMED}
                merged["breakers"] = {}
            for key in _SUMMED:
                merged[key] += int(figures.get(key, 0))
            merged["breakers"][str(worker)] = str(figures.get("breaker", "closed"))
            outcomes.setdefault(name, []).append(figures.get("outcomes", {}))
    for name, merged in shadows.items():
        merged["outcomes"] = _sum_counts(outcomes[name])
        # An unknown word (a newer worker's) ranks worst: it is shown rather than hidden.
        merged["breaker"] = min(merged["breakers"].values(), key=lambda state: _BREAKER_RANK.get(state, -1))
    return shadows


def _merge_trips(answered: Sequence[tuple[int, Mapping[str, Any]]], flags: Mapping[str, Any]) -> list[Any] | None:
    """Each (rule, shadow) once: its state the furthest from armed of any worker's, tripped as well
    when the shared flags say this rule holds the shadow off (the worker that tripped it may be the
    one that did not answer), its trips summed; None when no worker that answered has trip rules."""
    lists = [(worker, stats["trips"]) for worker, stats in answered if isinstance(stats.get("trips"), list)]
    if not lists:
        return None
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for worker, entries in lists:
        for entry in entries:
            key = (str(entry["rule"]), str(entry["shadow"]))
            tripped = entry.get("state") == "tripped"
            current = merged.get(key)
            if current is None:
                merged[key] = {**entry, "trips": int(entry.get("trips", 0)), "tripped_in": [worker] if tripped else []}
                continue
            trips = current["trips"] + int(entry.get("trips", 0))
            tripped_in = [*current["tripped_in"], worker] if tripped else current["tripped_in"]
            if _TRIP_RANK.get(str(entry.get("state")), -1) < _TRIP_RANK.get(str(current.get("state")), -1):
                # The worse state's own figures (what it saw, why it waits) go with it.
                current = merged[key] = {k: v for k, v in entry.items() if k not in _TRIP_MERGED}
            current["trips"] = trips
            current["tripped_in"] = tripped_in
    shadows = flags.get("shadows", {})
    for (rule, shadow), entry in merged.items():
        if entry.get("state") != "tripped" and shadows.get(shadow, {}).get("tripped") == rule:
            entry["state"] = "tripped"
            entry.pop("waiting", None)
    return list(merged.values())
