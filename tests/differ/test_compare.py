"""The comparator over the crafted corpus, plus properties every comparison must keep."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import brotli
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowtap.differ import Comparator, CompareOptions, config_from_mapping
from shadowtap.recorder import Failure, Outcome, Response

CORPUS = yaml.safe_load((Path(__file__).parent / "corpus" / "pairs.yaml").read_text(encoding="utf-8"))


def build_outcome(spec: dict[str, Any]) -> Outcome:
    if "failure" in spec:
        return Failure(spec["failure"], "crafted")
    headers = [(name.encode(), value.encode()) for name, value in spec.get("headers", [])]
    if "json" in spec:
        body = json.dumps(spec["json"]).encode()
        content_type = spec.get("content_type", "application/json")
    elif "text" in spec:
        body = spec["text"].encode()
        content_type = spec.get("content_type", "text/plain")
    else:
        body = spec["raw"].encode("latin-1")
        content_type = spec.get("content_type")
    encoding = spec.get("encoding")
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    elif encoding == "br":
        body = brotli.compress(body)
    if encoding:
        headers.append((b"Content-Encoding", encoding.encode()))
    if content_type:
        headers.insert(0, (b"Content-Type", content_type.encode()))
    return Response(spec.get("status", 200), "", tuple(headers), body)


def expected(case: dict[str, Any]) -> set[tuple[str, str, str, str | None]]:
    return {(e[0], e[1], e[2], e[3] if len(e) > 3 else None) for e in case["expect"]}


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_corpus_pair_gives_exactly_the_expected_differences(case: dict[str, Any]) -> None:
    comparator = Comparator(config_from_mapping(case.get("options", {})).compare)
    got = comparator.compare(build_outcome(case["baseline"]), build_outcome(case["candidate"]))
    assert {(d.path, d.kind, d.transition, d.volatile) for d in got} == expected(case)
    assert len({d.full_path for d in got}) == len(got), "one difference per place"


def test_corpus_covers_every_kind_and_detector() -> None:
    kinds = {e[1] for case in CORPUS for e in case["expect"]}
    reasons = {e[3] for case in CORPUS for e in case["expect"] if len(e) > 3}
    assert kinds == {"status", "removed", "added", "type", "value", "length", "header", "text", "binary", "error"}
    assert reasons >= {f"volatile:{d}" for d in ("uuid", "iso-date", "http-date", "epoch", "jwt", "hex-id")}


def test_full_paths_keep_indexes() -> None:
    comparator = Comparator(CompareOptions())
    a = Response(200, body=b'{"items": [{"p": 1}, {"p": 2}]}')
    b = Response(200, body=b'{"items": [{"p": 1}, {"p": 3}]}')
    [diff] = comparator.compare(a, b)
    assert (diff.path, diff.full_path) == ("body.items[*].p", "body.items[1].p")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)
headers = st.lists(
    st.tuples(st.sampled_from([b"X-A", b"x-b", b"Date", b"Set-Cookie"]), st.binary(min_size=1, max_size=6)),
    max_size=4,
)


def as_response(value: Any, hdrs: list[tuple[bytes, bytes]], *, indent: int | None = None) -> Response:
    body = json.dumps(value, indent=indent, sort_keys=indent is not None).encode()
    return Response(200, "", ((b"Content-Type", b"application/json"), *hdrs), body)


@settings(max_examples=200, deadline=None)
@given(value=json_values, hdrs=headers)
def test_a_response_compared_with_itself_reports_nothing(value: Any, hdrs: list[tuple[bytes, bytes]]) -> None:
    comparator = Comparator(CompareOptions(unordered_all=False))
    # A different serialisation of the same document forces the slow path, not just the byte check.
    assert comparator.compare(as_response(value, hdrs), as_response(value, hdrs, indent=2)) == []


@settings(max_examples=300, deadline=None)
@given(a=json_values, b=json_values, ha=headers, hb=headers, unordered=st.booleans())
def test_diff_is_symmetric_in_paths(
    a: Any, b: Any, ha: list[tuple[bytes, bytes]], hb: list[tuple[bytes, bytes]], unordered: bool
) -> None:
    comparator = Comparator(CompareOptions(unordered_all=unordered))
    forward = comparator.compare(as_response(a, ha), as_response(b, hb))
    backward = comparator.compare(as_response(b, hb), as_response(a, ha))
    assert {d.path for d in forward} == {d.path for d in backward}
    assert {d.full_path for d in forward} == {d.full_path for d in backward} or unordered


content_types = st.sampled_from(
    [b"application/json", b"text/html", b"application/x-www-form-urlencoded", b"image/png", b"", b"text/plain; x"]
)
encodings = st.sampled_from([b"", b"gzip", b"br", b"deflate", b"zstd", b"gzip, br", b"bogus"])


def raw_response(body: bytes, content_type: bytes, encoding: bytes, status: int) -> Response:
    hdrs = [(b"Content-Type", content_type)] if content_type else []
    if encoding:
        hdrs.append((b"Content-Encoding", encoding))
    return Response(status, "", tuple(hdrs), body)


@settings(max_examples=300, deadline=None)
@given(
    bodies=st.tuples(st.binary(max_size=64), st.binary(max_size=64)),
    types=st.tuples(content_types, content_types),
    codings=st.tuples(encodings, encodings),
    statuses=st.tuples(st.sampled_from([200, 201, 404, 500]), st.sampled_from([200, 201, 404, 500])),
)
def test_arbitrary_bytes_never_raise_and_stay_symmetric(
    bodies: tuple[bytes, bytes],
    types: tuple[bytes, bytes],
    codings: tuple[bytes, bytes],
    statuses: tuple[int, int],
) -> None:
    comparator = Comparator(CompareOptions())
    a = raw_response(bodies[0], types[0], codings[0], statuses[0])
    b = raw_response(bodies[1], types[1], codings[1], statuses[1])
    forward, backward = comparator.compare(a, b), comparator.compare(b, a)
    assert {d.path for d in forward} == {d.path for d in backward}
    assert comparator.compare(a, a) == []
    assert all(
        d.kind in {"status", "header", "type", "value", "removed", "added", "length", "text", "binary"} for d in forward
    )


def test_maps_keyed_by_ids_fold_their_keys_in_signatures_not_in_examples() -> None:
    comparator = Comparator(CompareOptions())
    rooms_a = {f"room-{i}": {"free": True} for i in range(20)}
    rooms_b = {f"room-{i}": {"free": i % 2 == 0} for i in range(20)}
    a = {"users": {"u123": {"name": "a"}, "u456": {"name": "b"}}, "rooms": rooms_a, "sha256": "x", "v2": 1}
    b = {"users": {"u123": {"name": "z"}, "u789": {"name": "b"}}, "rooms": rooms_b, "sha256": "y", "v2": 2}
    diffs = comparator.compare(as_response(a, []), as_response(b, []))
    assert {(d.path, d.kind) for d in diffs} == {
        ("body.users.{key}.name", "value"),
        ("body.users.{key}", "removed"),
        ("body.users.{key}", "added"),
        ("body.rooms.{key}.free", "value"),  # 20 keys of one shape: a map, whatever each key looks like
        ("body.sha256", "value"),  # a word with digits stays a field
        ("body.v2", "value"),
    }
    assert {d.full_path for d in diffs if d.kind != "value" or "users" in d.path} == {
        "body.users.u123.name",
        "body.users.u456",
        "body.users.u789",
    }
    assert len([d for d in diffs if d.path == "body.rooms.{key}.free"]) == 10


def test_equal_containers_skip_the_walk_but_never_hide_a_boolean_for_a_number() -> None:
    comparator = Comparator(CompareOptions())
    a = {"items": [{"n": 1, "ok": 0}, {"n": 2}], "same": {"deep": [1, 2, {"x": 1.5}]}}
    b = {"items": [{"n": 1, "ok": False}, {"n": 2}], "same": {"deep": [1, 2, {"x": 1.5}]}}
    assert a == b  # Python's equality takes False for 0
    diffs = comparator.compare(as_response(a, []), as_response(b, []))
    assert [(d.full_path, d.kind, d.transition) for d in diffs] == [("body.items[0].ok", "type", "int->bool")]
    # Without booleans, equal containers are equal however their numbers are spelled.
    assert comparator.compare(as_response({"a": [{"x": 1}]}, []), as_response({"a": [{"x": 1.0}]}, [])) == []
