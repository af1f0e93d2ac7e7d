"""The demo's output folder: each run starts from a clean one, and nothing but the demo's own files is removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowtap.demo.run import OUTPUT_MARKER, OUTPUT_NAMES, prepare_out_dir
from shadowtap.recorder.errors import ShadowtapError


def _previous_run(out: Path) -> None:
    """What an earlier demo left behind (the layout before the marker existed)."""
    (out / "tape").mkdir(parents=True)
    (out / "tape" / "seg-1.stape").write_bytes(b"x")
    (out / "replay-tape").mkdir()
    (out / "replay-tape" / "seg-1.stape").write_bytes(b"x")
    (out / "logs").mkdir()
    (out / "logs" / "proxy.log").write_text("log")
    for name in ("report.html", "report.json", "diff-config.yaml", "diff.sqlite", "diff.sqlite-wal"):
        (out / name).write_text("old")


def test_a_missing_folder_is_created_and_marked(tmp_path: Path) -> None:
    out = tmp_path / "a" / "demo-output"
    assert prepare_out_dir(out) == []
    assert out.is_dir() and (out / OUTPUT_MARKER).is_file()


def test_an_earlier_runs_output_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "demo-output"
    _previous_run(out)
    removed = prepare_out_dir(out)
    assert set(removed) == {
        "tape", "replay-tape", "logs", "report.html", "report.json", "diff-config.yaml", "diff.sqlite",
        "diff.sqlite-wal",
    }  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER]


def test_with_the_marker_only_the_demos_own_names_go(tmp_path: Path) -> None:
    out = tmp_path / "demo-output"
    _previous_run(out)
    (out / OUTPUT_MARKER).write_text("")
    (out / "notes.txt").write_text("mine")
    (out / "my-tapes").mkdir()
    prepare_out_dir(out)
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "my-tapes", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


def test_a_folder_the_demo_did_not_write_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "project"
    _previous_run(out)
    (out / "src").mkdir()
    with pytest.raises(ShadowtapError, match=r"project.*src.*--out"):
        prepare_out_dir(out)
    assert (out / "tape" / "seg-1.stape").exists() and (out / "report.json").read_text() == "old"
    assert not (out / OUTPUT_MARKER).exists()


def test_a_folder_with_other_files_and_none_of_the_demos_is_used_as_is(tmp_path: Path) -> None:
    out = tmp_path / "scratch"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert prepare_out_dir(out) == []
    assert (out / "notes.txt").read_text() == "mine" and (out / OUTPUT_MARKER).exists()


def test_symlinks_are_unlinked_never_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    out = tmp_path / "demo-output"
    out.mkdir()
    (out / OUTPUT_MARKER).write_text("")
    (out / "tape").symlink_to(elsewhere, target_is_directory=True)
    (out / "report.json").symlink_to(elsewhere / "precious")
    prepare_out_dir(out)
    assert not (out / "tape").exists() and not (out / "tape").is_symlink()
    assert (elsewhere / "precious").read_text() == "keep"


def test_a_file_where_the_folder_should_be_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "demo-output"
    out.write_text("not a folder")
    with pytest.raises(ShadowtapError, match="not a folder"):
        prepare_out_dir(out)


def test_the_names_cover_everything_the_demo_writes() -> None:
    assert {"tape", "replay-tape", "logs", "report.html", "report.json", "diff.sqlite"} <= set(OUTPUT_NAMES)
    assert OUTPUT_MARKER in OUTPUT_NAMES
