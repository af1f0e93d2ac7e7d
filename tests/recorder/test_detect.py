"""Format detection from a file's first bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowtap.recorder import ConfigError, InputFormatError
from shadowtap.recorder.formats import GorReader, HarReader, MitmReader, detect_format, open_importer, sniff

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize(
    ("name", "fmt", "reader", "count"),
    [
        ("goreplay/httpbin.gor", "gor", GorReader, 14),
        ("goreplay/httpbin-run2.gor", "gor", GorReader, 12),
        ("goreplay/httpbin-cut.gor", "gor", GorReader, 12),
        ("mitmproxy/httpbin.mitm", "mitm", MitmReader, 14),
        ("mitmproxy/httpbin.har", "har", HarReader, 14),
        ("mitmproxy/every-type.mitm", "mitm", MitmReader, 12),
        ("chromium/playwright.har", "har", HarReader, 15),
        ("chromium/attach/playwright.har", "har", HarReader, 15),
        ("goreplay/keepalive-1.3.gor", "gor", GorReader, 6),
    ],
)
def test_every_fixture_is_recognised_and_imports(name: str, fmt: str, reader: type, count: int) -> None:
    path = FIXTURES / name
    assert detect_format(path) == fmt
    importer = open_importer(path)
    assert isinstance(importer, reader)
    assert sum(1 for _ in importer) == count == importer.report.imported


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b'\xef\xbb\xbf  \n{"log": {}}', "har"),
        (b"1 0123456789abcdef01234567 1700000000000000000 5\nGET / HTTP/1.1\r\n", "gor"),
        (b"3 " + b"f" * 40 + b" 1\r\nHTTP/1.1 200 OK\r\n", "gor"),
        (b"1234:5:hello,", "mitm"),
        (b"GET / HTTP/1.1\r\n", None),
        (b"", None),
        (b"1 2 3\n", "gor"),
    ],
)
def test_sniff(head: bytes, fmt: str | None) -> None:
    assert sniff(head) == fmt


def test_gzip_content_is_sniffed(tmp_path: Path) -> None:
    import gzip

    for name, fmt in (("goreplay/httpbin.gor", "gor"), ("mitmproxy/httpbin.har", "har")):
        packed = tmp_path / f"x.{fmt}.gz"
        packed.write_bytes(gzip.compress((FIXTURES / name).read_bytes()))
        assert detect_format(packed) == fmt


def test_unknown_empty_and_directory_inputs_are_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01 not a capture")
    with pytest.raises(InputFormatError, match="name it with --from") as info:
        detect_format(junk)
    assert info.value.path == str(junk) and info.value.offset == 0
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(InputFormatError, match="the file is empty"):
        detect_format(empty)
    with pytest.raises(InputFormatError, match="is a directory"):
        detect_format(tmp_path)
    with pytest.raises(InputFormatError, match="cannot read"):
        detect_format(tmp_path / "missing.har")
    with pytest.raises(ConfigError, match="unknown format 'pcap'"):
        open_importer(junk, "pcap")


def test_a_playwright_har_zip_says_to_unzip_it(tmp_path: Path) -> None:
    import zipfile

    # Playwright writes the HAR and its bodies as a zip when record_har_path ends in .zip.
    packed = tmp_path / "session.zip"
    with zipfile.ZipFile(packed, "w") as archive:
        archive.write(FIXTURES / "chromium" / "playwright.har", "har.har")
    with pytest.raises(InputFormatError, match="zip archive") as info:
        detect_format(packed)
    assert "unzip it" in str(info.value) and info.value.path == str(packed)
