"""The exception tree: one root, built-in bases where they fit, locations in the message."""

from __future__ import annotations

from shadowtap.recorder.errors import (
    ConfigError,
    InputFormatError,
    ShadowtapError,
    TapeFormatError,
    TapeVersionError,
    TapeWriteError,
    UpstreamError,
)


def test_tree_shape() -> None:
    assert issubclass(TapeVersionError, TapeFormatError)
    assert issubclass(TapeFormatError, InputFormatError)
    for cls, builtin in [
        (ConfigError, ValueError),
        (InputFormatError, ValueError),
        (TapeWriteError, OSError),
        (UpstreamError, ConnectionError),
    ]:
        assert issubclass(cls, ShadowtapError)
        assert issubclass(cls, builtin)


def test_message_names_the_location() -> None:
    assert str(TapeFormatError("bad checksum", path="a.tape", offset=128)) == "a.tape at byte 128: bad checksum"
    assert str(ConfigError("must be 0..100", field="mirror.sample_percent")) == (
        "field 'mirror.sample_percent': must be 0..100"
    )
    assert str(UpstreamError("refused", url="http://127.0.0.1:1/")) == "http://127.0.0.1:1/: refused"
    assert str(ShadowtapError("plain")) == "plain"
