"""What every subcommand's flags share: one spelling per idea, old spellings as deprecated aliases,
and help that shows defaults.

The shared spellings: ``--no-redaction`` (write secrets as they are), ``--path-regex`` (a regular
expression searched in the request path, without the query), ``--since``/``--until`` only for
wall-clock times (ISO 8601 or epoch seconds). An old spelling stays as a hidden alias for a release:
it still works and prints one line on stderr naming the new one. This module must never change what
a flag means, only how it is spelled, and never import anything heavy (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

#: The one spelling of the switch that turns tape redaction off, in every subcommand that writes a tape.
NO_REDACTION = "--no-redaction"
#: The one spelling of the request path filter: a regular expression searched in the path (no query).
PATH_REGEX = "--path-regex"
#: The one spelling of "no live progress on stderr" (it is only ever drawn on a terminal).
NO_PROGRESS = "--no-progress"
NO_PROGRESS_HELP = "no progress bar on stderr (one is drawn only on a terminal, for large inputs)"


class _DeprecatedAlias(argparse.Action):
    """An old spelling of ``replacement``: stores into the same ``dest`` and says it is deprecated."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        *,
        replacement: str,
        note: str = "",
        nargs: int | str | None = None,
        const: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(option_strings, dest, nargs=nargs, const=const, **kwargs)
        self.replacement = replacement
        self.note = note

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        note = f" ({self.note})" if self.note else ""
        print(f"shadowtap: {option_string} is deprecated, use {self.replacement}{note}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecated_switch(container: argparse._ActionsContainer, old: str, replacement: str, dest: str) -> None:
    """``old`` as a hidden, deprecated spelling of the ``store_true`` switch ``replacement``."""
    container.add_argument(
        old,
        dest=dest,
        action=_DeprecatedAlias,
        replacement=replacement,
        nargs=0,
        const=True,
        # SUPPRESS: the default is the replacement's, whichever of the two argparse meets first.
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


def deprecated_option(
    container: argparse._ActionsContainer, old: str, replacement: str, dest: str, *, note: str = "", **kwargs: Any
) -> None:
    """``old`` as a hidden, deprecated spelling of the option ``replacement`` (one value, same type)."""
    container.add_argument(
        old,
        dest=dest,
        action=_DeprecatedAlias,
        replacement=replacement,
        note=note,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
        **kwargs,
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples in the epilog keep their lines; an option's default is shown when it has one.

    A default is shown unless the help already says it, or there is none to show: ``None``, a switch
    that is off, an empty list.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not text
            or text is argparse.SUPPRESS
            or "default" in text
            or not action.option_strings
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or default == []
        ):
            return action.help
        return text + " (default: %(default)s)"
