"""The JSON walk against DeepDiff as an oracle.

Hypothesis draws JSON pairs (independent documents, and a base document with a few mutations: a
value changed, a key removed or added, a type changed, an array grown or shrunk, an int written as
a float, a bool written as 0/1) and the comparator's report, as a set of (folded path, kind,
transition), must equal what DeepDiff reports for the same pair, mapped into the engine's vocabulary.

The engine runs with every volatile detector off and no request delta, so nothing is explained away
at compare time; ignore rules and learned noise are applied later (aggregation), never here, and the
arrays are ordered (no ``unordered_arrays``, no ``list_keys``), numeric tolerance 0. One more test
keeps the default detectors on but draws only values none of them matches (short strings, numbers
below the epoch range), so a detector that fired on a plain value would show as a divergence.

DeepDiff settings, each chosen to match the engine's semantics (docs/differ.md, "What is compared"):

* ``ignore_order=False``: arrays are ordered.
* ``zip_ordered_iterables=True``: the engine compares arrays index by index; DeepDiff's default
  aligns them with difflib and would report an insertion at the front as one added item, where the
  engine reports every shifted index.
* ``threshold_to_diff_deeper=0``: DeepDiff 8+ reports two dicts that share few keys as one changed
  value; the engine always walks into objects.
* no ``ignore_numeric_type_changes`` / ``ignore_type_in_groups``: DeepDiff puts ``bool`` in the
  numeric group (``True`` equals ``1`` there), the engine does not; int vs float is normalised
  below instead.

Documented normalisations of DeepDiff's report (intended differences, not bugs):

1. Array length. The engine reports one ``length`` difference at the array (``shorter``/``longer``);
   DeepDiff one ``iterable_item_added``/``removed`` per extra element at the element's index. Each
   of DeepDiff's items maps to (array path, ``length``, direction), so the set has one entry.
2. int vs float. The engine compares numbers by value (``1`` equals ``1.0``) and reports a
   different number as a ``value`` change with the classes as transition (``int->float``); DeepDiff
   reports every int/float pair as a ``type_changes``. A ``type_changes`` between int and float is
   dropped when the values are equal and becomes a ``value`` change otherwise.
3. bool vs int: no normalisation. Both report a type change (``true`` and ``1`` are different types).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from deepdiff import DeepDiff
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowtap.differ import Comparator, CompareOptions
from shadowtap.differ.paths import folded_path
from shadowtap.recorder import Response

Report = set[tuple[str, str, str]]

#: Detectors off: no value is ever explained as volatile. Arrays ordered, tolerance 0 (defaults).
OPTIONS = CompareOptions(volatile_detectors=frozenset())

_CLASS = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str", dict: "object", list: "array"}


def json_class(value: Any) -> str:
    """The engine's value class, written independently of ``shadowtap.differ.volatile`` (detectors are off)."""
    return _CLASS[type(value)]


def engine_report(a: Any, b: Any, options: CompareOptions = OPTIONS) -> Report:
    comparator = Comparator(options)
    headers = ((b"Content-Type", b"application/json"),)
    got = comparator.compare(
        Response(200, "", headers, json.dumps(a).encode()), Response(200, "", headers, json.dumps(b).encode())
    )
    assert all(d.volatile is None for d in got), got
    return {(d.path, d.kind, d.transition) for d in got}


def oracle_report(a: Any, b: Any) -> Report:
    tree = DeepDiff(
        a, b, ignore_order=False, zip_ordered_iterables=True, threshold_to_diff_deeper=0, verbose_level=2, view="tree"
    )
    out: Report = set()
    for report, levels in tree.items():
        for level in levels:
            steps = level.path(output_format="list")
            t1, t2 = level.t1, level.t2
            if report == "values_changed":
                out.add((folded_path("body", steps), "value", f"{json_class(t1)}->{json_class(t2)}"))
            elif report == "type_changes":
                if type(t1) in (int, float) and type(t2) in (int, float):
                    # Normalisation 2: numbers compare by value; a different number is a value change.
                    if t1 != t2:
                        out.add((folded_path("body", steps), "value", f"{json_class(t1)}->{json_class(t2)}"))
                else:
                    out.add((folded_path("body", steps), "type", f"{json_class(t1)}->{json_class(t2)}"))
            elif report == "dictionary_item_removed":
                out.add((folded_path("body", steps), "removed", f"{json_class(t1)}->missing"))
            elif report == "dictionary_item_added":
                out.add((folded_path("body", steps), "added", f"missing->{json_class(t2)}"))
            elif report in ("iterable_item_removed", "iterable_item_added"):
                # Normalisation 1: one length difference at the array, not one per element.
                direction = "shorter" if report == "iterable_item_removed" else "longer"
                out.add((folded_path("body", steps[:-1]), "length", direction))
            else:
                raise AssertionError(f"DeepDiff reported {report!r}, which this oracle does not map: {tree}")
    return out


# --- strategies ------------------------------------------------------------------------------------

# Short keys from a small alphabet so independent documents share keys; odd keys (space, quote, dot,
# bracket, empty) exercise the ``["odd key"]`` path spelling.
keys = st.text(alphabet='ab.[ "é', max_size=3)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, 1, -1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.0, -0.0, 1.0, 0.5])
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)
documents = st.dictionaries(keys, json_values, max_size=5) | json_values


_SAME_TYPE: dict[type, st.SearchStrategy[Any]] = {
    bool: st.booleans(),
    int: st.integers(),
    float: st.floats(allow_nan=False, allow_infinity=False),
    str: st.text(max_size=8),
}


def _locations(value: Any, steps: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out = [steps]
    if type(value) is dict:
        for key, child in value.items():
            out.extend(_locations(child, (*steps, key)))
    elif type(value) is list:
        for index, child in enumerate(value):
            out.extend(_locations(child, (*steps, index)))
    return out


def _get(doc: Any, steps: tuple[str | int, ...]) -> Any:
    for step in steps:
        doc = doc[step]
    return doc


def _replace(doc: Any, steps: tuple[str | int, ...], value: Any) -> Any:
    if not steps:
        return value
    _get(doc, steps[:-1])[steps[-1]] = value
    return doc


def _mutate(draw: st.DrawFn, doc: Any) -> Any:
    steps = draw(st.sampled_from(_locations(doc)))
    target = _get(doc, steps)
    ops = ["replace"]
    if type(target) is dict:
        ops += ["add-key"] + (["remove-key"] if target else [])
    if type(target) is list:
        ops += ["append", "prepend"] + (["pop"] if target else [])
    if type(target) in _SAME_TYPE:
        ops += ["change", "change"]
    if type(target) is int:
        ops += ["as-float", "as-bool"]
    if type(target) is bool:
        ops += ["as-int"]
    op = draw(st.sampled_from(ops))
    if op == "replace":  # any value: mostly a changed type
        return _replace(doc, steps, draw(json_values))
    if op == "change":  # a value of the same type
        return _replace(doc, steps, draw(_SAME_TYPE[type(target)]))
    if op == "add-key":
        target[draw(keys)] = draw(json_values)
    elif op == "remove-key":
        del target[draw(st.sampled_from(sorted(target)))]
    elif op == "append":
        target.append(draw(json_values))
    elif op == "prepend":
        target.insert(0, draw(json_values))
    elif op == "pop":
        target.pop(draw(st.sampled_from(range(len(target)))))
    elif op == "as-float":
        return _replace(doc, steps, float(target) if abs(target) < 2**53 else 0.5)
    elif op == "as-bool":
        return _replace(doc, steps, target % 2 == 1)
    elif op == "as-int":
        return _replace(doc, steps, int(target))
    return doc


@st.composite
def mutated_pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    base = draw(documents)
    changed = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        changed = _mutate(draw, changed)
    return base, changed


# --- the oracle ------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(pair=mutated_pairs())
def test_engine_agrees_with_deepdiff_on_mutated_documents(pair: tuple[Any, Any]) -> None:
    a, b = pair
    assert engine_report(a, b) == oracle_report(a, b)


@settings(max_examples=100, deadline=None)
@given(a=documents, b=documents)
def test_engine_agrees_with_deepdiff_on_independent_documents(a: Any, b: Any) -> None:
    assert engine_report(a, b) == oracle_report(a, b)


# Values no built-in detector matches: strings under 9 characters (the shortest volatile string is
# longer), numbers below the epoch range (2000-01-01 in seconds).
_PLAIN_LIMIT = 946_684_800
plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-_PLAIN_LIMIT + 1, max_value=_PLAIN_LIMIT - 1)
    | st.floats(min_value=-_PLAIN_LIMIT + 1, max_value=_PLAIN_LIMIT - 1)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)


@settings(max_examples=100, deadline=None)
@given(a=st.dictionaries(keys, plain_values, max_size=5), b=st.dictionaries(keys, plain_values, max_size=5))
def test_default_detectors_agree_with_deepdiff_on_plain_values(a: dict[str, Any], b: dict[str, Any]) -> None:
    """With the default options the detectors stay silent on values that look like nothing."""
    assert engine_report(a, b, CompareOptions()) == oracle_report(a, b)


def test_each_documented_normalisation_is_needed() -> None:
    """The normalisations above are real differences of DeepDiff's raw report, not dead code."""
    # 1. Array length: two items removed in DeepDiff, one length difference in the engine.
    assert set(DeepDiff([1, 2, 3], [1], zip_ordered_iterables=True)) == {"iterable_item_removed"}
    assert engine_report({"x": [1, 2, 3]}, {"x": [1]}) == {("body.x", "length", "shorter")}
    # 2. int vs float: a type change in DeepDiff, equal (or a value change) in the engine.
    assert set(DeepDiff(1, 1.0)) == {"type_changes"}
    assert engine_report({"n": 1}, {"n": 1.0}) == set()
    assert engine_report({"n": 1}, {"n": 2.5}) == {("body.n", "value", "int->float")}
    # 3. bool vs int: DeepDiff's numeric group would take True for 1, hence no type groups at all.
    assert DeepDiff(True, 1, ignore_numeric_type_changes=True) == {}
    assert (
        engine_report({"f": True}, {"f": 1})
        == oracle_report({"f": True}, {"f": 1})
        == {("body.f", "type", "bool->int")}
    )
