"""`shadowtap diff`: compare the baseline with the candidate in tapes, store the results, report.

It streams the tapes through the differ into a SQLite store (``--db``, in memory without it), builds
the report from the store, prints the terminal summary and writes the requested report files. The
exit code is the verdict: 0 pass, 1 regression, 2 too few samples or infrastructure errors. It must
never load a whole tape and never print a traceback for a user mistake.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from shadowtap.commands._options import NO_PROGRESS, NO_PROGRESS_HELP

if TYPE_CHECKING:
    from collections.abc import Iterable

    from shadowtap.differ import DifferConfig
    from shadowtap.differ.report_model import DiffReport
    from shadowtap.recorder import Exchange
    from shadowtap.recorder.errors import ConfigError

NAME = "diff"
HELP = "compare primary vs shadow (or recorded vs replayed) responses in tapes and report what changed"
ORDER = 40

EPILOG = """\
examples:
  shadowtap diff tapes/prod --candidate v2 --secondary secondary --html report.html
  shadowtap diff results/ --candidate replay --fail-on 'severity>=medium&rate>0.01' --junit junit.xml
  shadowtap diff tapes/prod --db diff.sqlite && shadowtap report --db diff.sqlite --since 2024-05-01T10:00

--fail-on SPEC: clauses separated by ',' (any failing clause fails), conditions in a clause joined by
'&': critical|high|medium|low, severity>=LEVEL, rate>X, count>=N, kind=KIND, any, never.
Default: severity>=high (from the config file's fail_on when set). See docs/differ.md.
"""

#: Shadows looked at to guess the candidate when --candidate is not given: enough to see every
#: shadow of a proxy tape, few enough that the guess costs nothing next to the diff itself.
_PEEK_EXCHANGES = 1_000


def _count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The output and gate flags shared by `diff` and `report`."""
    parser.add_argument("--config", type=Path, metavar="FILE", help="differ config (YAML/TOML; its 'diff' section)")
    parser.add_argument("--html", type=Path, metavar="OUT", help="write the self-contained HTML report")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the JSON report (docs/report-schema.md)")
    parser.add_argument("--markdown", type=Path, metavar="OUT", help="write a Markdown summary for a pull request")
    parser.add_argument("--junit", type=Path, metavar="OUT", help="write JUnit XML, one test case per endpoint")
    parser.add_argument("--fail-on", metavar="SPEC", help="what fails the run (default: severity>=high)")
    parser.add_argument(
        "--min-samples", type=_count, metavar="N", help="fewer compared pairs than this exits 2 (default: 10)"
    )
    parser.add_argument("--no-color", action="store_true", help="never colour the terminal summary")
    parser.add_argument(
        "--full", action="store_true", help="list every endpoint and signature in the summary, not only the top ones"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the verdict line, not the summary")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("tape", nargs="+", metavar="TAPE", help="tape directories, segment files or globs")
    parser.add_argument("--primary", default="primary", metavar="NAME", help="the baseline outcome (default: primary)")
    parser.add_argument(
        "--candidate", metavar="NAME", help="the outcome under test (default: the tape's only shadow, or 'replay')"
    )
    parser.add_argument(
        "--secondary",
        metavar="NAME",
        help="a second baseline-like outcome to learn noise from (default: a shadow named 'secondary', if any)",
    )
    parser.add_argument(
        "--noise-tape",
        action="append",
        default=[],
        metavar="TAPE",
        help="a replay results tape of the baseline against itself (safe methods count): learned noise "
        "without a secondary shadow; repeatable",
    )
    parser.add_argument(
        "--noise-name",
        default="replay",
        metavar="NAME",
        help="the second baseline answer in --noise-tape exchanges (default: replay)",
    )
    parser.add_argument("--db", type=Path, metavar="PATH", help="SQLite results store to create or add to")
    parser.add_argument("--salvage", action="store_true", help="skip corrupt ranges of the tape instead of stopping")
    parser.add_argument(NO_PROGRESS, action="store_true", help=NO_PROGRESS_HELP)
    add_report_arguments(parser)


def load_config(path: Path | None) -> DifferConfig:
    from shadowtap.config import load_mapping
    from shadowtap.differ import DifferConfig, config_from_mapping

    return DifferConfig() if path is None else config_from_mapping(load_mapping(path))


def _names_on(exchanges: Iterable[Exchange], names: set[str]) -> None:
    """Add the names of the responses ``exchanges`` hold (``primary`` and each shadow's) to ``names``."""
    from shadowtap.recorder import PRIMARY

    for exchange in exchanges:
        if exchange.primary is not None:
            names.add(PRIMARY)
        names.update(exchange.shadows)


def _pick_names(exchanges: list[Exchange], seen: set[str], args: argparse.Namespace) -> tuple[str, str | None]:
    """The candidate and secondary: as given, or guessed from the names ``seen`` at the tape's start."""
    from shadowtap.recorder import PRIMARY, REPLAY
    from shadowtap.recorder.errors import ConfigError

    if not exchanges:
        raise ConfigError("the tape holds no exchanges to compare")
    others = seen - {args.primary, PRIMARY}  # guessed among the shadows (and replays) only
    secondary: str | None = args.secondary
    if secondary is None and "secondary" in others and args.candidate != "secondary":
        secondary = "secondary"
    candidate: str | None = args.candidate
    if candidate is None:
        choices = sorted(others - {secondary})
        if REPLAY in choices:
            candidate = REPLAY
        elif len(choices) == 1:
            candidate = choices[0]
        elif not choices:
            raise ConfigError("the tape holds no shadow or replay responses to compare", field="--candidate")
        else:
            raise ConfigError(f"the tape holds several shadows ({', '.join(choices)}); pick one", field="--candidate")
    if candidate in (args.primary, secondary):
        raise ConfigError(f"{candidate!r} cannot be both the candidate and the baseline/secondary", field="--candidate")
    return candidate, secondary


def _unknown_name(args: argparse.Namespace, seen: set[str]) -> ConfigError | None:
    """The error for a name given on the command line that no response ``seen`` has, listing theirs."""
    from shadowtap.recorder.errors import ConfigError

    for flag, name in (("--primary", args.primary), ("--candidate", args.candidate), ("--secondary", args.secondary)):
        if name is not None and name not in seen:
            holds = ", ".join(sorted(seen)) or "no responses"
            return ConfigError(f"no response named {name!r} on the tape; it holds: {holds}", field=flag)
    return None


def emit(report: DiffReport, args: argparse.Namespace) -> int:
    """Print the summary, write every requested report file; the verdict's exit code."""
    from shadowtap.differ.reports import render_terminal, write_html, write_json, write_junit, write_markdown

    if not args.quiet:
        render_terminal(report, sys.stdout, color=False if args.no_color else None, full=args.full)
    for path, write in (
        (args.html, write_html),
        (args.json, write_json),
        (args.markdown, write_markdown),
        (args.junit, write_junit),
    ):
        if path is not None:
            write(report, path)
    verdict = report.verdict
    print(f"verdict: exit {verdict.exit_code}: {verdict.reason}")
    return verdict.exit_code


def run(args: argparse.Namespace) -> int:
    from itertools import islice

    from shadowtap.commands._progress import ReadProgress
    from shadowtap.commands.tape import refuse_files_that_are_not_tapes
    from shadowtap.differ import DiffSession, DiffStore, RunMeta, build_report, parse_fail_on
    from shadowtap.recorder import TapeReader

    config = load_config(args.config)
    if args.fail_on is not None:
        parse_fail_on(args.fail_on)  # a bad SPEC fails before the tape is read, not after
    refuse_files_that_are_not_tapes([*args.tape, *args.noise_tape], args.salvage)
    reader = TapeReader(args.tape, salvage=args.salvage)
    peek = list(islice(iter(reader), _PEEK_EXCHANGES))
    seen: set[str] = set()
    _names_on(peek, seen)
    candidate, secondary = _pick_names(peek, seen, args)
    # A name missing from the tape's start may still come later: then the whole pass decides.
    names_to_check: set[str] | None = None
    unknown = _unknown_name(args, seen)
    if unknown is not None:
        if len(peek) < _PEEK_EXCHANGES:
            raise unknown
        names_to_check = seen
    del peek
    noise_reader = TapeReader(args.noise_tape, salvage=args.salvage) if args.noise_tape else None
    sources = (*(str(t) for t in args.tape), *(f"noise:{t}" for t in args.noise_tape))
    # Without --db the store is a temporary file, not memory: its pages stay on disk, so memory
    # does not grow with the tape.
    scratch = tempfile.TemporaryDirectory(prefix="shadowtap-diff-") if args.db is None else None
    store = DiffStore(args.db if scratch is None else Path(scratch.name) / "diff.sqlite")
    try:
        session = DiffSession(store, config, RunMeta(args.primary, candidate, secondary, sources))
        with ReadProgress("diff", reader.segment_sizes(), enabled=not args.no_progress) as progress:
            for exchange in progress.wrap(reader, lambda: len(reader.report.segments) - 1):
                session.add(exchange)
                if names_to_check is not None:
                    _names_on((exchange,), names_to_check)
        if names_to_check is not None:
            unknown = _unknown_name(args, names_to_check)
            if unknown is not None:
                raise unknown
        if noise_reader is not None:
            for exchange in noise_reader:
                session.add_noise(exchange, args.noise_name)
        stats = session.finish()
        for read in (reader, noise_reader):
            if read is None:
                continue
            for segment, tail in read.report.torn_tails:
                print(
                    f"note: {segment}: torn tail at byte {tail.offset} ({tail.length} bytes) ignored", file=sys.stderr
                )
            for segment, skipped in read.report.skipped_ranges:
                print(
                    f"note: {segment}: skipped {skipped.length} corrupt bytes at {skipped.offset}: {skipped.reason}",
                    file=sys.stderr,
                )
        if noise_reader is not None and stats.noise_pairs == stats.noise_skipped:
            print(
                f"note: no usable pair in --noise-tape (safe methods with both primary and {args.noise_name!r})",
                file=sys.stderr,
            )
        if stats.duplicates:
            print(f"note: {stats.duplicates} exchanges were already in {args.db}; counted once", file=sys.stderr)
        report = build_report(store, config, fail_on=args.fail_on, min_samples=args.min_samples)
    finally:
        store.close()
        if scratch is not None:
            scratch.cleanup()
    return emit(report, args)
