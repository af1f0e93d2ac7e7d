"""gRPC answers in the replay's stats and results, without sockets: which count as errors and under
which name, how they are described, how the counts are ordered, how a client stream's messages are
spaced, and how an answer's message times move to the results tape's time base."""

from __future__ import annotations

from collections import Counter

from shadowtap.recorder import REPLAY, Request, Response
from shadowtap.recorder.model import StreamMessage
from shadowtap.replayer.h2transport import message_offsets
from shadowtap.replayer.plan import PlannedRequest
from shadowtap.replayer.result import replay_exchange
from shadowtap.replayer.stats import ReplayStats, error_counts
from shadowtap.replayer.transport import describe_outcome, error_class
from tests.replayer.tapes import MS, make_exchange

GRPC = ((b"content-type", b"application/grpc"),)


def answer(trailers: tuple[tuple[bytes, bytes], ...] = (), headers: tuple[tuple[bytes, bytes], ...] = GRPC,
           status: int = 200, version: str = "2") -> Response:  # fmt: skip
    return Response(status, "", headers, b"", http_version=version, trailers=trailers)


def test_a_grpc_status_other_than_ok_is_an_error_named_by_its_status() -> None:
    assert error_class(answer(((b"grpc-status", b"0"),))) is None
    assert error_class(answer(((b"grpc-status", b"5"), (b"grpc-message", b"no product 7")))) == "grpc-NOT_FOUND"
    # Trailers-only: the status in the one HEADERS frame.
    assert error_class(answer(headers=(*GRPC, (b"grpc-status", b"14")))) == "grpc-UNAVAILABLE"
    # An unknown code keeps its number; a gRPC answer without any status was cut short.
    assert error_class(answer(((b"grpc-status", b"42"),))) == "grpc-42"
    assert error_class(answer()) == "grpc-INTERNAL"
    # Not gRPC, or not HTTP/2: the HTTP rules alone.
    assert error_class(answer(headers=((b"content-type", b"text/plain"),))) is None
    assert error_class(answer(((b"grpc-status", b"5"),), version="1.1")) is None
    assert error_class(answer(((b"grpc-status", b"0"),), status=503)) == "5xx"


def test_a_grpc_error_example_says_its_status_and_message() -> None:
    failed = answer(((b"grpc-status", b"5"), (b"grpc-message", b"no product 7")))
    assert describe_outcome(failed) == "200 NOT_FOUND: no product 7"
    assert describe_outcome(answer(headers=(*GRPC, (b"grpc-status", b"14")))) == "200 UNAVAILABLE"
    assert describe_outcome(Response(503, "Service Unavailable")) == "503 Service Unavailable"


def test_grpc_errors_are_counted_after_the_http_classes() -> None:
    stats = ReplayStats()
    for status, error in ((200, "grpc-UNAVAILABLE"), (200, "grpc-NOT_FOUND"), (200, "grpc-NOT_FOUND"), (200, None),
                          (None, "timeout"), (503, None)):  # fmt: skip
        stats.record_done("POST /shop.Catalog/GetProduct", t0_ns=0, due_ns=0, released_ns=0, sent_ns=0,
                          done_ns=MS, status=status, error=error)  # fmt: skip
    summary = stats.summary()
    assert summary.errors == {"timeout": 1, "5xx": 1, "grpc-NOT_FOUND": 2, "grpc-UNAVAILABLE": 1}
    assert summary.error_rate == 5 / 6
    assert stats.overall.statuses[200] == 4  # the HTTP status is still counted as it came
    assert error_counts(Counter({"other": 0, "grpc-ABORTED": 1})) == {"grpc-ABORTED": 1}
    decoded = ReplayStats.decode(stats.encode()).summary()
    assert decoded.errors == summary.errors


def messages(*at_ms: int | None, length: int = 3) -> tuple[StreamMessage, ...]:
    return tuple(StreamMessage(0, length, None if at is None else at * MS) for at in at_ms)


def test_a_client_stream_keeps_its_recorded_gaps_at_the_replay_speed() -> None:
    three = messages(1, 201, 401)
    assert message_offsets(three, 24, 1.0, 10**12) == [(8, 1 * MS), (16, 201 * MS), (24, 401 * MS)]
    assert message_offsets(three, 24, 2.0, 10**12) == [(8, MS // 2), (16, 100 * MS + MS // 2), (24, 200 * MS + MS // 2)]
    # Each gap is cut to the bound (a stream idle for an hour does not hold a replay for an hour).
    assert message_offsets(messages(0, 3_600_000, 3_600_010), 24, 1.0, 50 * MS) == [
        (8, 0),
        (16, 50 * MS),
        (24, 60 * MS),
    ]
    # Times out of order (clock steps in a recording) never send a message before the one before.
    assert message_offsets(messages(10, 5, 20), 24, 1.0, 10**12) == [(8, 10 * MS), (16, 10 * MS), (24, 20 * MS)]


def test_a_body_goes_at_once_when_its_messages_cannot_be_paced() -> None:
    assert message_offsets(messages(1), 8, 1.0, 10**12) is None  # unary
    assert message_offsets(messages(1, 2), 16, 0.0, 10**12) is None  # --speed 0
    assert message_offsets(messages(1, None), 16, 1.0, 10**12) is None  # an import without timing
    assert message_offsets(messages(1, 2), 15, 1.0, 10**12) is None  # cut at a cap, or rewritten


def test_an_answers_message_times_move_to_the_due_time_base() -> None:
    source = make_exchange(1, 0)
    planned = PlannedRequest(0, 0, "s", 0, 0, 0, "POST", "/x", (), b"", "POST /x", source)
    outcome = Response(200, "", GRPC, b"", http_version="2", messages=messages(5, None, 9))
    due_ns, sent_ns = 1_000 * MS, 1_002 * MS
    ex = replay_exchange(planned, due_ns, sent_ns, sent_ns + 4 * MS, sent_ns + 10 * MS, outcome, 0)
    replayed = ex.shadows[REPLAY]
    assert isinstance(replayed, Response)
    assert [m.at_ns for m in replayed.messages] == [7 * MS, None, 11 * MS]
    assert ex.request == Request("GET", "/r/1", ((b"X-Seq", b"1"),), b"")
