"""recorder: the Exchange model, the tape (reader, writer, redaction) and format importers/exporters.

It imports no other shadowtap package but ``wire``; every other package may import it. The tape's
decode path (frames, record decoding) runs compiled when a build matching these sources is
present; see ``shadowtap.wire.native``. Activation has to come before any of its modules is imported.
"""

# ruff: noqa: E402  (the compiled modules are chosen before any of them is imported)
from shadowtap.wire import native

native.activate(__path__, "recorder")

from shadowtap.recorder.errors import (
    ConfigError,
    InputFormatError,
    ShadowtapError,
    TapeFormatError,
    TapeVersionError,
    TapeWriteError,
    UpstreamError,
)
from shadowtap.recorder.merge import MergeResult, merge_tapes
from shadowtap.recorder.model import (
    PRIMARY,
    REPLAY,
    Exchange,
    Failure,
    FailureKind,
    Header,
    Headers,
    Outcome,
    Request,
    Response,
    Timing,
    exchange_from_wire,
    exchange_to_wire,
    header_value,
    header_values,
)
from shadowtap.recorder.reader import (
    SegmentReport,
    SkippedRange,
    TapeFilter,
    TapeReader,
    TapeReadReport,
    TornTail,
    tape_segments,
)
from shadowtap.recorder.redact import RedactionRules, Redactor
from shadowtap.recorder.writer import SyncTapeWriter, TapeOptions, TapeWriter, TapeWriterStats

__all__ = [
    "PRIMARY",
    "REPLAY",
    "ConfigError",
    "Exchange",
    "Failure",
    "FailureKind",
    "Header",
    "Headers",
    "InputFormatError",
    "Outcome",
    "Request",
    "Response",
    "ShadowtapError",
    "TapeFormatError",
    "TapeVersionError",
    "TapeWriteError",
    "Timing",
    "UpstreamError",
    "exchange_from_wire",
    "exchange_to_wire",
    "header_value",
    "header_values",
    # the tape
    "MergeResult",
    "RedactionRules",
    "Redactor",
    "SegmentReport",
    "SkippedRange",
    "SyncTapeWriter",
    "TapeFilter",
    "TapeOptions",
    "TapeReadReport",
    "TapeReader",
    "TapeWriter",
    "TapeWriterStats",
    "TornTail",
    "merge_tapes",
    "tape_segments",
]
