"""shadowtap.recorder.private: outputs that may hold recorded traffic are owner-only from their first byte."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowtap.recorder.private import create_private, narrow_existing, open_private, warn_if_shared_directory


@pytest.fixture(params=[0o022, 0o000])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_are_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    with open_private(tmp_path / "t.txt") as out:
        out.write("h\u00e9")
    with open_private(tmp_path / "b.bin", "wb") as out:
        out.write(b"\0")
    create_private(tmp_path / "db")
    assert (tmp_path / "t.txt").read_text("utf-8") == "h\u00e9" and (tmp_path / "b.bin").read_bytes() == b"\0"
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == {"t.txt": 0o600, "b.bin": 0o600, "db": 0o600}


def test_a_wider_existing_file_is_narrowed_before_it_is_written(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "report.json"
    path.write_text("old contents that are longer")
    path.chmod(0o644)
    with open_private(path) as out:
        # Narrowed and emptied at open, before the first byte of the new contents.
        assert mode(path) == 0o600 and path.read_text() == ""
        out.write("new")
    assert path.read_text() == "new"
    kept = tmp_path / "store.db"
    kept.write_bytes(b"kept")
    kept.chmod(0o664)
    create_private(kept)
    assert mode(kept) == 0o600 and kept.read_bytes() == b"kept"


def test_exclusive_refuses_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "tmp").write_text("x")
    with pytest.raises(FileExistsError):
        open_private(tmp_path / "tmp", exclusive=True)


def test_narrow_existing_never_creates_nor_follows_links(tmp_path: Path) -> None:
    narrow_existing(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    target = tmp_path / "target"
    target.write_text("x")
    target.chmod(0o644)
    (tmp_path / "link").symlink_to(target)
    narrow_existing(tmp_path / "link")
    assert mode(target) == 0o644
    narrow_existing(target)
    assert mode(target) == 0o600


def test_a_pipe_is_written_to_and_left_alone(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    try:
        with open_private(f"/proc/self/fd/{write_fd}", "wb") as out:
            out.write(b"through")
        assert os.read(read_fd, 100) == b"through"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_shared_directory_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with caplog.at_level(logging.WARNING, logger="shadowtap.recorder.private"):
        assert warn_if_shared_directory(shared) is True
        assert warn_if_shared_directory(private) is False
        assert warn_if_shared_directory(tmp_path / "missing") is False
    (record,) = caplog.records
    assert str(shared) in record.getMessage() and "755" in record.getMessage()
