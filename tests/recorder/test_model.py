"""The Exchange model and its msgpack mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest

from shadowtap.recorder import (
    Exchange,
    Failure,
    FailureKind,
    Request,
    Response,
    TapeFormatError,
    TapeReader,
    Timing,
    exchange_from_wire,
    exchange_to_wire,
    header_value,
    header_values,
)
from shadowtap.recorder.model import RequestDelta

#: A proxy tape written before request deltas were recorded (12-element exchange records).
OLD_PROXY_TAPE = Path(__file__).parents[1] / "fixtures" / "shadowtap" / "proxy-v1-before-deltas.stape"


def sample_exchange() -> Exchange:
    return Exchange(
        id="0123abcd",
        started_at_ns=1_700_000_000_000_000_000,
        started_mono_ns=42,
        request=Request(
            "POST",
            "/users/7?x=1&y=",
            ((b"Host", b"api"), (b"X-Dup", b"a"), (b"x-dup", b"b")),
            b"\x00\xffbody",
            authority="api",
        ),
        primary=Response(201, "Created", ((b"Content-Type", b"application/json"),), b'{"id":7}'),
        shadows={
            "v2": Response(500, "Oops", (), b"boom", truncated_from=10_000),
            "v3": Failure(FailureKind.TIMEOUT, "2s"),
        },
        timings={"primary": Timing(0, 1_000, 2_000), "v3": Timing(5, None, None)},
        session="s1",
        connection_id="c9",
        client_addr="127.0.0.1:5555",
        decisions={"v2": "mirrored", "v3": "mirrored", "v4": FailureKind.SAMPLED_OUT},
        tags={"source": "test"},
        request_deltas={
            "v2": RequestDelta(
                removed=(b"Authorization", b"Cookie"),
                added=((b"X-Shadowtap-Shadow", b"1"), (b"X-Api-Key", b"redacted:credential")),
                replaced=((b"X-Tenant", b"shadow"),),
                authority=("api", "v2.internal:8080"),
                query=(("token", "redacted:hmac:0011223344556677"), ("sig", None)),
            ),
            "v3": RequestDelta(added=((b"X-Shadowtap-Shadow", b"1"),)),
        },
    )


def test_round_trip_through_msgpack_is_exact() -> None:
    ex = sample_exchange()
    packed = msgpack.packb(exchange_to_wire(ex), use_bin_type=True)
    back = exchange_from_wire(msgpack.unpackb(packed, raw=False, use_list=False))
    assert back == ex
    assert back.request.headers == ex.request.headers


def test_lists_from_other_writers_are_normalised_to_tuples() -> None:
    ex = sample_exchange()
    back = exchange_from_wire(msgpack.unpackb(msgpack.packb(exchange_to_wire(ex)), raw=False))
    assert back == ex
    assert isinstance(back.request.headers, tuple)
    assert all(isinstance(h, tuple) for h in back.request.headers)


def test_request_helpers() -> None:
    req = sample_exchange().request
    assert req.path == "/users/7"
    assert req.query == "x=1&y="
    assert req.query_params() == [("x", "1"), ("y", "")]
    assert req.header(b"x-DUP") == b"a"
    assert header_values(req.headers, b"X-DUP") == [b"a", b"b"]
    assert header_value(req.headers, b"missing", b"d") == b"d"


def test_outcome_lookup_by_name() -> None:
    ex = sample_exchange()
    assert ex.response("primary") == ex.primary
    assert ex.response("v2") is not None and ex.response("v2").status == 500  # type: ignore[union-attr]
    assert ex.response("v3") is None
    assert isinstance(ex.outcome("v3"), Failure)
    assert ex.outcome("nope") is None
    assert ex.timings["primary"].duration_ns == 2_000
    assert ex.timings["v3"].duration_ns is None


@pytest.mark.parametrize("bad", [[], ["id"], [1, 2, 3, [], None, {}, {}, "", "", "", {}, {}], "x"])
def test_malformed_records_raise_tape_format_error(bad: object) -> None:
    with pytest.raises(TapeFormatError):
        exchange_from_wire(bad)


def test_unknown_outcome_tag_is_a_format_error() -> None:
    wire = exchange_to_wire(sample_exchange())
    wire[4] = [9, "?"]
    with pytest.raises(TapeFormatError, match="unknown outcome tag"):
        exchange_from_wire(wire)


def test_missing_trailing_fields_take_their_defaults() -> None:
    """An older writer (or another language's) may leave trailing fields out."""
    minimal = ["id1", 5, 6, ["GET", "/"]]
    ex = exchange_from_wire(minimal)
    assert ex == Exchange(id="id1", started_at_ns=5, started_mono_ns=6, request=Request("GET", "/"))
    assert ex.shadows == {} and ex.timings == {} and ex.decisions == {} and ex.tags == {}
    with_outcomes = ["id2", 5, 6, ["GET", "/", [[b"a", b"b"]]], [0, 204], {"v2": [1, "timeout"]}, {"v2": [1]}]
    ex2 = exchange_from_wire(with_outcomes)
    assert ex2.primary == Response(204)
    assert ex2.shadows == {"v2": Failure("timeout")}
    assert ex2.timings == {"v2": Timing(1)}
    assert ex2.request.headers == ((b"a", b"b"),)


def test_unknown_trailing_fields_from_a_newer_writer_are_ignored() -> None:
    ex = sample_exchange()
    wire = exchange_to_wire(ex)
    wire[3] = [*wire[3], "future-request-field"]
    wire[4] = [*wire[4], "future-response-field"]
    assert exchange_from_wire([*wire, "future-exchange-field"]) == ex


def test_too_short_records_are_format_errors() -> None:
    with pytest.raises(TapeFormatError, match="needs at least 4"):
        exchange_from_wire(["id", 1, 2])
    with pytest.raises(TapeFormatError, match="request record"):
        exchange_from_wire(["id", 1, 2, ["GET"]])


def test_decoded_objects_are_still_frozen() -> None:
    ex = exchange_from_wire(exchange_to_wire(sample_exchange()))
    with pytest.raises(AttributeError):
        ex.id = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ex.request.method = "POST"  # type: ignore[misc]


def test_arrays_may_be_lists_or_tuples_anywhere() -> None:
    """In-memory records (the proxy's joiner) and other writers give lists; msgpack gives tuples."""
    ex = sample_exchange()
    wire = exchange_to_wire(ex)
    wire[3][2] = [list(h) for h in wire[3][2]]
    wire[4][3] = list(wire[4][3])
    assert exchange_from_wire(wire) == ex
    assert exchange_from_wire(tuple(wire)) == ex


def test_maps_may_be_nil_but_not_empty_arrays() -> None:
    wire = exchange_to_wire(sample_exchange())
    wire[5:7] = [None, None]
    wire[10:12] = [None, None]
    ex = exchange_from_wire(wire)
    assert (ex.shadows, ex.timings, ex.decisions, ex.tags) == ({}, {}, {}, {})
    wire[11] = []
    with pytest.raises(TapeFormatError) as info:
        exchange_from_wire(wire)
    assert info.value.field == "tags"


@pytest.mark.parametrize(
    ("position", "value", "field", "found"),
    [
        ((3, 2, 1, 1), "a", "request.headers[1][1]", "found a str"),
        ((3, 2, 1), (b"X-Dup", b"a", b"b"), "request.headers[1]", "found an array of 3"),
        ((4, 1), True, "primary.status", "found a boolean"),
        ((4, 1), 201.0, "primary.status", "found a float"),
        ((4, 4), None, "primary.body", "found nil"),
        ((5, "v3", 2), b"2s", "shadows['v3'].message", "found a bin"),
        ((6, "v3", 1), "1000", "timings['v3'].first_byte_ns", "found a str"),
        ((10, "v4"), 0, "decisions['v4']", "found an int"),
        ((1,), -1.5, "started_at_ns", "found a float"),
        ((1,), 2**63, "started_at_ns", f"found {2**63}"),
        ((12, "v2", 0, 1), "Cookie", "request_deltas['v2'].removed[1]", "found a str"),
        ((12, "v2", 1, 0, 1), 1, "request_deltas['v2'].added[0][1]", "found an int"),
        ((12, "v2", 3), ["api"], "request_deltas['v2'].authority", "found an array of 1"),
        ((12, "v2", 3, 1), b"v2", "request_deltas['v2'].authority[1]", "found a bin"),
        ((12, "v2", 4, 1, 1), 0, "request_deltas['v2'].query[1][1]", "found an int"),
        ((12, "v3"), {}, "request_deltas['v3']", "found a map"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_by_its_field(
    position: tuple[object, ...], value: object, field: str, found: str
) -> None:
    wire = exchange_to_wire(sample_exchange())
    wire[3] = [*wire[3][:2], [list(h) for h in wire[3][2]], *wire[3][3:]]
    target: Any = wire
    for key in position[:-1]:
        target[key] = list(target[key]) if isinstance(target[key], tuple) else target[key]
        target = target[key]
    target[position[-1]] = value
    with pytest.raises(TapeFormatError) as info:
        exchange_from_wire(wire)
    assert info.value.field == field
    assert info.value.message.startswith("malformed exchange record: expected ")
    assert info.value.message.endswith(found)
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_a_shadow_name_that_is_not_a_string_is_named() -> None:
    wire = exchange_to_wire(sample_exchange())
    wire[5] = {b"v2": wire[5]["v2"]}
    with pytest.raises(TapeFormatError) as info:
        exchange_from_wire(wire)
    assert info.value.field == "shadows[b'v2']"


def test_request_deltas_are_written_only_when_there_are_some() -> None:
    ex = sample_exchange()
    wire = exchange_to_wire(ex)
    assert len(wire) == 13 and set(wire[12]) == {"v2", "v3"}
    assert wire[12]["v2"][3] == ["api", "v2.internal:8080"]
    bare = Exchange(id="x", started_at_ns=1, request=Request("GET", "/"))
    assert exchange_to_wire(bare)[12] is None
    assert exchange_from_wire(exchange_to_wire(bare)).request_deltas == {}


def test_records_from_before_request_deltas_read_without_them() -> None:
    """Version-1 writers before request deltas wrote 12 elements: no delta means none was recorded."""
    ex = sample_exchange()
    old = exchange_to_wire(ex)[:12]
    back = exchange_from_wire(old)
    assert back.request_deltas == {}
    assert back.shadows == ex.shadows and back.decisions == ex.decisions and back.tags == ex.tags


def test_a_delta_may_leave_out_its_trailing_fields() -> None:
    wire = exchange_to_wire(sample_exchange())
    wire[12] = {"v2": [[b"Cookie"], [], []]}
    assert exchange_from_wire(wire).request_deltas == {"v2": RequestDelta(removed=(b"Cookie",))}
    wire[12] = {"v2": [[b"Cookie"], []]}
    with pytest.raises(TapeFormatError) as info:
        exchange_from_wire(wire)
    assert info.value.field == "request_deltas['v2']"
    assert "request delta record has 2 fields, needs at least 3" in info.value.message


def test_a_proxy_tape_from_before_request_deltas_is_read_whole() -> None:
    """A real tape the proxy wrote before deltas existed (tests/fixtures/README.md): every exchange,
    its shadow outcomes and decisions, and no deltas."""
    reader = TapeReader(OLD_PROXY_TAPE)
    exchanges = list(reader)
    assert [ex.request.target for ex in exchanges] == [
        "/get?page=1", "/headers", "/absolute-redirect/1", "/post", "/status/503",
    ]  # fmt: skip
    assert reader.report.segments[0].version == 1
    assert all(ex.request_deltas == {} for ex in exchanges)
    # Read through the v1 -> v2 migration: HTTP/1.1, no trailers, no gRPC messages.
    outcomes = [o for ex in exchanges for o in (ex.primary, *ex.shadows.values()) if isinstance(o, Response)]
    assert {ex.request.http_version for ex in exchanges} == {"1.1"} == {o.http_version for o in outcomes}
    assert all(ex.request.trailers == () == ex.request.messages for ex in exchanges)
    assert all(o.trailers == () == o.messages for o in outcomes)
    assert [ex.decisions["v2"] for ex in exchanges] == ["mirrored"] * 3 + ["method-not-allowed", "mirrored"]
    assert [getattr(ex.shadows.get("v2"), "status", None) for ex in exchanges] == [200, 200, 302, None, 503]
    assert exchanges[1].request.header(b"Cookie", b"").startswith(b"sid=redacted:hmac:")


def grpc_exchange() -> Exchange:
    from shadowtap.recorder.model import StreamMessage

    return Exchange(
        id="grpc-1",
        started_at_ns=1_700_000_000_000_000_000,
        request=Request(
            "POST",
            "/shop.Catalog/GetProduct",
            ((b":authority", b"shop"), (b"content-type", b"application/grpc"), (b"te", b"trailers")),
            b"\x00\x00\x00\x00\x04\x0a\x02p1",
            http_version="2",
            messages=(StreamMessage(0, 4, 1_500),),
        ),
        primary=Response(
            200,
            headers=((b"content-type", b"application/grpc"),),
            body=b"\x00\x00\x00\x00\x02\x08\x01\x01\x00\x00\x00\x02\x08\x02",
            http_version="2",
            trailers=((b"grpc-status", b"0"), (b"grpc-message", b"")),
            messages=(StreamMessage(0, 2, 9_000), StreamMessage(1, 2, None)),
        ),
        shadows={"v2": Response(200, http_version="2", trailers=((b"grpc-status", b"5"),))},
    )


def test_http2_and_grpc_fields_round_trip_through_msgpack() -> None:
    ex = grpc_exchange()
    wire = msgpack.unpackb(msgpack.packb(exchange_to_wire(ex), use_bin_type=True), raw=False, use_list=False)
    back = exchange_from_wire(wire)
    assert back == ex
    assert back.primary is not None and isinstance(back.primary, Response)
    assert back.primary.messages[1].compressed and not back.primary.messages[0].compressed
    assert back.request.http_version == "2" and back.request.trailers == ()
    # The layout is docs/tape-format.md's: request 8 trailers, 9 messages; response 7 and 8 after the tag.
    assert len(wire[3]) == 10 and wire[3][9] == ((0, 4, 1_500),)
    assert wire[4][7] == ((b"grpc-status", b"0"), (b"grpc-message", b""))


def test_records_without_trailers_and_messages_read_as_empty() -> None:
    wire = exchange_to_wire(grpc_exchange())
    wire[3] = wire[3][:8]
    wire[4] = wire[4][:7]
    ex = exchange_from_wire(wire)
    assert ex.request.messages == () and ex.request.trailers == ()
    assert isinstance(ex.primary, Response) and ex.primary.trailers == () and ex.primary.messages == ()
    # A message entry may leave out its time.
    wire = exchange_to_wire(grpc_exchange())
    wire[3][9] = [[0, 4]]
    assert exchange_from_wire(wire).request.messages[0].at_ns is None


@pytest.mark.parametrize(
    ("where", "value", "field", "expected"),
    [
        ("request", 8, "request.trailers", "expected an array of [name, value] headers"),
        ("request", [[b"grpc-status", "0"]], "request.trailers[0][1]", "expected a bin"),
        ("request", "x", "request.messages", "expected an array of [flags, length, at_ns] messages"),
        ("request", [[0, "4", 5]], "request.messages[0].length", "expected an int"),
        ("request", [[0]], "request.messages[0]", "message record has 1 fields, needs at least 2"),
        ("primary", [[0, 2, 1.5]], "primary.messages[0].at_ns", "expected an int or nil"),
    ],
)
def test_bad_trailers_and_messages_are_named(where: str, value: Any, field: str, expected: str) -> None:
    wire = exchange_to_wire(grpc_exchange())
    if where == "request":
        wire[3][8 if field.startswith("request.trailers") else 9] = value
    else:
        wire[4][8] = value
    with pytest.raises(TapeFormatError) as info:
        exchange_from_wire(wire)
    assert info.value.field == field
    assert expected in info.value.message


def test_a_version_1_record_migrates_without_reading_unknown_elements_as_trailers() -> None:
    from shadowtap.recorder import _frames

    wire = exchange_to_wire(sample_exchange())
    wire[3] = [*wire[3][:8], "a v1 writer's extra", 7]
    wire[4] = [*wire[4][:7], {"extra": 1}]
    wire[5]["v2"] = [*wire[5]["v2"][:7], None, None]
    migrated = _frames.MIGRATIONS[1](tuple(wire))
    ex = exchange_from_wire(migrated)
    assert ex.request.trailers == () and ex.request.messages == ()
    assert ex.request == sample_exchange().request
    assert ex.primary == sample_exchange().primary and ex.shadows["v2"] == sample_exchange().shadows["v2"]
    # A record without such elements is handed back as it is (no copy per record read).
    plain = tuple(exchange_to_wire(sample_exchange()))
    shadows = {name: o[:7] for name, o in plain[5].items()}
    plain = (*plain[:3], plain[3][:8], plain[4][:7], shadows, *plain[6:])
    assert _frames.MIGRATIONS[1](plain) is plain


def test_the_proxys_positional_response_builder_still_takes_six_fields() -> None:
    from shadowtap.recorder.model import new_response

    response = new_response(200, "OK", ((b"a", b"b"),), b"x", "2", None)
    assert response == Response(200, "OK", ((b"a", b"b"),), b"x", "2")
    assert response.trailers == () and response.messages == ()
