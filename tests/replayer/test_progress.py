"""Progress on stderr: plain lines when not a terminal, rate-limited, never on stdout."""

from __future__ import annotations

import io

from shadowtap.replayer.progress import ProgressDisplay, bar_text, eta_s
from shadowtap.replayer.runner import Progress


def snapshot(done: int) -> Progress:
    return Progress(
        elapsed_s=done / 100, planned=done, done=done, errors=1, in_flight=3, rate_per_s=99.0, p99_ms=12.5, held_back=0
    )


def test_plain_lines_are_rate_limited_and_the_last_is_printed_at_exit() -> None:
    stream = io.StringIO()
    with ProgressDisplay(stream=stream, plain_interval_s=3600) as display:
        for done in (10, 20, 30):
            display.update(snapshot(done))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the first update, then the final state at exit
    assert "sent        10" in lines[0] and "sent        30" in lines[1]
    assert "p99     12.5 ms" in lines[1] and "errors       1" in lines[1]


def test_disabled_prints_nothing_but_keeps_the_last_snapshot() -> None:
    stream = io.StringIO()
    with ProgressDisplay(enabled=False, stream=stream) as display:
        display.update(snapshot(5))
    assert stream.getvalue() == "" and display.last is not None and display.last.done == 5


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_live_bar_with_rate_errors_and_p99() -> None:
    stream = FakeTerminal()
    with ProgressDisplay(stream=stream, total_s=10.0) as display:
        display.update(snapshot(500))
    text = stream.getvalue()
    assert "replay" in text and "500 sent" in text and "99/s" in text and "p99 12.5 ms" in text


def test_with_the_plan_size_the_bar_counts_requests_and_shows_an_eta() -> None:
    stream = FakeTerminal()
    with ProgressDisplay(stream=stream, total_s=10.0, total_requests=1_000) as display:
        display.update(snapshot(500))
    text = stream.getvalue()
    # 500 left at 99/s is 5.05 s, a little after the schedule's end (10 s, 5 s in).
    assert "500/1,000 sent  ETA 0:00:05" in text and "p99 12.5 ms" in text


def test_eta_is_the_later_of_the_schedule_and_the_rate() -> None:
    half = Progress(
        elapsed_s=10.0, planned=50, done=50, errors=0, in_flight=0, rate_per_s=10.0, p99_ms=1.0, held_back=0
    )
    assert eta_s(half, 100, schedule_s=20.0) == 10.0  # on schedule: the schedule's end
    assert eta_s(half, 100, schedule_s=12.0) == 5.0  # behind: 50 left at 10/s
    assert eta_s(half, 100, schedule_s=None) == 5.0  # --speed 0 / --rate: the rate alone
    assert eta_s(half, 50, schedule_s=20.0) == 0.0  # all sent
    stalled = Progress(
        elapsed_s=10.0, planned=50, done=50, errors=0, in_flight=0, rate_per_s=0.0, p99_ms=1.0, held_back=0
    )
    assert eta_s(stalled, 100, schedule_s=None) is None  # no telling yet
    assert "ETA -:--:--" in bar_text(stalled, 100)
    assert bar_text(stalled).startswith("50 sent  0/s")  # size unknown: no total, no ETA
