"""One spelling per idea across subcommands; old spellings still work for a release and say so;
a mistyped flag or subcommand names the nearest one and that subcommand's help."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from shadowtap.cli import build_parser, main
from shadowtap.commands.replay import build_job
from shadowtap.recorder import Exchange, SyncTapeWriter, TapeOptions, TapeReader
from tests.recorder.tape_samples import make_exchange
from tests.replayer.tapes import make_exchange as make_timed_exchange

PLAIN = TapeOptions(redaction=None, fsync="none")


def write(directory: Path, exchanges: list[Exchange]) -> Path:
    with SyncTapeWriter(directory, PLAIN) as writer:
        writer.write_many(exchanges)
    return directory


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def help_text(*command: str) -> str:
    parser = build_parser()
    for name in command:
        parser = next(
            action.choices[name]  # type: ignore[index]
            for action in parser._actions
            if isinstance(action.choices, dict) and name in action.choices
        )
    return parser.format_help()


def spelled(flag: str, text: str) -> bool:
    """Whether ``flag`` itself (not a longer flag it begins) appears in ``text``."""
    return re.search(rf"{re.escape(flag)}(?![\w-])", text) is not None


# --- one spelling per idea --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "flag", "old"),
    [
        (("proxy",), "--no-redaction", None),
        (("replay",), "--no-redaction", "--no-redact-results"),
        (("import",), "--no-redaction", "--no-redact"),
        (("tape", "merge"), "--no-redaction", "--no-redact"),
        (("replay",), "--path-regex", None),
        (("tape", "info"), "--path-regex", "--path"),
        (("tape", "cat"), "--path-regex", "--path"),
        (("tape", "merge"), "--path-regex", "--path"),
        (("replay",), "--from-offset", "--since"),
        (("replay",), "--to-offset", "--until"),
    ],
)
def test_each_idea_has_one_spelling_in_help_and_old_ones_are_hidden(
    command: tuple[str, ...], flag: str, old: str | None
) -> None:
    text = help_text(*command)
    assert spelled(flag, text)
    if old is not None:
        assert not spelled(old, text)


def test_since_and_until_are_wall_clock_times_wherever_they_remain() -> None:
    for command in (("report",), ("tape", "info"), ("tape", "cat"), ("tape", "merge")):
        assert "--since TIME" in help_text(*command) and "--until TIME" in help_text(*command)
    assert not spelled("--since", help_text("replay")) and not spelled("--until", help_text("replay"))


def test_deprecated_path_still_filters_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tape = write(tmp_path / "tape", [make_exchange(i) for i in range(12)])
    code, new_out, err = run(capsys, "tape", "cat", str(tape), "--path-regex", r"^/users/1\d$")
    assert code == 0 and err == ""
    code, old_out, err = run(capsys, "tape", "cat", str(tape), "--path", r"^/users/1\d$")
    assert code == 0 and old_out == new_out
    assert [json.loads(line)["id"] for line in old_out.splitlines()] == ["ex-000010", "ex-000011"]
    assert err == "shadowtap: --path is deprecated, use --path-regex\n"


def test_deprecated_no_redact_still_works_for_merge_and_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = make_exchange(1)
    headers = (*secret.request.headers, (b"Authorization", b"Bearer s3cret"))
    tape = write(tmp_path / "tape", [replace(secret, request=replace(secret.request, headers=headers))])

    def authorization(path: Path) -> bytes:
        (exchange,) = TapeReader(path)
        return exchange.request.header(b"authorization") or b""

    code, _, err = run(capsys, "tape", "merge", str(tmp_path / "redacted"), str(tape))
    assert code == 0 and err == "" and b"s3cret" not in authorization(tmp_path / "redacted")
    code, _, err = run(capsys, "tape", "merge", str(tmp_path / "new"), str(tape), "--no-redaction")
    assert code == 0 and err == "" and authorization(tmp_path / "new") == b"Bearer s3cret"
    code, _, err = run(capsys, "tape", "merge", str(tmp_path / "old"), str(tape), "--no-redact")
    assert code == 0 and authorization(tmp_path / "old") == b"Bearer s3cret"
    assert err == "shadowtap: --no-redact is deprecated, use --no-redaction\n"

    gor = str(Path(__file__).resolve().parents[1] / "fixtures" / "goreplay" / "httpbin.gor")
    code, out, err = run(capsys, "import", gor, "--out", str(tmp_path / "imported"), "--no-redact")
    assert code == 0 and "(not redacted)" in out
    assert err == "shadowtap: --no-redact is deprecated, use --no-redaction\n"


def test_replay_old_spellings_map_to_the_new_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["replay", str(tmp_path / "tape"), "--target", "http://127.0.0.1:9"]
    new = build_job(build_parser().parse_args([*common, "--from-offset", "2", "--to-offset", "5.5", "--no-redaction"]))
    assert capsys.readouterr().err == ""
    old = build_job(build_parser().parse_args([*common, "--since", "2", "--until", "5.5", "--no-redact-results"]))
    assert old == new
    assert (new.plan.filters.since_s, new.plan.filters.until_s, new.redact_results) == (2.0, 5.5, False)
    assert capsys.readouterr().err.splitlines() == [
        "shadowtap: --since is deprecated, use --from-offset (seconds into the tape)",
        "shadowtap: --until is deprecated, use --to-offset (seconds into the tape)",
        "shadowtap: --no-redact-results is deprecated, use --no-redaction",
    ]
    default = build_job(build_parser().parse_args(common))
    assert default.redact_results and default.plan.filters.since_s is None


def test_replay_window_errors_name_the_new_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tape = write(tmp_path / "tape", [make_timed_exchange(i, i * 100) for i in range(3)])
    code, _, err = run(capsys, "replay", str(tape), "--target", "http://127.0.0.1:9", "--from-offset", "5",
                       "--to-offset", "1")  # fmt: skip
    assert code == 2 and "field '--to-offset'" in err and err.count("\n") == 1
    code, _, err = run(capsys, "replay", str(tape), "--target", "http://127.0.0.1:9", "--path-regex", "(")
    assert code == 2 and "field '--path-regex'" in err and err.count("\n") == 1


# --- mistakes name the nearest spelling and the right help ---------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowtap", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("args", "parser", "message", "nearest"),
    [
        (("replya", "tape"), "shadowtap", "argument COMMAND: invalid choice: 'replya'", "'replay'"),
        (("tape", "inf", "x"), "shadowtap tape", "argument ACTION: invalid choice: 'inf'", "'info'"),
        (("replay", "t", "--target", "http://127.0.0.1:9", "--sped", "2"), "shadowtap replay",
         "unrecognized arguments: --sped", "--speed"),
        (("tape", "info", "t", "--sinse=2024-01-01"), "shadowtap tape info",
         "unrecognized arguments: --sinse=2024-01-01", "--since"),
        (("proxy", "--primry", "http://127.0.0.1:9"), "shadowtap proxy", "unrecognized arguments: --primry",
         "--primary"),
        (("diff", "t", "--fail-onn", "any"), "shadowtap diff", "unrecognized arguments: --fail-onn", "--fail-on"),
    ],
)  # fmt: skip
def test_a_typo_names_the_nearest_spelling_and_that_subcommands_help(
    args: tuple[str, ...], parser: str, message: str, nearest: str
) -> None:
    result = run_cli(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{parser}: error: {message}"), result.stderr
    assert result.stderr.endswith(f"; did you mean {nearest}? (see '{parser} --help')\n"), result.stderr


def test_nothing_close_suggests_nothing() -> None:
    result = run_cli("replay", "t", "--target", "http://127.0.0.1:9", "--zzzzzzzz")
    assert result.returncode == 2 and "did you mean" not in result.stderr
    assert "unrecognized arguments: --zzzzzzzz (see 'shadowtap replay --help')" in result.stderr
    result = run_cli("frobnicate")
    assert result.returncode == 2 and "did you mean" not in result.stderr


def test_a_deprecated_spelling_is_never_suggested(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["import", "in.har", "--out", "t", "--no-redactt"])
    assert exited.value.code == 2
    assert "did you mean --no-redaction?" in capsys.readouterr().err
