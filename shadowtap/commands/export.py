"""`shadowtap export`: write a tape's exchanges as HAR, a mitmproxy flow file or a GoReplay file.

It streams the tape through one exporter and prints what the target format could not hold (shadow
responses, failures). It must never load a whole tape, never print a traceback for a bad tape, and
never leave a half-written export: the file is written beside the output (0600) and renamed over it
only when the whole tape went through, so a tape that breaks mid-way leaves the old output as it was.
"""

from __future__ import annotations

import argparse
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from shadowtap.commands._options import NO_PROGRESS, NO_PROGRESS_HELP

if TYPE_CHECKING:
    from shadowtap.recorder.formats import ExportReport
    from shadowtap.recorder.model import Exchange

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
    parser.add_argument(NO_PROGRESS, action="store_true", help=NO_PROGRESS_HELP)


def _target(out: Path) -> Path | None:
    """The file the finished export is renamed over (a symlink's target), or ``None`` when ``out``
    is a device or pipe (``/dev/null``), which is written in place: it cannot be replaced."""
    try:
        if not stat.S_ISREG(out.stat().st_mode):
            return None
    except OSError:
        pass  # missing (it is created), or unreachable (creating the temporary says why)
    return Path(os.path.realpath(out))


def _export(reader: Iterable[Exchange], out: Path, fmt: str) -> ExportReport:
    from shadowtap import __version__
    from shadowtap.recorder.errors import TapeWriteError
    from shadowtap.recorder.formats import export_exchanges
    from shadowtap.recorder.private import open_private

    target = _target(out)
    if target is None:
        return export_exchanges(reader, out, fmt, version=__version__)
    # The temporary keeps the output's name as its end, so the format and gzip follow the suffix.
    temporary = target.with_name(f".shadowtap-export-{secrets.token_hex(4)}.{target.name}")
    try:
        open_private(temporary, "wb", exclusive=True).close()
    except OSError as exc:
        raise TapeWriteError(f"cannot write: {exc.strerror or exc}", path=str(out)) from exc
    try:
        report = export_exchanges(reader, temporary, fmt, version=__version__)
        os.replace(temporary, target)
    except TapeWriteError as exc:
        if exc.path != str(temporary):
            raise
        raise TapeWriteError(exc.message, path=str(out)) from exc
    except OSError as exc:  # the rename
        raise TapeWriteError(f"cannot write: {exc.strerror or exc}", path=str(out)) from exc
    finally:
        temporary.unlink(missing_ok=True)
    report.path = str(out)
    return report


def run(args: argparse.Namespace) -> int:
    from shadowtap.commands._progress import ReadProgress
    from shadowtap.recorder import TapeReader
    from shadowtap.recorder.errors import ConfigError

    name = args.out.name.lower().removesuffix(".gz")  # out.gor.gz: GoReplay reads gzip files
    fmt = args.fmt or _SUFFIXES.get(Path(name).suffix)
    if fmt is None:
        raise ConfigError("cannot tell the format from the file name; name it with --to", field="to")
    reader = TapeReader(args.tape, salvage=args.salvage)
    with ReadProgress("export", reader.segment_sizes(), enabled=not args.no_progress) as progress:
        report = _export(progress.wrap(reader, lambda: len(reader.report.segments) - 1), args.out, fmt)
    print(report.summary())
    for segment, tail in reader.report.torn_tails:
        print(f"note: {segment}: torn tail at byte {tail.offset} ({tail.length} bytes) ignored")
    for segment, skipped in reader.report.skipped_ranges:
        print(f"note: {segment}: skipped {skipped.length} corrupt bytes at {skipped.offset}: {skipped.reason}")
    return 0
