"""The `shadowtap` command line: parses arguments and dispatches to one subcommand module.

Each subcommand is a module in ``shadowtap/commands/`` exposing ``NAME``, ``HELP``, ``ORDER``,
``configure(parser)`` and ``run(args) -> int``; this module finds them, so adding a subcommand never
edits this file. Command modules import their heavy dependencies inside ``run`` so ``--help`` stays
fast. This module must never let a user mistake end in a traceback: a ``ShadowtapError`` is printed
as one line and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import NoReturn, Protocol, cast

import shadowtap.commands
from recorder.errors import ShadowtapError
from shadowtap import __version__

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandModule(Protocol):
    NAME: str
    HELP: str
    ORDER: int

    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


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
            module.NAME, help=module.HELP, description=module.HELP, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.configure(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except ShadowtapError as exc:
        print(f"shadowtap {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"shadowtap {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `shadowtap tape cat | head`: the reader went away; that is not an error.
        sys.stderr.close()
        return 0
