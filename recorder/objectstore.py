"""Tapes in S3-compatible object storage: list and stream segments, upload closed ones.

A tape URL ``s3://bucket/prefix`` names every segment (``*.stape``) under the prefix, at any depth;
the key's folder below the prefix is the segment's **source** (one sidecar, one writer), so
``s3://tapes/prod`` holding ``prod/pod-a/seg-....stape`` and ``prod/pod-b/seg-....stape`` is one tape
of two sources, which readers merge by start time. Writers never write to the bucket directly: they
write segments into a local spool directory, and a ``SegmentUploader`` thread uploads each closed
segment to ``<prefix>/<source>/<segment name>`` (multipart above a threshold), then removes it or
moves it to ``<spool>/uploaded/``.

The client is boto3 with its standard credential chain (environment, profile, instance role;
``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` for a server other than AWS), imported on first use.
Every failure is translated here into the house's errors naming the URL. This module must never hold
a whole segment in memory (reads stream the object body; uploads read the file in parts), and the
uploader must never raise into, wait on or slow the writer that hands it segments: a failed upload
is retried with backoff and counted, and the spool is bounded (``UploadOptions.max_spool_bytes``: past
it the writer refuses to record and counts, it never deletes a segment that is not uploaded).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shadowtap.recorder.errors import ConfigError, InputFormatError, TapeWriteError

__all__ = [
    "ObjectSegment",
    "ObjectUrl",
    "SegmentUploader",
    "UploadOptions",
    "UploadStats",
    "default_spool_directory",
    "is_object_url",
    "list_object_segments",
    "open_object_segment",
]

log = logging.getLogger(__name__)

SCHEME: Final = "s3://"
_SEGMENT_SUFFIX: Final = ".stape"
_MiB: Final = 1024 * 1024
#: What the one-line error says when the extra is missing.
NEEDS_BOTO3: Final = "s3:// tapes need boto3: pip install 'shadowtap[s3]'"
#: HTTP connections one client keeps: a reader merging many sources holds one open body per source.
_MAX_POOL_CONNECTIONS: Final = 64
#: A body read that fails mid-stream is resumed with a ranged GET this many times in a row.
_READ_RESUMES: Final = 3
#: Where the spool keeps segments already uploaded, under the ``keep`` policy.
UPLOADED_DIRECTORY: Final = "uploaded"
_SOURCE_CHARS: Final = re.compile(r"[^A-Za-z0-9._-]")


def is_object_url(path: object) -> bool:
    """True for a tape path that names object storage (``s3://...``)."""
    return isinstance(path, str) and path.startswith(SCHEME)


@dataclass(frozen=True, slots=True)
class ObjectUrl:
    """``s3://bucket/prefix``: ``prefix`` without leading or trailing slashes (may be empty)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> ObjectUrl:
        if not is_object_url(url):
            raise ConfigError("expected an s3://bucket/prefix URL", url=url)
        bucket, _, prefix = url[len(SCHEME) :].partition("/")
        if not bucket:
            raise ConfigError("the URL names no bucket", url=url)
        return cls(bucket, prefix.strip("/"))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)


@dataclass(frozen=True, slots=True)
class ObjectSegment:
    """One segment object: ``source`` is its key's folder below the tape URL's prefix."""

    bucket: str
    key: str
    size: int
    source: str

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


# --- the client ------------------------------------------------------------------------------------

_client_lock = threading.Lock()
_client: Any = None


def s3_client() -> Any:
    """The process's boto3 S3 client (thread-safe, made once); ``ConfigError`` without boto3."""
    global _client
    with _client_lock:
        if _client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise ConfigError(NEEDS_BOTO3) from exc
            config = Config(
                max_pool_connections=_MAX_POOL_CONNECTIONS,
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
            )
            # boto3 reads AWS_ENDPOINT_URL(_S3) itself; the region only matters to AWS signing.
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            _client = boto3.session.Session().client("s3", config=config, region_name=region or "us-east-1")
        return _client


def reset_client() -> None:
    """Forget the client, so the next call reads the environment again (tests, forked children)."""
    global _client
    with _client_lock:
        _client = None


def _forget_client_in_child() -> None:
    """A forked child (``diff --workers`` forks its workers) makes a client of its own: the one it
    inherited holds the parent's pooled connections, and two processes reading one socket get each
    other's bytes (seen as frames failing their checksum)."""
    global _client, _client_lock
    _client_lock = threading.Lock()
    _client = None


os.register_at_fork(after_in_child=_forget_client_in_child)


def _describe(exc: BaseException) -> str:
    """One line for a boto3/botocore failure: the S3 error code and message when there is one."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code, message = error.get("Code", ""), error.get("Message", "")
        if code or message:
            return f"{code}: {message}" if code and message else str(code or message)
    return str(exc) or type(exc).__name__


def _boto_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, OSError)


# --- reading -----------------------------------------------------------------------------------------


def list_object_segments(url: str) -> list[ObjectSegment]:
    """The segments of the tape at ``url``, sorted by source then name (each source's reading order).

    ``url`` names a prefix (every ``*.stape`` below it) or one segment object.
    """
    where = ObjectUrl.parse(url)
    client = s3_client()
    errors = _boto_errors()
    out: list[ObjectSegment] = []
    prefix = where.prefix
    try:
        if prefix.endswith(_SEGMENT_SUFFIX):
            head = client.head_object(Bucket=where.bucket, Key=prefix)
            source = prefix.rpartition("/")[0]
            return [ObjectSegment(where.bucket, prefix, int(head["ContentLength"]), source)]
        listed = prefix + "/" if prefix else ""
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=where.bucket, Prefix=listed):
            for item in page.get("Contents", ()):
                key = item["Key"]
                if not key.endswith(_SEGMENT_SUFFIX):
                    continue
                source = key[len(listed) :].rpartition("/")[0]
                out.append(ObjectSegment(where.bucket, key, int(item["Size"]), source))
    except errors as exc:
        raise InputFormatError(f"cannot list the tape: {_describe(exc)}", url=url) from exc
    if not out:
        raise InputFormatError("no tape segments (*.stape) under this prefix", url=url)
    out.sort(key=lambda s: (s.source, s.name))
    return out


class ObjectStream:
    """A segment object read front to back: ``read(n)`` streams the GET's body (never the whole
    object), resuming with a ranged GET from where it stopped if the connection drops; ``seek``
    moves on before a read (a reader of part of the object)."""

    def __init__(self, segment: ObjectSegment) -> None:
        self.segment = segment
        self.position = 0
        self._body: Any = None
        self._client = s3_client()
        self._errors = _boto_errors()

    def _open(self) -> None:
        extra = {"Range": f"bytes={self.position}-"} if self.position else {}
        try:
            response = self._client.get_object(Bucket=self.segment.bucket, Key=self.segment.key, **extra)
        except self._errors as exc:
            raise InputFormatError(f"cannot read tape segment: {_describe(exc)}", url=str(self.segment)) from exc
        self._body = response["Body"]

    def read(self, size: int = -1) -> bytes:
        if self.position >= self.segment.size:
            return b""
        for attempt in range(_READ_RESUMES + 1):
            if self._body is None:
                self._open()
            try:
                data: bytes = self._body.read(size if size >= 0 else None)
                if not data and size != 0:
                    raise OSError(f"the body ended at byte {self.position} of {self.segment.size}")
            except self._errors as exc:
                self._drop_body()
                if attempt == _READ_RESUMES:
                    message = f"cannot read tape segment: {_describe(exc)}"
                    raise InputFormatError(message, url=str(self.segment), offset=self.position) from exc
                continue
            self.position += len(data)
            return data
        return b""  # not reached: the last attempt returns or raises

    def seek(self, position: int) -> int:
        """Read from ``position`` on (a ranged GET when the next read opens the body)."""
        if position != self.position:
            self._drop_body()
            self.position = position
        return position

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):
                body.close()

    def close(self) -> None:
        self._drop_body()

    def __enter__(self) -> ObjectStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_object_segment(segment: ObjectSegment) -> ObjectStream:
    return ObjectStream(segment)


# --- writing -----------------------------------------------------------------------------------------


def default_source() -> str:
    """This writer's folder under the tape's prefix: ``SHADOWTAP_TAPE_SOURCE``, else the host name
    (a pod's name in Kubernetes), so sidecars sharing a prefix never write the same key."""
    name = os.environ.get("SHADOWTAP_TAPE_SOURCE") or socket.gethostname() or "shadowtap"
    return _SOURCE_CHARS.sub("_", name)


def default_spool_directory(url: str) -> Path:
    """``$XDG_STATE_HOME/shadowtap/spool/<bucket>/<prefix>`` (or under ``~/.local/state``)."""
    where = ObjectUrl.parse(url)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state, "shadowtap", "spool", where.bucket, *[p for p in where.prefix.split("/") if p])


@dataclass(frozen=True, slots=True)
class UploadOptions:
    """Where and how a writer's closed segments go to object storage."""

    #: ``s3://bucket/prefix``; segments are uploaded to ``<prefix>/<source>/<segment name>``.
    url: str
    #: This writer's folder under the prefix; empty: ``default_source()``.
    source: str = ""
    #: After an upload, keep the local segment (moved to ``<spool>/uploaded/``) instead of removing it.
    keep_uploaded: bool = False
    #: Segments at least this big are uploaded in parts of this size (S3 wants parts of 5 MiB or more).
    multipart_threshold_bytes: int = 64 * _MiB
    #: Bytes of closed segments waiting for upload the spool may hold; past it the writer refuses
    #: new exchanges (counted as write errors) until uploads catch up. Never deletes a segment.
    max_spool_bytes: int = 8 * 1024 * _MiB
    #: A failed upload is retried after this long, doubling up to ``retry_max_s``.
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    #: When the writer closes, it waits at most this long for the uploads left; the rest stay in
    #: the spool and are uploaded by the next writer over it.
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        ObjectUrl.parse(self.url)
        if not isinstance(self.multipart_threshold_bytes, int) or self.multipart_threshold_bytes < 5 * _MiB:
            raise ConfigError("must be an integer of at least 5242880", field="tape.upload.multipart_threshold_bytes")
        if not isinstance(self.max_spool_bytes, int) or self.max_spool_bytes < 1:
            raise ConfigError("must be a positive integer", field="tape.upload.max_spool_bytes")
        for key in ("retry_initial_s", "retry_max_s", "drain_timeout_s"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or value < 0:
                raise ConfigError("must be zero or a positive number of seconds", field=f"tape.upload.{key}")
        if self.source and _SOURCE_CHARS.search(self.source):
            raise ConfigError("letters, digits, '.', '_' and '-' only", field="tape.upload.source")


@dataclass(frozen=True, slots=True)
class UploadStats:
    """An uploader's counters: segments (and their bytes) uploaded, failed attempts, what waits,
    and how many writes it refused because the spool held ``max_spool_bytes``."""

    uploaded: int = 0
    uploaded_bytes: int = 0
    failures: int = 0
    pending: int = 0
    pending_bytes: int = 0
    spool_full: int = 0
    last_error: str = ""


class SegmentUploader:
    """One thread uploading a spool directory's closed segments, in order, retrying with backoff.

    ``submit`` (from the writer's thread) queues a closed segment and returns at once. ``start``
    also queues segments left in the spool by an earlier writer whose process is gone (by the pid
    in the name), so a crash or an outage longer than ``drain_timeout_s`` loses nothing.
    """

    def __init__(self, directory: Path, options: UploadOptions) -> None:
        self.directory = directory
        self.options = options
        self.url = ObjectUrl.parse(options.url)
        self.source = options.source or default_source()
        self._queue: collections.deque[tuple[Path, int]] = collections.deque()
        self._queued: set[Path] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._uploaded = 0
        self._uploaded_bytes = 0
        self._failures = 0
        self._pending_bytes = 0
        self._spool_full = 0
        self._last_error = ""
        self._logged: set[str] = set()

    # --- the writer's side ---

    def start(self) -> None:
        if self._thread is not None:
            return
        for path in self._leftovers():
            self.submit(path)
        self._thread = threading.Thread(target=self._run, name=f"tape-uploader:{self.url}", daemon=True)
        self._thread.start()
        # A writer process that exits without closing its writer still drains what it can.
        atexit.register(self.close)

    def submit(self, path: Path) -> None:
        try:
            size = path.stat().st_size
        except OSError:
            return  # gone already (another writer over this spool uploaded it)
        with self._lock:
            if path in self._queued:
                return
            self._queued.add(path)
            self._queue.append((path, size))
            self._pending_bytes += size
        self._wake.set()

    def admits(self, more_bytes: int) -> bool:
        """Whether the spool may take ``more_bytes`` more; False counts a refusal."""
        if self._pending_bytes + more_bytes <= self.options.max_spool_bytes:
            return True
        self._spool_full += 1
        return False

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def close(self, timeout_s: float | None = None) -> None:
        """Stop after the queued uploads, waiting at most ``timeout_s`` (default ``drain_timeout_s``)."""
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        self._closing = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(self.options.drain_timeout_s if timeout_s is None else timeout_s)
            if thread.is_alive():
                log.warning(
                    "%d tape segment(s) not uploaded to %s yet; they stay in %s for the next writer",
                    len(self._queue),
                    self.url,
                    self.directory,
                )

    @property
    def stats(self) -> UploadStats:
        with self._lock:
            pending = len(self._queue)
        return UploadStats(
            uploaded=self._uploaded,
            uploaded_bytes=self._uploaded_bytes,
            failures=self._failures,
            pending=pending,
            pending_bytes=self._pending_bytes,
            spool_full=self._spool_full,
            last_error=self._last_error,
        )

    # --- the thread ---

    def _leftovers(self) -> list[Path]:
        """Closed segments an earlier writer left here: its process is gone."""
        try:
            names = sorted(p for p in self.directory.iterdir() if p.name.endswith(_SEGMENT_SUFFIX) and p.is_file())
        except OSError:
            return []
        return [p for p in names if not _writer_alive(p)]

    def _run(self) -> None:
        delay_s = self.options.retry_initial_s
        while True:
            with self._lock:
                head = self._queue[0] if self._queue else None
            if head is None:
                if self._closing:
                    return
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            path, size = head
            try:
                self._upload(path)
            except TapeWriteError as exc:
                self._failures += 1
                self._note(exc)
                if self._closing:
                    return  # the segment stays in the spool for the next writer
                self._wake.wait(delay_s)
                self._wake.clear()
                delay_s = min(max(delay_s * 2, 0.01), self.options.retry_max_s)
                continue
            delay_s = self.options.retry_initial_s
            with self._lock:
                self._queue.popleft()
                self._queued.discard(path)
                self._pending_bytes -= size
            self._uploaded += 1
            self._uploaded_bytes += size

    def _upload(self, path: Path) -> None:
        key = self.url.key(self.source, path.name)
        target = f"{SCHEME}{self.url.bucket}/{key}"
        try:
            from boto3.s3.transfer import TransferConfig

            threshold = self.options.multipart_threshold_bytes
            config = TransferConfig(multipart_threshold=threshold, multipart_chunksize=threshold, use_threads=False)
            s3_client().upload_file(str(path), self.url.bucket, key, Config=config)
        except FileNotFoundError:
            return  # another writer over this spool uploaded it and took it away
        except ImportError as exc:
            raise TapeWriteError(NEEDS_BOTO3, url=target) from exc
        except ConfigError as exc:
            raise TapeWriteError(exc.message, url=target) from exc
        except Exception as exc:  # boto3's S3UploadFailedError, botocore's errors, OSError
            raise TapeWriteError(f"upload failed: {_describe(exc)}", path=str(path), url=target) from exc
        try:
            if self.options.keep_uploaded:
                kept = self.directory / UPLOADED_DIRECTORY
                kept.mkdir(mode=0o700, exist_ok=True)
                path.rename(kept / path.name)
            else:
                path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._note(TapeWriteError(f"uploaded, but cannot move it: {exc.strerror or exc}", path=str(path)))

    def _note(self, exc: TapeWriteError) -> None:
        message = str(exc)
        self._last_error = message
        cause = exc.__cause__
        kind = type(cause).__name__ if cause is not None else "upload"
        if kind not in self._logged:
            self._logged.add(kind)
            log.error("%s (retried with backoff; further %s errors are counted, not logged)", message, kind)


#: The segments writers in this process have open (a spool may be shared by two writers here).
_open_here: set[Path] = set()


def segment_opened(path: Path) -> None:
    _open_here.add(path)


def segment_closed(path: Path) -> None:
    _open_here.discard(path)


def _writer_alive(path: Path) -> bool:
    """Whether the writer of segment ``path`` (``seg-...-p<pid>-...``) may still have it open."""
    match = re.search(r"-p(\d+)-\d+\.stape$", path.name)
    if match is None:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return path in _open_here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
