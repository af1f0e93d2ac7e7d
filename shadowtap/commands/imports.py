"""`shadowtap import`: turn HAR, mitmproxy flow or GoReplay files into a tape.

It streams each input through its importer into one ``SyncTapeWriter`` (redaction on unless
``--no-redaction``) and prints one summary line per input. It must never load a whole input and never
print a traceback for a bad file: the importer's ``InputFormatError`` names the file and position.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shadowtap.commands._options import NO_PROGRESS, NO_PROGRESS_HELP, NO_REDACTION, deprecated_switch

NAME = "import"
HELP = "import HAR, mitmproxy flow or GoReplay (.gor) files into a tape"
ORDER = 60

EPILOG = """\
examples:
  shadowtap import --from har session.har --out tapes/from-browser
  shadowtap import capture.gor more.gor --out tapes/prod   # format guessed from content
  shadowtap import --from mitm flows.mitm --out tapes/mitm --no-redaction

Exchanges already written stay in the tape when a later input turns out to be malformed.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("inputs", nargs="+", metavar="IN", type=Path, help="input files")
    parser.add_argument(
        "--from",
        dest="fmt",
        choices=["har", "mitm", "gor"],
        default=None,
        help="input format (default: guessed from each file's first bytes)",
    )
    parser.add_argument("--out", required=True, metavar="TAPE", help="tape directory or s3://bucket/prefix to write")
    parser.add_argument("--spool", metavar="DIR", help="local directory an s3:// --out is written to before upload")
    parser.add_argument(
        NO_REDACTION,
        action="store_true",
        help="write secrets (Authorization, Cookie, ...) as they are; redaction is on by default",
    )
    deprecated_switch(parser, "--no-redact", NO_REDACTION, "no_redaction")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML/TOML file whose 'redaction' section sets the redaction rules",
    )
    parser.add_argument("--compression", choices=["none", "zstd"], default="zstd", help="tape block compression")
    parser.add_argument("--json", action="store_true", help="print the reports as one JSON object on stdout")
    parser.add_argument(NO_PROGRESS, action="store_true", help=NO_PROGRESS_HELP)


def run(args: argparse.Namespace) -> int:
    from shadowtap.commands._progress import ReadProgress, file_sizes
    from shadowtap.recorder import RedactionRules, SyncTapeWriter, TapeOptions
    from shadowtap.recorder.errors import ConfigError
    from shadowtap.recorder.formats import open_importer
    from shadowtap.recorder.writer import tape_target

    redaction: RedactionRules | None = RedactionRules()
    if args.config is not None:
        from shadowtap.config import load_mapping

        section = load_mapping(args.config).get("redaction", {})
        if not isinstance(section, dict):
            raise ConfigError("must be a mapping", field="redaction", path=str(args.config))
        redaction = RedactionRules.from_mapping(section)
    if args.no_redaction:
        redaction = None
    # An import can simply be run again, so syncing every block would only slow it down.
    options = TapeOptions(compression=args.compression, fsync="none", redaction=redaction)
    directory, options = tape_target(args.out, options, args.spool)
    # Every input's format is settled before the tape is created, so a wrong file costs nothing.
    importers = [open_importer(path, args.fmt) for path in args.inputs]
    reports = []
    with (
        SyncTapeWriter(directory, options) as writer,
        ReadProgress("import", file_sizes(args.inputs), enabled=not args.no_progress) as progress,
    ):
        for index, importer in enumerate(importers):
            writer.write_many(progress.wrap(importer, lambda index=index: index))  # type: ignore[misc]
            reports.append(importer.report)
            if not args.json:
                print(importer.report.summary())
    if args.json:
        json.dump(
            {
                "tape": str(args.out),
                "redaction": redaction is not None,
                "inputs": [
                    {
                        "path": r.path,
                        "format": r.format,
                        "records": r.records,
                        "imported": r.imported,
                        "failures": r.failures,
                        "skipped": r.skipped,
                        "notes": r.notes,
                        "torn_tail": None
                        if r.torn_tail is None
                        else {
                            "offset": r.torn_tail.offset,
                            "length_bytes": r.torn_tail.length_bytes,
                            "reason": r.torn_tail.reason,
                        },
                    }
                    for r in reports
                ],
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        total = sum(r.imported for r in reports)
        print(f"{total} exchanges written to {args.out}" + ("" if redaction is not None else " (not redacted)"))
    return 0
