"""Compare a baseline outcome with a candidate outcome: the list of differences, nothing else.

Fast path first: equal status, equal raw headers and equal body bytes cost a few comparisons. Only
then are headers filtered and bodies decoded and parsed, and JSON walked as a tree. Each difference
names its folded path (array indexes as ``[*]``, for counting), its full path (for examples), its
kind and the value-class transition, and says when a volatile detector explains it, or the proxy's
own change of the candidate's request (``shadowtap.differ.rewrites``: the answer merely echoes it). This module
is pure and synchronous: it must never do I/O, and never decide what is noise beyond these.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

from shadowtap.differ.config import CompareOptions
from shadowtap.differ.grpc import STATUS_FIELDS, grpc_body, grpc_status_changes, is_grpc, lent_names, metadata_maps
from shadowtap.differ.normalize import Body, header_map, parse_body
from shadowtap.differ.paths import KEY, IdKey, both_paths, folded_path
from shadowtap.differ.rewrites import Rewrites
from shadowtap.differ.templates import segment_is_id
from shadowtap.differ.volatile import (
    VOLATILE_FAMILY,
    base_class,
    is_schemaless_timestamp,
    mask_text,
    string_class,
    value_class,
)
from shadowtap.recorder.model import Failure, Outcome, Response

__all__ = ["KINDS", "Comparator", "Difference", "key_is_id", "keyed_by_ids"]

#: Every kind of difference, in the vocabulary of the report.
KINDS: Final = ("status", "removed", "added", "type", "value", "length", "header", "text", "binary", "error")

_MISSING: Final = object()
#: Folded array paths whose rule is remembered. Real APIs have a few hundred; the bound only matters
#: for documents with generated keys, where the cache is simply cleared and refilled.
_ARRAY_RULE_CACHE_SIZE: Final = 4096
#: A key with a short prefix and a run of digits (``u123``, ``id_0042``) names one of many: a map
#: keyed by ids. Longer words with digits (``sha256``, ``iso8601``) stay literal.
_PREFIXED_ID: Final = re.compile(r"[A-Za-z]{1,2}[-_]?\d{3,}\Z")
#: An object with this many keys, all of one shape (letters and digit runs alike) and each holding a
#: digit, is a map keyed by ids whatever its keys look like alone (``room-17``, ``a1b2``).
_KEYED_OBJECT_MIN_KEYS: Final = 16
_SHAPE: Final = re.compile(r"[A-Za-z]+|\d+")
#: Keys whose id-ness is remembered: real APIs have a few thousand; maps keyed by ids would grow it
#: without end, so past this it starts over.
_KEY_CACHE_SIZE: Final = 16_384


def key_is_id(key: str) -> bool:
    """Whether an object key names one of many by its shape alone (the path segments' rules, or a
    short prefix and a run of digits)."""
    return segment_is_id(key) or _PREFIXED_ID.match(key) is not None


def _shape(key: str) -> str:
    return _SHAPE.sub(lambda m: "9" if m.group().isdigit() else "a", key)


def keyed_by_ids(obj: dict[str, Any]) -> bool:
    """Whether a large object's keys are all of one shape with digits: a map keyed by ids."""
    if len(obj) < _KEYED_OBJECT_MIN_KEYS:
        return False
    shapes = {_shape(key) for key in obj}
    return len(shapes) == 1 and "9" in next(iter(shapes))


@dataclass(frozen=True, slots=True)
class Difference:
    """One place where two outcomes differ. ``volatile`` is the reason decided at compare time, when
    there is one: ``volatile:<detector>`` (a detector explains it) or ``rewrite:<what>`` (the answer
    echoes what the proxy changed in the candidate's request)."""

    path: str
    full_path: str
    kind: str
    transition: str
    volatile: str | None = None


def _outcome_label(outcome: Outcome) -> str:
    return str(outcome.status) if isinstance(outcome, Response) else outcome.kind


def _has_booleans(data: bytes) -> bool:
    """Whether a JSON text may hold ``true`` or ``false`` (or the words inside a string)."""
    return b"true" in data or b"false" in data


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _map_entries(value: list[Any]) -> bool:
    """Whether a schema-less array reads as a protobuf ``map``'s entries: two or more messages of
    field 1 (a text or number key, distinct) and at most field 2, as every map entry is on the wire."""
    if len(value) < 2:
        return False
    keys = set()
    for entry in value:
        if type(entry) is not dict or not 1 <= len(entry) <= 2 or "1" not in entry:
            return False
        if len(entry) == 2 and "2" not in entry:
            return False
        key = entry["1"]
        if type(key) is not str and type(key) is not int:
            return False
        keys.add(key)
    return len(keys) == len(value)


class Comparator:
    """Compares outcomes under one ``CompareOptions``. Its only state is a bounded cache of which
    array rule applies at each folded path, a pure function of the options, and the ``Rewrites`` of
    the call in progress (not thread-safe: one comparator per thread)."""

    __slots__ = (
        "_abs_tol", "_array_rule_cache", "_array_rules", "_detectors", "_equal_is_same", "_key_steps",
        "_literal_keys", "_options", "_rel_tol", "_rewrites", "_timestamps",
    )  # fmt: skip

    def __init__(self, options: CompareOptions) -> None:
        self._options = options
        self._detectors = options.volatile_detectors
        # Schema-less Timestamps are instants only while the epoch detector is on (they are its kind).
        self._timestamps = "epoch" in options.volatile_detectors
        self._abs_tol = options.absolute_tolerance
        self._rel_tol = options.relative_tolerance
        self._array_rules = options.unordered_all or bool(options.unordered_paths or options.list_keys)
        self._array_rule_cache: dict[tuple[str | int, ...], tuple[str, str]] = {}
        self._key_steps: dict[str, str] = {}
        # A protobuf tree's keys are field names and numbers, never ids: not folded to {key}.
        self._literal_keys = False
        self._equal_is_same = False
        self._rewrites: Rewrites | None = None

    # --- outcomes -------------------------------------------------------------------------------

    def compare(
        self, baseline: Outcome, candidate: Outcome, rewrites: Rewrites | None = None, method: str = ""
    ) -> list[Difference]:
        """The differences between two outcomes; empty when they are equal. With ``rewrites`` (what
        the proxy changed in the candidate's request), a difference that merely echoes that change
        carries its ``rewrite:<what>`` reason. ``method`` is the request's path: a gRPC answer's
        message types are the method's (``/shop.Catalog/GetProduct``)."""
        if isinstance(baseline, Response) and isinstance(candidate, Response):
            if rewrites is None:
                return self.compare_responses(baseline, candidate, method)
            self._rewrites = rewrites
            try:
                return self.compare_responses(baseline, candidate, method)
            finally:
                self._rewrites = None
        if isinstance(baseline, Failure) and isinstance(candidate, Failure) and baseline.kind == candidate.kind:
            return []
        return [Difference("status", "status", "error", f"{_outcome_label(baseline)}->{_outcome_label(candidate)}")]

    def compare_responses(self, a: Response, b: Response, method: str = "") -> list[Difference]:
        out: list[Difference] = []
        if a.status != b.status:
            out.append(Difference("status", "status", "status", f"{a.status}->{b.status}"))
            if a.status // 100 != b.status // 100:
                # Another class of answer is another document: its fields would only bury the status.
                return out
        # Only a pair that differs where a gRPC answer can looks at the content type: in the body, the
        # trailers, or the headers of one with trailers or no body (trailers-only). A pair equal but
        # for its Date stays a few compares.
        grpc = (
            (a.body != b.body or a.trailers != b.trailers or (a.headers != b.headers and (a.trailers or not a.body)))
            and is_grpc(a.headers)
            and is_grpc(b.headers)
        )
        skip: frozenset[str] | None = None
        if grpc:  # grpc-status is the status (shadowtap.differ.grpc), other trailers are headers
            changes, moot = grpc_status_changes(a, b, self._volatile_text)
            out.extend(Difference(path, path, kind, transition, why) for path, kind, transition, why in changes)
            if moot:
                return out
            # A trailers-only answer's trailing metadata is in its headers: compared as trailers.
            lent = lent_names(a, b) if bool(a.trailers) != bool(b.trailers) else None
            skip = STATUS_FIELDS | lent if lent else STATUS_FIELDS
            if a.trailers != b.trailers:
                self._compare_header_maps(*metadata_maps(a, b), "trailer", out)
        if a.headers != b.headers:
            self._compare_headers(a, b, out, skip)
        if a.body != b.body:
            self._compare_bodies(a, b, out, method if grpc else None)
        return out

    # --- headers --------------------------------------------------------------------------------

    def _compare_headers(self, a: Response, b: Response, out: list[Difference], skip: frozenset[str] | None) -> None:
        ha, hb = header_map(a.headers), header_map(b.headers)
        if skip:
            for name in skip:
                ha.pop(name, None)
                hb.pop(name, None)
        self._compare_header_maps(ha, hb, "header", out)

    def _compare_header_maps(
        self, ha: dict[str, tuple[str, ...]], hb: dict[str, tuple[str, ...]], part: str, out: list[Difference]
    ) -> None:
        compared = self._options.header_compared
        for name in sorted(ha.keys() | hb.keys()):
            # A pseudo-header (``:status``, from an HTTP/2 import) is the status, compared as one.
            if name[:1] == ":" or not compared(name):
                continue
            va, vb = ha.get(name), hb.get(name)
            if va == vb:
                continue
            path = f"{part}.{name}"
            rewrites = self._rewrites
            if va is None:
                reason = None if rewrites is None else rewrites.header(name, va, vb)
                out.append(Difference(path, path, "header", "missing->present", reason))
            elif vb is None:
                reason = None if rewrites is None else rewrites.header(name, va, vb)
                out.append(Difference(path, path, "header", "present->missing", reason))
            elif name == "set-cookie":
                # Cookie values are sessions and signatures; which cookies are set is the contract.
                if sorted(c.split("=", 1)[0].strip() for c in va) != sorted(c.split("=", 1)[0].strip() for c in vb):
                    out.append(Difference(path, path, "header", "cookie-names"))
            else:
                reason = self._volatile_values(va, vb)
                if reason is None and rewrites is not None:
                    reason = rewrites.header(name, va, vb)
                out.append(Difference(path, path, "header", "changed", reason))

    def _volatile_text(self, a: str, b: str) -> str | None:
        """Why two free texts (a ``grpc-message``) differ when only volatile tokens do: the ids,
        dates and times they name."""
        reason = self._volatile_values((a,), (b,))
        if reason is not None:
            return reason
        masked_a, found_a = mask_text(a, self._detectors)
        masked_b, found_b = mask_text(b, self._detectors)
        if masked_a == masked_b and (found_a or found_b):
            return f"volatile:{VOLATILE_FAMILY.get((found_a or found_b)[0], (found_a or found_b)[0])}"
        return None

    def _volatile_values(self, va: tuple[str, ...], vb: tuple[str, ...]) -> str | None:
        if len(va) != len(vb):
            return None
        family: str | None = None
        for x, y in zip(va, vb, strict=True):
            if x == y:
                continue
            cx = string_class(x, self._detectors)
            if cx != string_class(y, self._detectors) or cx not in VOLATILE_FAMILY:
                return None
            family = VOLATILE_FAMILY[cx]
        return None if family is None else f"volatile:{family}"

    # --- bodies ---------------------------------------------------------------------------------

    def _body(self, r: Response, method: str | None) -> Body:
        if method is not None:
            proto = self._options.proto
            return grpc_body(r.headers, r.body, r.truncated_from is not None, method, proto)
        content_type = r.header(b"content-type")
        content_encoding = r.header(b"content-encoding")
        return parse_body(
            r.body,
            None if content_type is None else content_type.decode("latin-1"),
            None if content_encoding is None else content_encoding.decode("latin-1"),
            r.truncated_from is not None,
        )

    def _compare_bodies(self, a: Response, b: Response, out: list[Difference], method: str | None) -> None:
        ba, bb = self._body(a, method), self._body(b, method)
        self._literal_keys = method is not None
        # Equal containers are compared in C rather than walked, which is exact unless ``==`` can
        # take ``True`` for ``1`` deep inside (a type change): only JSON without booleans is sure.
        self._equal_is_same = ba.kind == "form" or (
            ba.kind == "json" and method is None and not _has_booleans(ba.data) and not _has_booleans(bb.data)
        )
        if ba.kind != bb.kind:
            out.append(Difference("body", "body", "type", f"{ba.kind}->{bb.kind}"))
        elif ba.kind in ("json", "form"):
            # Equality in C before the walk in Python. ``==`` alone would take true for 1, so unless
            # neither side holds a boolean, equal canonical text (which spells types) must confirm
            # it; anything else is walked.
            if ba.value == bb.value and (self._equal_is_same or _canonical(ba.value) == _canonical(bb.value)):
                return
            self._walk(ba.value, bb.value, [], out)
        elif ba.kind == "text":
            self._compare_text(ba.value, bb.value, out)
        elif ba.kind in ("binary", "invalid") and ba.data != bb.data:
            transition = "same-size" if len(ba.data) == len(bb.data) else "size-changed"
            out.append(Difference("body", "body", "binary", transition))

    def _compare_text(self, ta: str, tb: str, out: list[Difference]) -> None:
        if ta == tb:
            return
        masked_a, found_a = mask_text(ta, self._detectors)
        masked_b, found_b = mask_text(tb, self._detectors)
        if masked_a.splitlines() == masked_b.splitlines():
            if masked_a == masked_b and (found_a or found_b):
                out.append(Difference("body", "body", "text", "text->text", f"volatile:{(found_a or found_b)[0]}"))
                return
            if masked_a != masked_b:
                # Only line endings differ: the same text, re-wrapped by a different writer.
                return
        rewrites = self._rewrites
        out.append(
            Difference("body", "body", "text", "text->text", None if rewrites is None else rewrites.text(ta, tb))
        )

    # --- JSON tree --------------------------------------------------------------------------------

    def _emit(
        self, steps: list[str | int], kind: str, transition: str, out: list[Difference], volatile: str | None = None
    ) -> None:
        folded, full = both_paths("body", steps)
        out.append(Difference(folded, full, kind, transition, volatile))

    def _numbers_close(self, a: float, b: float) -> bool:
        if a == b:
            return True
        if not (self._abs_tol or self._rel_tol):
            return False
        return abs(a - b) <= max(self._abs_tol, self._rel_tol * max(abs(a), abs(b)))

    def _walk(self, a: Any, b: Any, steps: list[str | int], out: list[Difference]) -> None:
        ta, tb = type(a), type(b)
        if ta is tb:
            if ta is dict:
                self._walk_object(a, b, steps, out)
                return
            if ta is list:
                self._walk_array(a, b, steps, out)
                return
            if a == b:
                return
            if (ta is float or ta is int) and self._numbers_close(a, b):
                return
            ca, cb = value_class(a, self._detectors), value_class(b, self._detectors)
            volatile = f"volatile:{VOLATILE_FAMILY[ca]}" if ca == cb and ca in VOLATILE_FAMILY else None
            rewrites = self._rewrites
            if volatile is None and rewrites is not None and ta is str:
                key = steps[-1] if steps and isinstance(steps[-1], str) else None
                volatile = rewrites.changed(key, a, b)
            self._emit(steps, "value", f"{ca}->{cb}", out, volatile)
            return
        if (ta is int or ta is float) and (tb is int or tb is float):
            if not self._numbers_close(a, b):
                ca, cb = value_class(a, self._detectors), value_class(b, self._detectors)
                volatile = (
                    f"volatile:{VOLATILE_FAMILY[ca]}"
                    if ca in VOLATILE_FAMILY and VOLATILE_FAMILY[ca] == VOLATILE_FAMILY.get(cb)
                    else None
                )
                self._emit(steps, "value", f"{ca}->{cb}", out, volatile)
            return
        transition = f"{value_class(a, self._detectors)}->{value_class(b, self._detectors)}"
        self._emit(steps, "type" if base_class(a) != base_class(b) else "value", transition, out)

    def _key_step(self, key: str) -> str:
        """``key`` as a path step: an ``IdKey`` when it names one of many."""
        step = self._key_steps.get(key)
        if step is None:
            step = IdKey(key) if key_is_id(key) else key
            if len(self._key_steps) >= _KEY_CACHE_SIZE:
                self._key_steps.clear()
            self._key_steps[key] = step
        return step

    @staticmethod
    def _same(value: Any) -> bool:
        """Whether a value found ``==`` to its counterpart is sure to show no difference when
        booleans may hide in containers: only scalars are (equal containers are walked)."""
        tv = type(value)
        return tv is not dict and tv is not list

    def _walk_object(self, a: dict[str, Any], b: dict[str, Any], steps: list[str | int], out: list[Difference]) -> None:
        if (
            self._literal_keys
            and len(a) <= 2
            and "1" in a
            and "1" in b
            and type(a["1"]) is int
            and self._timestamps
            and is_schemaless_timestamp(a)
            and is_schemaless_timestamp(b)
        ):
            # A google.protobuf.Timestamp read without its schema: one instant, not two numbers (its
            # nanos, 0 and so absent from the wire one time in many, would be a field removed).
            if a != b:
                self._emit(steps, "value", "epoch-ns->epoch-ns", out, "volatile:epoch")
            return
        matched = 0
        step = (
            str
            if self._literal_keys
            else IdKey
            if len(a) >= _KEYED_OBJECT_MIN_KEYS and keyed_by_ids(a)
            else self._key_step
        )
        for key, va in a.items():
            vb = b.get(key, _MISSING)
            if vb is _MISSING:
                steps.append(step(key))
                reason = None if self._rewrites is None else self._rewrites.removed(key, va)
                self._emit(steps, "removed", f"{value_class(va, self._detectors)}->missing", out, reason)
                steps.pop()
                continue
            matched += 1
            if type(va) is type(vb) and va == vb and (self._equal_is_same or self._same(va)):
                continue
            steps.append(step(key))
            self._walk(va, vb, steps, out)
            steps.pop()
        if matched < len(b):
            step = (
                str
                if self._literal_keys
                else IdKey
                if len(b) >= _KEYED_OBJECT_MIN_KEYS and keyed_by_ids(b)
                else self._key_step
            )
            for key, vb in b.items():
                if key not in a:
                    steps.append(step(key))
                    reason = None if self._rewrites is None else self._rewrites.added(key, vb)
                    self._emit(steps, "added", f"missing->{value_class(vb, self._detectors)}", out, reason)
                    steps.pop()

    def _array_rule(self, steps: list[str | int]) -> tuple[str, str]:
        # Decided once per folded path: matching globs on every array would dominate the walk.
        folded = tuple(-1 if type(s) is int else (KEY if type(s) is IdKey else s) for s in steps)
        rule = self._array_rule_cache.get(folded)
        if rule is None:
            path = folded_path("body", steps)
            rule = ("ordered", "")
            for pattern, key in self._options.list_key_patterns:
                if pattern.match(path):
                    rule = ("keyed", key)
                    break
            else:
                if self._options.unordered_all or any(p.match(path) for p in self._options.unordered_patterns):
                    rule = ("unordered", "")
            if len(self._array_rule_cache) >= _ARRAY_RULE_CACHE_SIZE:
                self._array_rule_cache.clear()
            self._array_rule_cache[folded] = rule
        return rule

    def _walk_array(self, a: list[Any], b: list[Any], steps: list[str | int], out: list[Difference]) -> None:
        if (
            self._literal_keys
            and len(a) >= 2
            and type(a[0]) is dict
            and "1" in a[0]
            and len(a[0]) <= 2
            and _map_entries(a)
            and _map_entries(b)
        ):
            # Map entries read without a schema (key 1, value 2): a map has no order, the wire's is
            # the server's hash table's. Matched by key; a key gone or new is still a difference.
            self._walk_keyed(a, b, "1", steps, out)
            return
        if self._array_rules:
            mode, key = self._array_rule(steps)
            if mode == "keyed":
                self._walk_keyed(a, b, key, steps, out)
                return
            if mode == "unordered":
                self._walk_unordered(a, b, steps, out)
                return
        for index in range(min(len(a), len(b))):
            va, vb = a[index], b[index]
            if type(va) is type(vb) and va == vb and (self._equal_is_same or self._same(va)):
                continue
            steps.append(index)
            self._walk(va, vb, steps, out)
            steps.pop()
        self._emit_length(a, b, steps, out)

    def _emit_length(self, a: list[Any], b: list[Any], steps: list[str | int], out: list[Difference]) -> None:
        if len(a) != len(b):
            self._emit(steps, "length", "shorter" if len(b) < len(a) else "longer", out)

    def _walk_unordered(self, a: list[Any], b: list[Any], steps: list[str | int], out: list[Difference]) -> None:
        keys_a = [_canonical(e) for e in a]
        keys_b = [_canonical(e) for e in b]
        left_b = Counter(keys_b)
        rest_a: list[tuple[str, int]] = []
        for index, key in enumerate(keys_a):
            if left_b[key] > 0:
                left_b[key] -= 1
            else:
                rest_a.append((key, index))
        if not rest_a and len(a) == len(b):
            return
        left_a = Counter(keys_a)
        rest_b: list[tuple[str, int]] = []
        for index, key in enumerate(keys_b):
            if left_a[key] > 0:
                left_a[key] -= 1
            else:
                rest_b.append((key, index))
        self._emit_length(a, b, steps, out)
        # Unmatched elements are paired in canonical order, so a changed field inside an element of
        # a set shows as that field's change rather than as a removal plus an addition.
        rest_a.sort()
        rest_b.sort()
        for (_, ia), (_, ib) in zip(rest_a, rest_b, strict=False):
            steps.append(ia)
            self._walk(a[ia], b[ib], steps, out)
            steps.pop()

    def _walk_keyed(self, a: list[Any], b: list[Any], key: str, steps: list[str | int], out: list[Difference]) -> None:
        by_key: dict[str, tuple[int, Any]] = {}
        for index, element in enumerate(b):
            if type(element) is dict and key in element:
                by_key.setdefault(_canonical(element[key]), (index, element))
        for index, element in enumerate(a):
            steps.append(index)
            if type(element) is dict and key in element:
                match = by_key.pop(_canonical(element[key]), None)
                if match is None:
                    self._emit(steps, "removed", "object->missing", out)
                else:
                    self._walk(element, match[1], steps, out)
            elif index < len(b):
                self._walk(element, b[index], steps, out)
            steps.pop()
        for index, element in sorted(by_key.values(), key=lambda item: item[0]):
            steps.append(index)
            self._emit(steps, "added", f"missing->{value_class(element, self._detectors)}", out)
            steps.pop()
