"""`shadowtap report`: rebuild a diff report from a results store, for a time window or endpoint.

It reads only the SQLite store written by `shadowtap diff --db`, never the tapes, and exits with the
same verdict codes as `diff`. It must never modify the store.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "report"
HELP = "re-render a diff report from a results database (--db), optionally for a time window or endpoint"
ORDER = 41

EPILOG = """\
examples:
  shadowtap report --db diff.sqlite --html report.html
  shadowtap report --db diff.sqlite --since 2024-05-01T10:00 --until 2024-05-01T11:00 --json hour.json
  shadowtap report --db diff.sqlite --endpoint 'GET /users/{id}' --fail-on medium

TIME is ISO 8601 (UTC unless it has an offset) or seconds since the epoch.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    from shadowtap.commands.diff import add_proto_arguments, add_report_arguments

    parser.epilog = EPILOG
    parser.add_argument("--db", type=Path, required=True, metavar="PATH", help="results database from `diff --db`")
    parser.add_argument("--since", metavar="TIME", help="only exchanges started at or after")
    parser.add_argument("--until", metavar="TIME", help="only exchanges started before")
    parser.add_argument("--endpoint", metavar="ENDPOINT", help="only this endpoint, e.g. 'GET /users/{id}'")
    add_proto_arguments(parser)
    add_report_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from shadowtap.commands.diff import emit, load_config, with_proto_schema
    from shadowtap.commands.tape import parse_time_ns
    from shadowtap.differ import DiffStore, build_report
    from shadowtap.recorder.errors import ConfigError

    # Parsed here, not as argparse types: a bad time is then one line naming the flag and why.
    since_ns = None if args.since is None else parse_time_ns(args.since, "--since")
    until_ns = None if args.until is None else parse_time_ns(args.until, "--until")
    if since_ns is not None and until_ns is not None and until_ns <= since_ns:
        raise ConfigError("must be later than --since", field="--until")
    # The schema only renders gRPC bodies here: the store holds the differences already found.
    config = with_proto_schema(load_config(args.config), args)
    store = DiffStore(args.db, create=False)
    try:
        report = build_report(
            store,
            config,
            since_ns=since_ns,
            until_ns=until_ns,
            endpoint=args.endpoint,
            fail_on=args.fail_on,
            min_samples=args.min_samples,
        )
    finally:
        store.close()
    return emit(report, args, config.compare.proto)
