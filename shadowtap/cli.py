"""The `shadowtap` command line: parses arguments and dispatches to one subcommand module.

Each subcommand is a module in ``shadowtap/commands/`` exposing ``NAME``, ``HELP``, ``ORDER``,
``configure(parser)`` and ``run(args) -> int``; this module finds them, so adding a subcommand never
edits this file. Command modules import their heavy dependencies inside ``run`` so ``--help`` stays
fast. This module must never let a user mistake end in a traceback: a ``ShadowtapError`` is printed
as one line and exits 2. Nor may a closed stdout (``shadowtap diff ... | head -1``) change a
command's verdict or stop it writing its output files: printing simply stops (see ``_GuardedStdout``).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import io
import logging
import os
import pkgutil
import re
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, NoReturn, Protocol, cast

import shadowtap.commands
from shadowtap import __version__
from shadowtap.commands._options import HelpFormatter
from shadowtap.recorder.errors import ShadowtapError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandModule(Protocol):
    NAME: str
    HELP: str
    ORDER: int

    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit 2.

    The line names the nearest valid spelling when the mistake looks like a typo (``did you mean
    --speed?``) and points to this parser's own ``--help``.
    """

    def error(self, message: str) -> NoReturn:
        hint = _nearest_choice(message)
        if hint:
            message += f"; did you mean {hint!r}?"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def reject_unrecognized(self, extras: Sequence[str]) -> NoReturn:
        """The error for arguments this parser does not know, with the nearest option for each."""
        message = f"unrecognized arguments: {' '.join(extras)}"
        known = [
            option
            for action in self._actions
            if action.help is not argparse.SUPPRESS
            for option in action.option_strings
        ]
        hints = []
        for extra in extras:
            if not extra.startswith("-"):
                continue
            option = extra.partition("=")[0]
            close = difflib.get_close_matches(option, known, n=1, cutoff=_CLOSE_ENOUGH)
            if close and close[0] not in hints:
                hints.append(close[0])
        if hints:
            message += f"; did you mean {' or '.join(hints)}?"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


#: difflib's similarity ratio above which a mistyped name is taken for a known one (its default).
_CLOSE_ENOUGH = 0.6
_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<value>[^']*)' \(choose from (?P<choices>.*)\)")


def _nearest_choice(message: str) -> str | None:
    """For argparse's "invalid choice" message, the closest of the choices it lists."""
    match = _INVALID_CHOICE.search(message)
    if match is None:
        return None
    choices = re.findall(r"'([^']*)'", match["choices"])
    close = difflib.get_close_matches(match["value"], choices, n=1, cutoff=_CLOSE_ENOUGH)
    return close[0] if close else None


class _GuardedStdout(io.FileIO):
    """Standard output that outlives its reader: the first EPIPE points fd 1 at /dev/null.

    What the Python docs' "Note on SIGPIPE" does, but without ending the command: the command goes
    on computing its verdict and writing its files, only what it prints is lost (``reader_gone``
    tells a command whose whole output is stdout, ``tape cat``, that it may stop).
    """

    reader_gone = False

    def write(self, data: ReadableBuffer, /) -> int:
        try:
            return super().write(data)
        except BrokenPipeError:
            self.reader_gone = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.fileno())
            finally:
                os.close(devnull)
            return memoryview(data).nbytes


_guarded_stdout: _GuardedStdout | None = None


def stdout_reader_gone() -> bool:
    """True once a write to stdout found its reader gone (``| head``): nothing printed is read."""
    return _guarded_stdout is not None and _guarded_stdout.reader_gone


def _guard_stdout() -> None:
    """Put ``_GuardedStdout`` under ``sys.stdout``, when stdout is a real file descriptor."""
    global _guarded_stdout
    stream = sys.__stdout__
    # Only the interpreter's own stdout: not one a test harness put there, nor a closed one.
    if _guarded_stdout is not None or stream is None or sys.stdout is not stream:
        return
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    stream.flush()
    raw = _GuardedStdout(fd, "w", closefd=False)
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=stream.encoding,
        errors=stream.errors,
        line_buffering=stream.line_buffering,
    )
    _guarded_stdout = raw


def discover_commands() -> list[CommandModule]:
    modules: list[CommandModule] = []
    for info in pkgutil.iter_modules(shadowtap.commands.__path__):
        module: ModuleType = importlib.import_module(f"shadowtap.commands.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            modules.append(cast(CommandModule, module))
    return sorted(modules, key=lambda m: (m.ORDER, m.NAME))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="shadowtap",
        description="Mirror production traffic to shadow deployments, record it to tapes, "
        "replay it as load, and diff what changed.",
    )
    parser.add_argument("--version", action="version", version=f"shadowtap {__version__}")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="diagnostic log level on stderr (default: warning)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for module in discover_commands():
        command_parser = sub.add_parser(
            module.NAME, help=module.HELP, description=module.HELP, formatter_class=HelpFormatter
        )
        module.configure(command_parser)
        command_parser.set_defaults(_run=module.run)
        for each in _parsers_under(command_parser):
            # The parser that reports an unknown argument: the innermost one the command line reached.
            each.set_defaults(_parser=each)
    return parser


def _parsers_under(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and its nested subcommand parsers (``tape info``), each with the shared formatter."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                nested.formatter_class = HelpFormatter
                found += _parsers_under(nested)
    return found


def _refuse_end_of_options_as_value(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Python 3.11's argparse drops '--' from ``--opt=--`` and hands the command an empty list."""
    for arg in argv:
        if arg == "--":
            return  # what follows is positional, whatever it looks like
        option, sep, value = arg.partition("=")
        if sep and value == "--" and option.startswith("-"):
            parser.error(f"argument {option}: '--' is not a value (it marks the end of the options)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    _refuse_end_of_options_as_value(parser, argv)
    args, extras = parser.parse_known_args(argv)
    if extras:
        reporter = getattr(args, "_parser", None)
        if isinstance(reporter, OneLineParser):
            reporter.reject_unrecognized(extras)
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _guard_stdout()
    try:
        code = run(args)
        sys.stdout.flush()
        return code
    except ShadowtapError as exc:
        print(f"shadowtap {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"shadowtap {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
