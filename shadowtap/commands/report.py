"""`shadowtap report`: rebuild a diff report from a results store, for a time window or endpoint.

It reads only the SQLite store written by `shadowtap diff --db`, never the tapes, and exits with the
same verdict codes as `diff`. It must never modify the store.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
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


def parse_time_ns(text: str) -> int:
    """ISO 8601 or epoch seconds to ns since the epoch."""
    from recorder.errors import ConfigError

    try:
        return int(float(text) * 1_000_000_000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{text!r} is neither ISO 8601 nor epoch seconds", field="--since/--until") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000) * 1_000


def configure(parser: argparse.ArgumentParser) -> None:
    from shadowtap.commands.diff import add_report_arguments

    parser.epilog = EPILOG
    parser.add_argument("--db", type=Path, required=True, metavar="PATH", help="results database from `diff --db`")
    parser.add_argument("--since", type=parse_time_ns, metavar="TIME", help="only exchanges started at or after")
    parser.add_argument("--until", type=parse_time_ns, metavar="TIME", help="only exchanges started before")
    parser.add_argument("--endpoint", metavar="ENDPOINT", help="only this endpoint, e.g. 'GET /users/{id}'")
    add_report_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from differ import DiffStore, build_report
    from recorder.errors import ConfigError
    from shadowtap.commands.diff import emit, load_config

    if args.since is not None and args.until is not None and args.until <= args.since:
        raise ConfigError("must be later than --since", field="--until")
    config = load_config(args.config)
    store = DiffStore(args.db, create=False)
    try:
        report = build_report(
            store,
            config,
            since_ns=args.since,
            until_ns=args.until,
            endpoint=args.endpoint,
            fail_on=args.fail_on,
            min_samples=args.min_samples,
        )
    finally:
        store.close()
    return emit(report, args)
