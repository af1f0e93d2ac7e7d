"""`shadowtap replay --locust` with exchanges recorded over HTTP/2 (gRPC calls) on the tape: Locust
workers send over HTTP/1.1 only, so such a plan is refused in one line that names the exchanges and
the command replaying them over HTTP/2, before any Locust process starts; the same tape without them
(filtered out) runs on a real Locust master and workers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from shadowtap.recorder import Exchange, Request, Response
from tests.replayer.tapes import make_exchange
from tests.shadowtap.test_cmd_replay_functional import Target, shadowtap, write_tape

GRPC_HEADERS = ((b"content-type", b"application/grpc"), (b"te", b"trailers"))


def _grpc_call(i: int, at_ms: int) -> Exchange:
    """A unary gRPC call recorded over HTTP/2 (a POST, as every gRPC call is)."""
    base = make_exchange(i, at_ms)
    return replace(
        base,
        id=f"grpc{i}",
        request=Request(
            "POST", "/shop.Catalog/GetProduct", GRPC_HEADERS, b"\x00\x00\x00\x00\x04\n\x02p1", http_version="2"
        ),
        primary=Response(
            200,
            "",
            ((b"content-type", b"application/grpc"),),
            b"",
            http_version="2",
            trailers=((b"grpc-status", b"0"),),
        ),
    )


def _tape(directory: Path) -> Path:
    exchanges = [make_exchange(i, i * 2) for i in range(10)] + [_grpc_call(i, 25 + i) for i in range(7)]
    return write_tape(directory, sorted(exchanges, key=lambda ex: ex.started_at_ns))


async def test_a_plan_with_http2_exchanges_is_refused_naming_them(tmp_path: Path) -> None:
    tape = _tape(tmp_path / "tape")
    async with Target() as target:
        code, _out, err = await shadowtap(
            str(tape), "--target", target.url, "--allow-writes", "--locust", "--locust-workers", "1",
            "--locust-timeout", "60", "--no-progress",
        )  # fmt: skip
        job_code, _, job_err = await shadowtap(
            str(tape), "--target", target.url, "--allow-writes", "--locust-job-out", str(tmp_path / "job.json")
        )
    assert code == 2, err
    refusal = err.strip().splitlines()[-1]
    assert "the Locust mode sends over HTTP/1.1 only, and 7 planned exchange(s) were recorded over HTTP/2" in refusal
    assert "grpc0 (POST /shop.Catalog/GetProduct)" in refusal and "and 2 more" in refusal
    assert f"shadowtap replay {tape} --target {target.url} --workers N" in refusal
    assert target.seen == []  # refused before any Locust process started
    assert job_code == 2 and "recorded over HTTP/2" in job_err
    assert not (tmp_path / "job.json").exists()


async def test_without_the_http2_exchanges_the_same_tape_runs_on_locust(tmp_path: Path) -> None:
    tape = _tape(tmp_path / "tape")
    async with Target() as target:
        # The gRPC calls are POSTs: left out without --allow-writes, the rest replays on Locust.
        code, _out, err = await shadowtap(
            str(tape), "--target", target.url, "--locust", "--locust-workers", "2", "--locust-timeout", "60",
            "--json", str(tmp_path / "out.json"), "--no-progress",
        )  # fmt: skip
    assert code == 0, err
    assert sorted(path for _, path, _ in target.seen) == sorted(f"/r/{i}" for i in range(10))
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["summary"]["requests"] == 10 and document["workers"] == 2
