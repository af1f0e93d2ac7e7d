"""`shadowtap replay`: replay tapes against a target as an honest open-loop load test.

This module only turns flags into the replayer's settings, runs the job (in this process, in
``--workers`` processes, or on Locust with ``--locust``) and writes the outputs. It must never
print a traceback for a user mistake, and never skip writing the results it has when a tape turns
out to be corrupt half-way: outputs are written first, then the error is raised (exit 2). Exit 1
means an SLO gate failed (the error-rate gate is on unless turned off: a target that fails every
request is never a pass), 130 an interrupt (after the outputs were written).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING, Any, Final

from shadowtap.commands._options import NO_REDACTION, PATH_REGEX, deprecated_option, deprecated_switch

if TYPE_CHECKING:
    from shadowtap.replayer.job import ReplayJob
    from shadowtap.replayer.plan import SchedulePreview
    from shadowtap.replayer.report import SloGates
    from shadowtap.replayer.result import JobResult

NAME = "replay"
HELP = "replay tapes against a target as open-loop load; record what came back for `shadowtap diff`"
ORDER = 30

EXIT_SLO_FAILED = 1
EXIT_INTERRUPTED = 130

_EPILOG = """\
examples:
  shadowtap replay tape/ --target http://127.0.0.1:9000 --speed 2 --results replayed/
  shadowtap replay tape/ --target http://staging:8080 --rate 500 --clones 3 --clone-id header:X-User-Id \\
      --duration 60 --loop --header 'Authorization: Bearer ${STAGING_TOKEN}' --json out.json --html out.html \\
      --max-error-rate 0.01 --max-p99-ms 250
See docs/replay.md for every flag, the JSON format and multi-machine replay with Locust.
"""


#: Seconds become int nanoseconds in the plan and on the monotonic clock; 64 bits hold ~292 years.
_MAX_SECONDS: Final = 9_223_372_036.0
#: Below this a speed factor or rate stretches the gap between two requests beyond that clock.
_MIN_PACE: Final = 1e-9


def _finite(text: str) -> float:
    """An argparse type: a float, but never inf or nan (which no check downstream catches whole)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _seconds(text: str) -> float:
    """An argparse type for a time in seconds; the sign is the replayer's to check."""
    value = _finite(text)
    if abs(value) > _MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"out of range: at most {_MAX_SECONDS:.0f} s, got {text!r}")
    return value


def _pace(text: str) -> float:
    """An argparse type for --speed and --rate: finite, and not so small the schedule overflows."""
    value = _finite(text)
    if 0 < value < _MIN_PACE:
        raise argparse.ArgumentTypeError(f"too slow: at least {_MIN_PACE:g} (or 0 for --speed), got {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _EPILOG
    parser.add_argument("tapes", nargs="+", metavar="TAPE", help="tape directories or segment files (merged by time)")
    parser.add_argument(
        "--target", required=True, help="base URL to send to, e.g. http://127.0.0.1:9000 or h2c://127.0.0.1:50051"
    )

    g = parser.add_argument_group("scaling")
    pace = g.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=_pace, default=1.0, help="time factor: 2 = twice as fast, 0 = no waiting")
    pace.add_argument("--rate", type=_pace, help="fixed arrivals per second, in recorded order")
    g.add_argument("--clones", type=int, default=1, help="copies of every session (default 1)")
    g.add_argument("--clone-offset", type=_seconds, default=0.5, metavar="S", help="delay between clones (s)")
    g.add_argument("--duration", type=_seconds, metavar="S", help="stop scheduling after S seconds")
    g.add_argument("--loop", action="store_true", help="replay the tape again until --duration")
    g.add_argument("--ramp", type=_seconds, default=0.0, metavar="S", help="grow the rate linearly over S seconds")
    g.add_argument(
        "--max-gap",
        type=_seconds,
        metavar="S",
        help="cut every idle stretch of the recorded schedule (and think time in a session) to at most S "
        "seconds of replay, after --speed",
    )

    g = parser.add_argument_group("sessions and filters")
    g.add_argument(
        "--session-key",
        default="auto",
        metavar="KIND[:NAME]",
        help="auto, recorded, connection, client, none, header:NAME, cookie:NAME, query:NAME (default auto)",
    )
    g.add_argument("--method", action="append", default=[], help="only these methods (repeatable)")
    g.add_argument(PATH_REGEX, metavar="REGEX", help="only requests whose path matches REGEX (searched, no query)")
    g.add_argument("--endpoint", action="append", default=[], metavar="GLOB", help="e.g. 'GET /users/{id}' (repeat)")
    g.add_argument("--from-offset", type=_seconds, metavar="S", help="skip the tape's first S seconds")
    g.add_argument("--to-offset", type=_seconds, metavar="S", help="stop at S seconds into the tape")
    # Elsewhere --since/--until are wall-clock times; here they were seconds into the tape.
    for old, new in (("--since", "--from-offset"), ("--until", "--to-offset")):
        deprecated_option(g, old, new, new.lstrip("-").replace("-", "_"), note="seconds into the tape",
                          type=_seconds, metavar="S")  # fmt: skip
    g.add_argument("--sample-percent", type=_finite, default=100.0, help="replay this share of sessions")
    g.add_argument("--allow-writes", action="store_true", help="also replay methods other than GET/HEAD/OPTIONS/TRACE")
    g.add_argument("--salvage", action="store_true", help="skip corrupt frames in the tapes instead of stopping")

    g = parser.add_argument_group("rewrites")
    g.add_argument("--host", help="Host header to send (default: the target's); ${VAR} from the environment")
    g.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="set a header; ${VAR} from env"
    )
    g.add_argument("--remove-header", action="append", default=[], metavar="NAME", help="drop a recorded header")
    g.add_argument(
        "--rewrite-path", nargs=2, action="append", default=[], metavar=("REGEX", "REPL"), help="re.sub on path+query"
    )
    g.add_argument(
        "--clone-id", action="append", default=[], metavar="KIND:NAME", help="header/cookie/query/json id per clone"
    )
    g.add_argument("--clone-id-template", default="{value}-{clone}", help="default '{value}-{clone}'")

    g = parser.add_argument_group("client")
    g.add_argument("--connections", type=int, default=256, help="connection pool size (default 256)")
    g.add_argument("--max-in-flight", type=int, help="cap on concurrent requests (default: --connections)")
    g.add_argument("--timeout", type=_seconds, default=30.0, metavar="S", help="per-request timeout (default 30)")
    g.add_argument("--connect-timeout", type=_seconds, default=5.0, metavar="S", help="connect timeout (default 5)")
    g.add_argument(
        "--client",
        choices=["auto", "raw", "aiohttp"],
        default="auto",
        help="HTTP client: auto = the fast raw HTTP/1.1 client for http://, aiohttp for https://",
    )
    version = g.add_mutually_exclusive_group()
    version.add_argument(
        "--http2",
        action="store_true",
        help="send every request over HTTP/2 (h2c for http://, ALPN h2 for https://); by default only "
        "the exchanges recorded over HTTP/2 are, and all of them for an h2c:// target",
    )
    version.add_argument("--http1", action="store_true", help="send every request over HTTP/1.1")
    g.add_argument(
        "--h2-connections", type=int, default=4, metavar="N", help="HTTP/2 connections to multiplex over (default 4)"
    )
    g.add_argument("--workers", type=int, default=1, help="processes to shard sessions over (default 1)")

    g = parser.add_argument_group("outputs and gates")
    g.add_argument(
        "--results",
        metavar="TAPE",
        help="write recorded + replayed exchanges to this tape directory or s3://bucket/prefix",
    )
    g.add_argument(NO_REDACTION, action="store_true", help="keep secrets in the results tape (redacted by default)")
    deprecated_switch(g, "--no-redact-results", NO_REDACTION, "no_redaction")
    g.add_argument("--json", metavar="OUT", help="write JSON results ('-' for stdout)")
    g.add_argument("--html", metavar="OUT", help="write a self-contained HTML report")
    g.add_argument(
        "--max-error-rate",
        type=_finite,
        metavar="F",
        # The default is shadowtap.replayer.report.DEFAULT_MAX_ERROR_RATE (not imported here: --help stays fast).
        help="fail (exit 1) above this fraction of failed requests (default 0.01; 1 = off)",
    )
    g.add_argument("--max-p99-ms", type=_finite, metavar="MS", help="fail above this p99 response time")
    g.add_argument("--max-start-lag-ms", type=_finite, metavar="MS", help="fail above this p99 start lag")
    g.add_argument("--no-progress", action="store_true", help="no live progress on stderr")

    g = parser.add_argument_group("distributed (Locust)")
    g.add_argument("--locust", action="store_true", help="run on a local Locust master and --locust-workers workers")
    g.add_argument("--locust-workers", type=int, default=2, help="Locust worker processes (default 2)")
    g.add_argument(
        "--locust-timeout", type=_seconds, default=600.0, metavar="S", help="give up after S s (default 600)"
    )
    g.add_argument(
        "--locust-job-out",
        metavar="FILE",
        help="only write the Locust job for these flags (for a multi-machine run, see docs/replay.md) and exit",
    )


def _parse_header(spec: str) -> tuple[str, str]:
    from shadowtap.recorder.errors import ConfigError
    from shadowtap.replayer.plan import check_header_name, check_header_text

    name, sep, value = spec.partition(":")
    if not sep or not name.strip():
        raise ConfigError(f"{spec!r} is not 'NAME: VALUE'", field="header")
    check_header_name(name.strip(), "--header")
    check_header_text(value, "--header")
    return name.strip(), value.strip()


def _checked_host(value: str) -> str:
    """``--host`` as a Host header: ``host[:port]``, a non-ASCII name in IDNA form.

    A value with ``${VAR}`` is only checked for what would break the head; the plan expands it.
    """
    from shadowtap.proxy.forward import check_host
    from shadowtap.recorder.errors import ConfigError
    from shadowtap.replayer.plan import check_header_text

    check_header_text(value, "--host")
    if "${" in value:
        return value
    if value.startswith("["):
        host, sep, port = value[1:].partition("]")
        if not sep or ":" not in host:
            raise ConfigError(f"only an IPv6 address goes in brackets, and it must: {value!r}", field="--host")
    else:
        host, colon, digits = value.partition(":")
        port = colon + digits
    if port:
        digits = port.removeprefix(":")
        if not port.startswith(":") or not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) <= 65535:
            raise ConfigError(f"port must be within 1..65535: {value!r}", field="--host")
    check_host(host, field="--host", shown=value)
    if host.isascii():
        return value
    return host.encode("idna").decode("ascii") + port


def _check_rewrites(args: argparse.Namespace) -> None:
    """The rewrite flags' literal text, before any request is built from it (the plan checks what
    ``${VAR}`` brings in)."""
    from shadowtap.recorder.errors import ConfigError
    from shadowtap.replayer.plan import check_header_name, check_header_text

    for name in args.remove_header:
        check_header_name(name, "--remove-header")
    for _, replacement in args.rewrite_path:
        # The result is the request target: ASCII with no spaces, or the request line splits.
        if not replacement.isascii() or any(c <= " " or c == "\x7f" for c in replacement):
            raise ConfigError(
                f"the replacement must be ASCII without spaces or control characters (percent-encode them): "
                f"{replacement!r}",
                field="--rewrite-path",
            )
    # Clone ids go into headers and cookies as Latin-1; a JSON field may hold any text.
    in_head = any(spec.startswith(("header:", "cookie:")) for spec in args.clone_id)
    check_header_text(args.clone_id_template, "--clone-id-template", latin1=in_head)


_FILTER_FLAGS: Final = {"path-regex": PATH_REGEX, "until": "--to-offset"}


def build_job(args: argparse.Namespace) -> ReplayJob:
    """The job the flags describe; every bad value raises ``ConfigError`` naming the flag."""
    from shadowtap.proxy.forward import parse_primary
    from shadowtap.recorder.errors import ConfigError
    from shadowtap.replayer.job import ReplayJob
    from shadowtap.replayer.plan import Filters, PlanOptions, Rewrites, Scaling, SessionKey
    from shadowtap.replayer.runner import RunnerSettings
    from shadowtap.replayer.transport import ClientSettings

    if args.workers < 1:
        raise ConfigError(f"must be >= 1, got {args.workers}", field="workers")
    if args.http1 and args.target.lower().startswith("h2c://"):
        raise ConfigError(f"an h2c:// target speaks HTTP/2 only: {args.target!r}", field="--http1")
    # The proxy's URL check, so a target is refused here (one line) rather than by a URL parser
    # deep in a transport (a traceback), or accepted with a space that would split the request line.
    parse_primary(args.target, field="--target")
    _check_rewrites(args)
    try:
        filters = Filters(
            methods=frozenset(args.method),
            path_regex=args.path_regex,
            endpoints=tuple(args.endpoint),
            since_s=args.from_offset,
            until_s=args.to_offset,
            sample_percent=args.sample_percent,
            allow_writes=args.allow_writes,
        )
    except ConfigError as exc:
        # Name the flag the user typed, not the plan's field.
        flag = _FILTER_FLAGS.get(exc.field or "")
        if flag is None:
            raise
        raise ConfigError(exc.message, field=flag) from exc
    plan = PlanOptions(
        session_key=SessionKey.parse(args.session_key),
        filters=filters,
        rewrites=Rewrites(
            host=None if args.host is None else _checked_host(args.host),
            set_headers=tuple(_parse_header(h) for h in args.header),
            remove_headers=tuple(args.remove_header),
            path_subs=tuple((p, r) for p, r in args.rewrite_path),
            clone_id_fields=tuple(args.clone_id),
            clone_id_template=args.clone_id_template,
        ),
        scaling=Scaling(
            speed=args.speed if args.rate is None else 1.0,
            rate_per_s=args.rate,
            clones=args.clones,
            clone_offset_s=args.clone_offset,
            duration_s=args.duration,
            loop=args.loop,
            ramp_s=args.ramp,
            max_gap_s=args.max_gap,
        ),
    )
    client = ClientSettings(
        max_connections=args.connections,
        timeout_s=args.timeout,
        connect_timeout_s=args.connect_timeout,
        client=args.client,
        http_version="2" if args.http2 else "1.1" if args.http1 else "auto",
        h2_connections=args.h2_connections,
        # A recorded client stream's messages keep their gaps at the replay's speed (a fixed rate
        # paces calls, not the messages inside one), each cut to --max-gap like think time.
        message_speed=args.speed if args.rate is None else 1.0,
        **({} if args.max_gap is None else {"max_message_gap_s": args.max_gap}),
    )
    # The cap defaults to the pool size: then the pool never queues a request where we cannot see
    # it, and every wait is counted as held back instead of hiding inside service time.
    max_in_flight = args.max_in_flight if args.max_in_flight is not None else args.connections
    return ReplayJob(
        tapes=tuple(args.tapes),
        target=args.target,
        plan=plan,
        client=client,
        runner=RunnerSettings(max_in_flight=max_in_flight),
        results_dir=args.results,
        salvage=args.salvage,
        redact_results=not args.no_redaction,
    )


def _gates(args: argparse.Namespace) -> SloGates:
    from shadowtap.replayer.report import DEFAULT_MAX_ERROR_RATE, SloGates

    return SloGates(
        max_error_rate=DEFAULT_MAX_ERROR_RATE if args.max_error_rate is None else args.max_error_rate,
        max_p99_ms=args.max_p99_ms,
        max_start_lag_ms=args.max_start_lag_ms,
    )


#: An idle stretch of the schedule this long is announced even with --no-progress: a replay that
#: sits silent for a minute or more looks hung.
_LONG_GAP_NS: Final = 60_000_000_000


def _span(ns: int) -> str:
    """A duration for people: ``0.3 s``, ``12m 05s``, ``26h 40m 00s``."""
    seconds = ns / 1e9
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m {whole % 60:02d}s"


def _announce_plan(job: ReplayJob, args: argparse.Namespace) -> SchedulePreview | None:
    """Say how long the recorded schedule runs and where it idles, before it starts (a tape of two
    recordings a day apart idles for hours); the preview (the plan's size and span), or None when
    unknown.

    Announced only for recorded timing: a fixed --rate or --speed 0 has no idle stretches. Their
    preview is still read for a progress bar on a terminal, which then counts requests of the plan."""
    from shadowtap.recorder.errors import InputFormatError
    from shadowtap.replayer.plan import preview_schedule
    from shadowtap.replayer.source import tape_source

    scaling = job.plan.scaling
    paced_by_recording = scaling.rate_per_s is None and scaling.speed != 0.0
    if not paced_by_recording and (args.no_progress or not sys.stderr.isatty()):
        return None
    try:
        preview = preview_schedule(tape_source(job.tapes, job.salvage), job.plan)
    except InputFormatError:
        return None  # a tape damaged half-way: the replay sends what comes before and says so
    if not paced_by_recording:
        return preview
    long_gap = preview.longest_gap_ns >= _LONG_GAP_NS
    if args.no_progress and not long_gap:
        return preview
    line = f"plan: {preview.requests:,} requests over {_span(preview.span_ns)}"
    if scaling.speed != 1.0:
        line += f" at --speed {scaling.speed:g}"
    if scaling.loop:
        line += ", each pass of --loop"
    if preview.longest_gap_ns:
        gap, at = _span(preview.longest_gap_ns), _span(preview.longest_gap_at_ns)
        line += f"; longest with nothing to send: {gap}, from {at} in"
    if scaling.max_gap_s is not None:
        line += f" (gaps cut to {scaling.max_gap_s:g} s by --max-gap)"
    elif long_gap:
        line += " (a gap in the recording: --max-gap S cuts such gaps to S seconds)"
    print(f"shadowtap replay: {'warning: ' if long_gap else ''}{line}", file=sys.stderr, flush=True)
    return preview


def _run_here(job: ReplayJob, args: argparse.Namespace, total_s: float | None, total_requests: int | None) -> JobResult:
    import asyncio
    import signal

    from shadowtap.replayer.job import run_job
    from shadowtap.replayer.progress import ProgressDisplay
    from shadowtap.runtime import run

    async def main(display: ProgressDisplay) -> JobResult:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Ctrl-C stops scheduling, lets in-flight requests finish and still writes every output.
        loop.add_signal_handler(signal.SIGINT, stop.set)
        try:
            # No display, no live p99: walking a histogram on the loop is not free.
            progress = None if args.no_progress else display.update
            return await run_job(job, progress=progress, stop=stop)
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    with ProgressDisplay(enabled=not args.no_progress, total_s=total_s, total_requests=total_requests) as display:
        return run(main(display))


def _run_workers(
    job: ReplayJob, args: argparse.Namespace, total_s: float | None, total_requests: int | None
) -> JobResult:
    from shadowtap.replayer.progress import ProgressDisplay
    from shadowtap.replayer.runner import Progress
    from shadowtap.runtime import run
    from shadowtap.workers import run_replay

    latest: dict[int, Progress] = {}
    with ProgressDisplay(enabled=not args.no_progress, total_s=total_s, total_requests=total_requests) as display:

        def on_progress(index: int, snapshot: Progress) -> None:
            latest[index] = snapshot
            parts = list(latest.values())
            display.update(
                Progress(
                    elapsed_s=max(p.elapsed_s for p in parts),
                    planned=sum(p.planned for p in parts),
                    done=sum(p.done for p in parts),
                    errors=sum(p.errors for p in parts),
                    in_flight=sum(p.in_flight for p in parts),
                    rate_per_s=sum(p.rate_per_s for p in parts),
                    p99_ms=max(p.p99_ms for p in parts),
                    held_back=sum(p.held_back for p in parts),
                )
            )

        return run_replay(job, args.workers, loop_runner=run, progress=None if args.no_progress else on_progress)


def _write_text(path: str, text: str) -> None:
    from shadowtap.recorder.errors import ConfigError
    from shadowtap.recorder.private import open_private

    try:
        # Owner-only: reports name the recorded paths and the job names its rewrites (tokens too).
        with open_private(path, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot write: {exc.strerror or exc}", path=path) from exc


def write_outputs(result: JobResult, job: ReplayJob, args: argparse.Namespace, gates: SloGates) -> list[str]:
    """Print the summary and write --json/--html; returns the SLO failures (for the caller to print:
    an error that cut the replay short is the one line that matters then)."""
    from shadowtap.replayer.html_report import render_html
    from shadowtap.replayer.report import results_document, slo_failures, summary_text

    workers = args.locust_workers if args.locust else args.workers
    document: dict[str, Any] = results_document(
        result, target=job.target, tapes=job.tapes, workers=workers, gates=gates
    )
    summary_stream = sys.stderr if args.json == "-" else sys.stdout
    print(summary_text(result), file=summary_stream)
    if args.json == "-":
        json.dump(document, sys.stdout, indent=2)
        print()
    elif args.json:
        _write_text(args.json, json.dumps(document, indent=2) + "\n")
    if args.html:
        _write_text(args.html, render_html(result, target=job.target, tapes=job.tapes, gates=gates))
    return slo_failures(result, gates)


def _report_tape_problems(result: JobResult) -> None:
    """Say what the readers skipped (``--salvage``) or found torn, as `shadowtap tape` does."""
    torn = result.plan_stats.get("torn_tails", 0)
    skipped = result.plan_stats.get("skipped_ranges", 0)
    if torn or skipped:
        print(
            f"shadowtap replay: note: the tapes had {torn} torn tail(s) and {skipped} skipped range(s) "
            "(corrupt or malformed records); `shadowtap tape info --salvage` lists them",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    from shadowtap.commands.tape import refuse_files_that_are_not_tapes
    from shadowtap.replayer.result import raise_job_error

    job = build_job(args)
    gates = _gates(args)
    refuse_files_that_are_not_tapes(job.tapes, job.salvage)
    if args.locust_job_out:
        from shadowtap.replayer.locust_launch import locust_job

        _write_text(args.locust_job_out, locust_job(job).to_json() + "\n")
        print(f"wrote the Locust job to {args.locust_job_out}", file=sys.stderr)
        return 0
    preview = _announce_plan(job, args)
    duration_s = job.plan.scaling.duration_s
    total_s = duration_s
    total_requests = None
    if preview is not None and not job.plan.scaling.loop:  # the progress bar's length
        span_s = preview.span_ns / 1e9
        if span_s:
            total_s = span_s if duration_s is None else min(span_s, duration_s)
        if duration_s is None or duration_s >= span_s:  # else --duration cuts the plan short
            total_requests = preview.requests
    if args.locust:
        from shadowtap.replayer.locust_launch import run_locust

        result = run_locust(job, workers=args.locust_workers, timeout_s=args.locust_timeout)
    elif args.workers > 1:
        result = _run_workers(job, args, total_s, total_requests)
    else:
        result = _run_here(job, args, total_s, total_requests)
    failures = write_outputs(result, job, args, gates)
    _report_tape_problems(result)
    raise_job_error(result)
    for failure in failures:
        print(f"shadowtap replay: SLO failed: {failure}", file=sys.stderr)
    if result.stopped:
        print("shadowtap replay: interrupted; the outputs cover what was sent", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_SLO_FAILED if failures else 0
