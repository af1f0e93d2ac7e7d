"""Generates docs/cli.md (from the argparse tree) and docs/config.md (from the config parsers).

``python -m shadowtap.docgen`` rewrites both; ``--check`` exits 1 when a checked-in file differs (the
test suite runs the same comparison). It must never hand-edit content: everything comes from the
parsers' own help strings, fields and key tables.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shadowtap.cli import build_parser, discover_commands

DOCS = Path(__file__).resolve().parent.parent / "docs"
CLI_DOC = DOCS / "cli.md"
CONFIG_DOC = DOCS / "config.md"

HEADER = """\
# Command-line reference

Generated from the CLI itself by `python -m shadowtap.docgen` (`make docs`); a test fails when this
file is out of date. Every subcommand prints the same text with `--help`.
"""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help_text(parser: argparse.ArgumentParser) -> str:
    return parser.format_help().rstrip()


def render() -> str:
    # argparse wraps to the terminal width; a fixed width makes the output the same everywhere.
    os.environ["COLUMNS"] = "100"
    parser = build_parser()
    parser.prog = "shadowtap"
    parts = [HEADER, "## shadowtap\n", "```text", _help_text(parser), "```", ""]
    commands = {module.NAME: module for module in discover_commands()}
    for name, sub in _subparsers(parser).items():
        parts += [f"## shadowtap {name}\n", commands[name].HELP + ".\n" if name in commands else "", "```text"]
        parts += [_help_text(sub), "```", ""]
        for nested_name, nested in _subparsers(sub).items():
            parts += [f"### shadowtap {name} {nested_name}\n", "```text", _help_text(nested), "```", ""]
    return "\n".join(parts).rstrip() + "\n"


def generated() -> dict[Path, str]:
    from shadowtap import configdoc

    return {CLI_DOC: render(), CONFIG_DOC: configdoc.render()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shadowtap.docgen", description="Regenerate docs/cli.md and docs/config.md."
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated doc is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated().items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    for path in stale:
        print(f"{path} is out of date: run `make docs`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
