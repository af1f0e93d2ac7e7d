"""`shadowtap export`: write a tape's exchanges as HAR, a mitmproxy flow file or a GoReplay file.

It streams the tape through one exporter and prints what the target format could not hold (shadow
responses, failures). It must never load a whole tape and never print a traceback for a bad tape.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
HELP = "export a tape as HAR, a mitmproxy flow file or a GoReplay (.gor) file"
ORDER = 61

EPILOG = """\
examples:
  shadowtap export --to har tapes/prod --out prod.har      # open in Chromium DevTools or mitmweb
  shadowtap export --to gor tapes/prod --out prod.gor      # gor --input-file prod.gor ...
  shadowtap export tapes/prod --out prod.mitm              # format from the suffix
  shadowtap export tapes/prod --out prod.gor.gz            # gzip, as GoReplay writes and reads
"""

_SUFFIXES = {".har": "har", ".gor": "gor", ".mitm": "mitm", ".flow": "mitm", ".flows": "mitm"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("tape", nargs="+", metavar="TAPE", help="tape directories or segment files")
    parser.add_argument(
        "--to",
        dest="fmt",
        choices=["har", "mitm", "gor"],
        default=None,
        help="output format (default: from the --out suffix: .har, .mitm/.flow, .gor)",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="file to write")
    parser.add_argument("--salvage", action="store_true", help="skip corrupt ranges of the tape instead of stopping")


def run(args: argparse.Namespace) -> int:
    from recorder import TapeReader
    from recorder.errors import ConfigError
    from recorder.formats import export_exchanges
    from shadowtap import __version__

    name = args.out.name.lower().removesuffix(".gz")  # out.gor.gz: GoReplay reads gzip files
    fmt = args.fmt or _SUFFIXES.get(Path(name).suffix)
    if fmt is None:
        raise ConfigError("cannot tell the format from the file name; name it with --to", field="to")
    reader = TapeReader(args.tape, salvage=args.salvage)
    report = export_exchanges(reader, args.out, fmt, version=__version__)
    print(report.summary())
    for segment, tail in reader.report.torn_tails:
        print(f"note: {segment}: torn tail at byte {tail.offset} ({tail.length} bytes) ignored")
    for segment, skipped in reader.report.skipped_ranges:
        print(f"note: {segment}: skipped {skipped.length} corrupt bytes at {skipped.offset}: {skipped.reason}")
    return 0
