"""Fuzzing the reader with records of the wrong shape: checksums valid, one value or container of a
valid record swapped for something else (any msgpack value, an array cut short, a map as an array).

Whatever the mutation, reading gives well-typed exchanges or a ``TapeFormatError`` naming file,
offset and field, never another exception; with salvage it never raises. bench/tape_fuzz.py runs the
same idea for longer and prints counts.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowtap.recorder import (
    Exchange,
    Failure,
    FailureKind,
    Request,
    Response,
    TapeFormatError,
    TapeReader,
    Timing,
    _frames,
    exchange_to_wire,
)
from shadowtap.recorder.model import RequestDelta
from tests.recorder.tape_samples import make_exchange
from tests.recorder.test_reader import frame_offsets, write_records

FUZZ_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _lists(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _bases() -> list[list[Any]]:
    """Valid records that between them use every position: failures, nil primary, truncation marks."""
    full = make_exchange(1, method="POST")
    varied = Exchange(
        id="varied",
        started_at_ns=1_700_000_000_000_000_000,
        started_mono_ns=7,
        request=Request("GET", "/", (), b"", "https", "api", "2", truncated_from=10_000),
        primary=Failure(FailureKind.RESET, "peer reset"),
        shadows={"v2": Response(503, "Unavailable", ((b"Retry-After", b"1"),), b"", "2", truncated_from=9)},
        timings={"primary": Timing(1, None, None), "v2": Timing()},
        decisions={"v2": "mirrored", "v3": FailureKind.SAMPLED_OUT},
        request_deltas={
            "v2": RequestDelta(
                removed=(b"Cookie",),
                added=((b"X-Shadowtap-Shadow", b"1"),),
                replaced=((b"Authorization", b"redacted:credential"),),
                authority=("api", "v2:80"),
                query=(("token", "redacted:hmac:00"), ("sig", None)),
            )
        },
    )
    bare = Exchange(id="bare", started_at_ns=5, request=Request("OPTIONS", "*"))
    return [_lists(exchange_to_wire(e)) for e in (full, varied, bare)]


BASES = _bases()
_FIELD_NAMES = ["id", "started_at_ns", "started_mono_ns", "request", "primary", "shadows", "timings"]
_FIELD_NAMES += ["session", "connection_id", "client_addr", "decisions", "tags", "request_deltas"]


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every position in a record: the record itself, containers and leaves."""
    yield path
    if isinstance(node, list):
        for i, child in enumerate(node):
            yield from _paths(child, (*path, i))
    elif isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*path, key))


def _get(record: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        record = record[key]
    return record


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
_leaves = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | _text | st.binary(max_size=6)
# Any value msgpack encodes (map keys str or bin: msgpack itself refuses others when reading).
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text | st.binary(max_size=4), inner, max_size=3),
)


@st.composite
def mutated_records(draw: st.DrawFn) -> tuple[Any, tuple[Any, ...]]:
    """A valid record with one position changed, and that position."""
    record = copy.deepcopy(draw(st.sampled_from(BASES)))
    path = draw(st.sampled_from(list(_paths(record))))
    node = _get(record, path)
    choices = ["replace"]
    if isinstance(node, list):
        choices += ["cut", "as map"]
    if isinstance(node, dict) and node:
        choices += ["as array", "bin key"]
    how = draw(st.sampled_from(choices))
    if how == "replace":
        new: Any = draw(_values)
    elif how == "cut":
        new = node[: draw(st.integers(0, max(0, len(node) - 1)))]
    elif how == "as map":
        new = {str(i): v for i, v in enumerate(node)}
    elif how == "as array":
        new = [[k, v] for k, v in node.items()]
    else:
        new = {(k.encode() if i == 0 else k): v for i, (k, v) in enumerate(node.items())}
    if not path:
        return new, path
    _get(record, path[:-1])[path[-1]] = new
    return record, path


def _assert_well_typed(ex: Exchange) -> None:
    """What every Exchange read from a tape must hold, checked independently of the decoder."""

    def headers(value: Any) -> None:
        assert type(value) is tuple
        for header in value:
            assert type(header) is tuple and len(header) == 2
            assert type(header[0]) is bytes and type(header[1]) is bytes

    def optional_int(value: Any) -> None:
        assert value is None or type(value) is int

    def str_map(value: Mapping[Any, Any]) -> None:
        assert type(value) is dict and all(type(k) is str and type(v) is str for k, v in value.items())

    def outcome(value: Any) -> None:
        if type(value) is Failure:
            assert type(value.kind) is str and type(value.message) is str
            return
        assert type(value) is Response
        assert type(value.status) is int and type(value.reason) is str and type(value.body) is bytes
        assert type(value.http_version) is str
        headers(value.headers)
        optional_int(value.truncated_from)

    assert type(ex) is Exchange
    assert type(ex.id) is str and type(ex.started_at_ns) is int and type(ex.started_mono_ns) is int
    assert type(ex.session) is str and type(ex.connection_id) is str and type(ex.client_addr) is str
    req = ex.request
    assert type(req) is Request
    for text in (req.method, req.target, req.scheme, req.authority, req.http_version):
        assert type(text) is str
    assert type(req.body) is bytes
    headers(req.headers)
    optional_int(req.truncated_from)
    if ex.primary is not None:
        outcome(ex.primary)
    assert type(ex.shadows) is dict and all(type(k) is str for k in ex.shadows)
    for value in ex.shadows.values():
        outcome(value)
    assert type(ex.timings) is dict and all(type(k) is str for k in ex.timings)
    for timing in ex.timings.values():
        assert type(timing) is Timing
        for ns in (timing.sent_ns, timing.first_byte_ns, timing.done_ns):
            optional_int(ns)
    str_map(ex.decisions)
    str_map(ex.tags)
    assert type(ex.request_deltas) is dict and all(type(k) is str for k in ex.request_deltas)
    for delta in ex.request_deltas.values():
        assert type(delta) is RequestDelta
        assert type(delta.removed) is tuple and all(type(name) is bytes for name in delta.removed)
        headers(delta.added)
        headers(delta.replaced)
        assert delta.authority is None or (
            type(delta.authority) is tuple
            and len(delta.authority) == 2
            and all(type(h) is str for h in delta.authority)
        )
        assert type(delta.query) is tuple
        for name, value in delta.query:
            assert type(name) is str and (value is None or type(value) is str)


def _names_its_place(field: str, path: tuple[Any, ...]) -> bool:
    """Whether an error's ``field`` points into the top-level field that ``path`` changed (when the
    whole record was replaced, any field of it)."""
    if not path:
        return True
    root = _FIELD_NAMES[path[0]]
    return field == root or field.startswith((f"{root}.", f"{root}["))


@FUZZ_SETTINGS
@given(mutated=mutated_records(), zstd=st.booleans())
def test_a_mutated_record_reads_as_exchanges_or_a_named_format_error(
    mutated: tuple[Any, tuple[Any, ...]], zstd: bool
) -> None:
    record, path = mutated
    with tempfile.TemporaryDirectory() as work:
        tape = Path(work)
        records = [BASES[0], record, BASES[1]]
        segment = write_records(tape, records, zstd=zstd)
        bad_offset = _frames.SEGMENT_HEADER_SIZE if zstd else frame_offsets(segment)[1]
        try:
            exchanges = list(TapeReader(tape))
        except TapeFormatError as exc:
            assert (exc.path, exc.offset) == (str(segment), bad_offset)
            assert exc.field is not None, str(exc)
            assert _names_its_place(exc.field, path), (exc.field, path)
            assert "malformed exchange record" in exc.message
        else:
            # The mutation happened to fit the layout (a str for a str, an int for a nil timing).
            assert len(exchanges) == 3
            for ex in exchanges:
                _assert_well_typed(ex)

        reader = TapeReader(tape, salvage=True)
        salvaged = list(reader)
        for ex in salvaged:
            _assert_well_typed(ex)
        skipped = reader.report.skipped_ranges
        assert (len(salvaged), len(skipped)) in ((3, 0), (2, 1))
        if skipped:
            assert [ex.id for ex in salvaged] == [BASES[0][0], BASES[1][0]]
            assert skipped[0][1].offset == bad_offset


@pytest.mark.parametrize("base", range(len(BASES)))
def test_every_base_record_is_valid(base: int) -> None:
    with tempfile.TemporaryDirectory() as work:
        write_records(Path(work), [BASES[base]])
        (ex,) = TapeReader(work)
        _assert_well_typed(ex)
