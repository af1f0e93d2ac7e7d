"""The CLI contract: help lists subcommands, bad input is one line and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shadowtap.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowtap", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_help_lists_every_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    from shadowtap.cli import discover_commands

    for module in discover_commands():
        assert module.NAME in result.stdout
        assert module.HELP.split()[0] in result.stdout


def test_unknown_subcommand_is_one_line_no_traceback() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert "frobnicate" in result.stderr


def test_no_subcommand_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("shadowtap ")


@pytest.mark.parametrize(
    "args",
    [
        ("tape", "info", "TAPE", "--since=--"),
        ("diff", "TAPE", "--html=--"),
        ("diff", "TAPE", "--min-samples=--"),
        ("report", "--db=--"),
        ("replay", "TAPE", "--target=--"),
        ("replay", "TAPE", "--target", "http://127.0.0.1:9", "--header=--"),
        ("--log-level=--", "tape", "info", "TAPE"),
    ],
)
def test_an_option_given_the_end_of_options_marker_is_one_line(args: tuple[str, ...]) -> None:
    # argparse hands `--opt=--` to the command as an empty list: it ended in a traceback.
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    option = next(a for a in args if a.endswith("=--")).removesuffix("=--")
    assert f"argument {option}: '--' is not a value" in result.stderr
