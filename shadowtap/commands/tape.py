"""`shadowtap tape info|cat|merge`: look inside tapes, print them as JSON lines, merge them by time.

All three stream: a tape is never loaded whole, so they work on tapes larger than memory. Torn tails
(a recorder that crashed) are reported on stderr and are not an error; a corrupt frame is one line
naming the file and byte offset, exit 2, unless ``--salvage`` skips it (and says what it skipped).
A file named as a tape that is not one (empty, too short, no magic) is one line saying so, exit 2.
This module must never print a traceback and never write into an input tape.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import decimal
import itertools
import json
import sys
from collections import Counter
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

from shadowtap.commands._options import NO_REDACTION, PATH_REGEX, deprecated_option, deprecated_switch

# The recorder package is already loaded by the CLI (its error tree lives there): nothing heavy here.
from shadowtap.recorder import (
    ConfigError,
    Exchange,
    Outcome,
    RedactionRules,
    Request,
    Response,
    TapeFilter,
    TapeFormatError,
    TapeOptions,
    TapeReader,
    TapeReadReport,
    Timing,
    merge_tapes,
)

NAME = "tape"
HELP = "inspect tapes (info), print them as JSON lines (cat), merge tapes by time (merge)"
ORDER = 50

EPILOG = """\
examples:
  shadowtap tape info tapes/prod
  shadowtap tape cat tapes/prod --method POST --path-regex '^/orders' --since 2026-11-22T10:00:00Z | jq .
  shadowtap tape merge tapes/all tapes/sidecar-a tapes/sidecar-b 'tapes/old/*.stape'

A TAPE is a segment file, a directory of segments, a glob pattern (quote it), or s3://bucket/prefix
(every segment below the prefix; one folder per sidecar, merged by time).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    sub = parser.add_subparsers(dest="tape_command", metavar="ACTION", required=True)

    info = sub.add_parser("info", help="counts, time span, methods, hosts, statuses, sizes, segments")
    info.add_argument("tapes", nargs="+", metavar="TAPE")
    _add_read_options(info)
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    info.set_defaults(_tape_run=_run_info)

    cat = sub.add_parser("cat", help="print exchanges as JSON lines, one per line")
    cat.add_argument("tapes", nargs="+", metavar="TAPE")
    _add_read_options(cat)
    cat.add_argument(
        "--bodies",
        choices=["text", "base64", "none"],
        default="text",
        help="text: UTF-8 where valid, else base64 (marked by body_base64); base64: always; none: omit",
    )
    cat.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N exchanges")
    cat.set_defaults(_tape_run=_run_cat)

    merge = sub.add_parser("merge", help="k-way merge tapes (e.g. one per sidecar) into one, ordered by time")
    merge.add_argument("out", metavar="OUT", help="tape directory or s3://bucket/prefix to write (not an input)")
    merge.add_argument("tapes", nargs="+", metavar="IN")
    _add_read_options(merge)
    merge.add_argument(
        "--compression", choices=["none", "zstd"], default=TapeOptions().compression, help="output block compression"
    )
    merge.add_argument("--spool", metavar="DIR", help="local directory an s3:// OUT is written to before upload")
    merge.add_argument(
        NO_REDACTION,
        action="store_true",
        help="copy exchanges as they are; by default secrets left in inputs are redacted (already "
        "redacted values are kept, so hashes still match across merged tapes)",
    )
    deprecated_switch(merge, "--no-redact", NO_REDACTION, "no_redaction")
    merge.set_defaults(_tape_run=_run_merge)


def _add_read_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", metavar="TIME", help="only exchanges started at or after TIME (ISO 8601 or epoch s)")
    parser.add_argument("--until", metavar="TIME", help="only exchanges started before TIME")
    parser.add_argument("--method", action="append", metavar="METHOD", help="only this method (repeatable)")
    parser.add_argument(PATH_REGEX, metavar="REGEX", help="only request paths matching REGEX (searched, no query)")
    deprecated_option(parser, "--path", PATH_REGEX, "path_regex", metavar="REGEX")
    parser.add_argument(
        "--salvage", action="store_true", help="skip corrupt frames (and report them) instead of stopping"
    )


def run(args: argparse.Namespace) -> int:
    action: Callable[[argparse.Namespace], int] = args._tape_run
    return action(args)


# --- shared ----------------------------------------------------------------------------------------


#: Tapes and the diff store keep times as ns since the epoch in a signed 64-bit int, so a time
#: outside 1677-09-21..2262-04-11 can match nothing, and the store cannot even be asked about it.
_MIN_TIME_NS = -(2**63)
_MAX_TIME_NS = 2**63 - 1
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def parse_time_ns(text: str, field: str) -> int:
    """Epoch ns from ISO 8601 (naive means UTC) or a number of epoch seconds, exact to the ns.

    The one parser for every command's time flags. Anything but a time a tape can hold raises
    ``ConfigError`` naming ``field``: it is never an ``OverflowError`` from a float.
    """
    try:
        seconds = decimal.Decimal(text)  # not float: exact, and no inf * 1e9 to overflow
    except decimal.InvalidOperation:
        ns = _iso_time_ns(text, field)
    else:
        if not seconds.is_finite():
            raise ConfigError(f"not a finite number of epoch seconds: {text!r}", field=field)
        # Compared before scaling, so a huge exponent never reaches the decimal context.
        ns = int(seconds.scaleb(9)) if abs(seconds) < 10**10 else _MAX_TIME_NS + 1
    if not _MIN_TIME_NS <= ns <= _MAX_TIME_NS:
        raise ConfigError(
            f"out of range: tape times run from 1677-09-21 to 2262-04-11 (ns in 64 bits): {text!r}", field=field
        )
    return ns


def _iso_time_ns(text: str, field: str) -> int:
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"not an ISO 8601 time or epoch seconds: {text!r}", field=field) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def format_ns(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns // 1_000_000_000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000 // 1000:06d}Z"


def _filter(args: argparse.Namespace) -> TapeFilter | None:
    if args.since is None and args.until is None and not args.method and args.path_regex is None:
        return None
    try:
        return TapeFilter(
            since_ns=None if args.since is None else parse_time_ns(args.since, "--since"),
            until_ns=None if args.until is None else parse_time_ns(args.until, "--until"),
            methods=frozenset(args.method) if args.method else None,
            path_regex=args.path_regex,
        )
    except ConfigError as exc:
        # Name the flag the user typed, not the library's field.
        flag = _FILTER_FLAGS.get(exc.field or "")
        if flag is None:
            raise
        raise ConfigError(exc.message, field=flag) from exc


_FILTER_FLAGS = {"filter.path_regex": PATH_REGEX, "filter.until": "--until"}


def refuse_files_that_are_not_tapes(tapes: Sequence[str | Path], salvage: bool = False) -> None:
    """Raise ``TapeFormatError`` for a file named as a tape that is not one, before anything is read.

    The reader reports a segment too short for its header as a torn tail: in a tape directory that is
    what a writer killed at birth leaves. A file the user named is another matter: empty, or a few
    bytes, it is not a tape, and neither is a file without the magic (the reader's own check).
    """
    for tape in tapes:
        if not Path(tape).is_file():
            continue  # a directory or a glob: its segments are the reader's to judge
        reader = TapeReader(tape, salvage=salvage, chunk_bytes=_SNIFF_BYTES)
        exchanges = iter(reader)
        try:
            next(exchanges, None)  # reads the header (and a first frame), checks the magic
        finally:
            if isinstance(exchanges, Generator):
                exchanges.close()  # and the file with it
        segment = reader.report.segments[0]
        if segment.version == 0:  # no complete header was read
            what = "the file is empty" if segment.bytes == 0 else f"{segment.bytes} bytes, less than a segment header"
            raise TapeFormatError(f"not a shadowtap tape: {what}", path=segment.path, offset=0)


#: Read from a named file to tell whether it is a tape: the header, and the first frame if it is small.
_SNIFF_BYTES = 64 * 1024


def _report_problems(report: TapeReadReport) -> None:
    for path, torn in report.torn_tails:
        print(
            f"shadowtap tape: note: {path} at byte {torn.offset}: torn tail of {torn.length} bytes ignored "
            f"({torn.reason})",
            file=sys.stderr,
        )
    for path, skipped in report.skipped_ranges:
        print(
            f"shadowtap tape: warning: {path} at byte {skipped.offset}: skipped {skipped.length} bytes "
            f"({skipped.reason})",
            file=sys.stderr,
        )


# --- info ------------------------------------------------------------------------------------------


def _run_info(args: argparse.Namespace) -> int:
    refuse_files_that_are_not_tapes(args.tapes, args.salvage)
    reader = TapeReader(args.tapes, filter=_filter(args), salvage=args.salvage)
    methods: Counter[str] = Counter()
    hosts: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    outcomes: dict[str, Counter[str]] = {}
    count = 0
    first_ns: int | None = None
    last_ns: int | None = None
    request_bytes = response_bytes = max_request = max_response = 0
    for ex in reader:
        count += 1
        started = ex.started_at_ns
        first_ns = started if first_ns is None or started < first_ns else first_ns
        last_ns = started if last_ns is None or started > last_ns else last_ns
        methods[ex.request.method] += 1
        hosts[ex.request.authority or (ex.request.header(b"host") or b"").decode("latin-1") or "(none)"] += 1
        size = len(ex.request.body)
        request_bytes += size
        max_request = max(max_request, size)
        if ex.primary is None:
            statuses["(none)"] += 1
        elif isinstance(ex.primary, Response):
            statuses[str(ex.primary.status)] += 1
            size = len(ex.primary.body)
            response_bytes += size
            max_response = max(max_response, size)
        else:
            statuses[f"failure:{ex.primary.kind}"] += 1
        for name, outcome in ex.shadows.items():
            kind = str(outcome.status) if isinstance(outcome, Response) else f"failure:{outcome.kind}"
            outcomes.setdefault(name, Counter())[kind] += 1
    report = reader.report
    summary: dict[str, Any] = {
        "exchanges": count,
        "frames": report.frames,
        "first_started_at": None if first_ns is None else format_ns(first_ns),
        "last_started_at": None if last_ns is None else format_ns(last_ns),
        "span_s": 0.0 if first_ns is None or last_ns is None else (last_ns - first_ns) / 1e9,
        "methods": dict(methods.most_common()),
        "hosts": dict(hosts.most_common()),
        "primary_statuses": dict(sorted(statuses.items())),
        "shadows": {name: dict(sorted(c.items())) for name, c in sorted(outcomes.items())},
        "request_body_bytes": {"total": request_bytes, "max": max_request},
        "primary_body_bytes": {"total": response_bytes, "max": max_response},
        "segments": [
            {
                "path": s.path,
                "bytes": s.bytes,
                "format_version": s.version,
                "compression": s.compression,
                "frames": s.frames,
                "exchanges": s.exchanges,
                "torn_tail": None
                if s.torn_tail is None
                else {"offset": s.torn_tail.offset, "bytes": s.torn_tail.length},
                "skipped": [{"offset": r.offset, "bytes": r.length, "reason": r.reason} for r in s.skipped],
            }
            for s in report.segments
        ],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_info(summary)
    _report_problems(report)
    return 0


def _counts(counts: Mapping[str, int], limit: int = 10) -> str:
    items = list(counts.items())
    text = ", ".join(f"{key} {value}" for key, value in items[:limit])
    return (
        text + (f", ... ({len(items) - limit} more; --json lists all)" if len(items) > limit else "") if items else "-"
    )


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _print_info(summary: Mapping[str, Any]) -> None:
    segments = summary["segments"]
    count = summary["exchanges"]
    on_disk = sum(s["bytes"] for s in segments)
    compression = sorted({s["compression"] for s in segments}) or ["-"]
    lines = [
        f"exchanges   {count}",
        f"time span   {summary['first_started_at'] or '-'} .. {summary['last_started_at'] or '-'} "
        f"({summary['span_s']:.3f} s)",
        f"methods     {_counts(summary['methods'])}",
        f"hosts       {_counts(summary['hosts'])}",
        f"statuses    {_counts(summary['primary_statuses'])}",
    ]
    for name, counts in summary["shadows"].items():
        # Labels are 12 wide; a longer shadow name still gets a space before its counts.
        label = f"shadow {name}"
        lines.append(f"{label:<11} {_counts(counts)}")
    req, resp = summary["request_body_bytes"], summary["primary_body_bytes"]
    lines += [
        f"bodies      requests {_size(req['total'])} (max {_size(req['max'])}), "
        f"primary responses {_size(resp['total'])} (max {_size(resp['max'])})",
        f"on disk     {_size(on_disk)} in {len(segments)} segment(s), compression {'/'.join(compression)}"
        + (f", {on_disk / count:.0f} B per exchange" if count else ""),
    ]
    for s in segments:
        torn = " torn tail" if s["torn_tail"] else ""
        skipped = f" {len(s['skipped'])} skipped range(s)" if s["skipped"] else ""
        lines.append(
            f"  {s['path']}  v{s['format_version']}  {_size(s['bytes'])}  {s['exchanges']} exchanges{torn}{skipped}"
        )
    print("\n".join(lines))


# --- cat -------------------------------------------------------------------------------------------


def _run_cat(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise ConfigError("must be zero or more", field="--limit")
    from shadowtap.cli import stdout_reader_gone

    refuse_files_that_are_not_tapes(args.tapes, args.salvage)
    reader = TapeReader(args.tapes, filter=_filter(args), salvage=args.salvage)
    out = sys.stdout
    exchanges = iter(reader) if args.limit is None else itertools.islice(reader, args.limit)
    for ex in exchanges:
        out.write(json.dumps(exchange_to_json(ex, args.bodies), ensure_ascii=False))
        out.write("\n")
        if stdout_reader_gone():
            # `tape cat | head`: the output is all cat makes, and nobody reads it any more.
            return 0
    out.flush()
    _report_problems(reader.report)
    return 0


def _headers(headers: tuple[tuple[bytes, bytes], ...]) -> list[list[str]]:
    # Latin-1 maps every byte to one code point, so header bytes survive the round trip exactly.
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]


def _body(into: dict[str, Any], body: bytes, mode: str) -> None:
    if mode == "none":
        into["body_bytes"] = len(body)
        return
    if mode == "text":
        try:
            into["body"] = body.decode("utf-8")
            return
        except UnicodeDecodeError:
            pass
    into["body"] = base64.b64encode(body).decode("ascii")
    into["body_base64"] = True


def _stream_fields(into: dict[str, Any], message: Request | Response) -> None:
    """Trailers and gRPC messages, when the message has any (HTTP/2, gRPC; tape format v2)."""
    if message.trailers:
        into["trailers"] = _headers(message.trailers)
    if message.messages:
        into["messages"] = [{"flags": m.flags, "length": m.length, "at_ns": m.at_ns} for m in message.messages]


def _outcome(outcome: Outcome, bodies: str) -> dict[str, Any]:
    if isinstance(outcome, Response):
        out: dict[str, Any] = {
            "status": outcome.status,
            "reason": outcome.reason,
            "http_version": outcome.http_version,
            "headers": _headers(outcome.headers),
        }
        _body(out, outcome.body, bodies)
        if outcome.truncated_from is not None:
            out["truncated_from"] = outcome.truncated_from
        _stream_fields(out, outcome)
        return out
    return {"failure": outcome.kind, "message": outcome.message}


def _timing(timing: Timing) -> dict[str, int | None]:
    return {"sent_ns": timing.sent_ns, "first_byte_ns": timing.first_byte_ns, "done_ns": timing.done_ns}


def exchange_to_json(ex: Exchange, bodies: str = "text") -> dict[str, Any]:
    """One exchange as a JSON-ready dict (the ``tape cat`` line format)."""
    req = ex.request
    request: dict[str, Any] = {
        "method": req.method,
        "target": req.target,
        "scheme": req.scheme,
        "authority": req.authority,
        "http_version": req.http_version,
        "headers": _headers(req.headers),
    }
    _body(request, req.body, bodies)
    if req.truncated_from is not None:
        request["truncated_from"] = req.truncated_from
    _stream_fields(request, req)
    return {
        "id": ex.id,
        "started_at": format_ns(ex.started_at_ns),
        "started_at_ns": ex.started_at_ns,
        "started_mono_ns": ex.started_mono_ns,
        "session": ex.session,
        "connection_id": ex.connection_id,
        "client_addr": ex.client_addr,
        "request": request,
        "primary": None if ex.primary is None else _outcome(ex.primary, bodies),
        "shadows": {name: _outcome(o, bodies) for name, o in ex.shadows.items()},
        "timings": {name: _timing(t) for name, t in ex.timings.items()},
        "decisions": dict(ex.decisions),
        "tags": dict(ex.tags),
    }


# --- merge -----------------------------------------------------------------------------------------


def _run_merge(args: argparse.Namespace) -> int:
    refuse_files_that_are_not_tapes(args.tapes, args.salvage)
    options = TapeOptions(
        compression=args.compression,
        # A merge can simply be run again, so syncing every block would only slow it down.
        fsync="none",
        redaction=None if args.no_redaction else RedactionRules(),
    )
    result = merge_tapes(args.out, args.tapes, options, filter=_filter(args), salvage=args.salvage, spool=args.spool)
    print(f"merged {result.exchanges} exchanges from {result.inputs} tape(s) into {args.out}")
    for report in result.reports:
        _report_problems(report)
    if result.torn_tails or result.skipped_ranges:
        print(
            f"shadowtap tape merge: note: inputs had {result.torn_tails} torn tail(s) and "
            f"{result.skipped_ranges} skipped range(s)",
            file=sys.stderr,
        )
    return 0
