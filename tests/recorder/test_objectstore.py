"""The object-storage pieces that need no server: URLs, options, where a writer spools, leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shadowtap.recorder import TapeOptions, objectstore
from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.objectstore import (
    ObjectUrl,
    SegmentUploader,
    UploadOptions,
    default_source,
    default_spool_directory,
    is_object_url,
)
from shadowtap.recorder.writer import tape_target


def test_urls_parse_into_bucket_and_prefix() -> None:
    assert ObjectUrl.parse("s3://tapes/prod/checkout/") == ObjectUrl("tapes", "prod/checkout")
    assert ObjectUrl.parse("s3://tapes") == ObjectUrl("tapes", "")
    assert str(ObjectUrl.parse("s3://tapes//a/")) == "s3://tapes/a"
    assert ObjectUrl("tapes", "prod").key("pod-a", "seg.stape") == "prod/pod-a/seg.stape"
    assert ObjectUrl("tapes", "").key("pod-a", "seg.stape") == "pod-a/seg.stape"
    assert is_object_url("s3://x/y") and not is_object_url("tapes/s3://x") and not is_object_url(Path("s3:/x"))
    for bad in ("s3://", "s3:///prefix", "http://x/y"):
        with pytest.raises(ConfigError):
            ObjectUrl.parse(bad)


def test_upload_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="5242880"):
        UploadOptions(url="s3://b/p", multipart_threshold_bytes=1024)
    with pytest.raises(ConfigError, match="positive"):
        UploadOptions(url="s3://b/p", max_spool_bytes=0)
    with pytest.raises(ConfigError, match="letters"):
        UploadOptions(url="s3://b/p", source="../escape")
    with pytest.raises(ConfigError, match="upload options"):
        TapeOptions(upload="s3://b/p")  # type: ignore[arg-type]


def test_a_url_target_writes_to_a_spool_and_a_directory_stays_a_directory(tmp_path: Path) -> None:
    directory, options = tape_target(tmp_path / "tape")
    assert directory == tmp_path / "tape" and options.upload is None
    directory, options = tape_target("s3://tapes/prod", TapeOptions(compression="none"), spool=tmp_path / "spool")
    assert directory == tmp_path / "spool"
    assert options.upload == UploadOptions(url="s3://tapes/prod") and options.compression == "none"
    kept = TapeOptions(upload=UploadOptions(url="s3://other/x", keep_uploaded=True))
    _, options = tape_target("s3://tapes/prod", kept)
    assert options.upload is not None and options.upload.url == "s3://tapes/prod" and options.upload.keep_uploaded


def test_default_spool_and_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_spool_directory("s3://tapes/prod/checkout") == tmp_path / "shadowtap/spool/tapes/prod/checkout"
    monkeypatch.setenv("SHADOWTAP_TAPE_SOURCE", "pod a/1")
    assert default_source() == "pod_a_1"
    monkeypatch.delenv("SHADOWTAP_TAPE_SOURCE")
    assert default_source()  # the host name, never empty


def test_leftovers_are_segments_whose_writer_is_gone(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    names = {
        f"seg-20261205T000000.000000Z-p{dead_pid}-000001.stape": True,  # its writer exited
        f"seg-20261205T000001.000000Z-p{os.getppid()}-000001.stape": False,  # a live process writes it
        f"seg-20261205T000002.000000Z-p{os.getpid()}-000001.stape": True,  # this process's, not open here
        "notes.txt": False,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    uploader = SegmentUploader(tmp_path, UploadOptions(url="s3://tapes/p"))
    assert [p.name for p in uploader._leftovers()] == sorted(name for name, taken in names.items() if taken)


def test_a_forked_child_makes_a_client_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # diff --workers forks: a child using the parent's client would read from the parent's pooled
    # connections (each other's bytes, frames failing their checksum).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    objectstore.reset_client()
    parent = objectstore.s3_client()
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only with a client of its own
        os._exit(0 if objectstore._client is None and objectstore.s3_client() is not parent else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert objectstore.s3_client() is parent
    objectstore.reset_client()
