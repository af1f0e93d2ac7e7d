"""The proxy's settings: a YAML/TOML mapping (or CLI flags) validated into frozen dataclasses.

``ProxyConfig.from_mapping(d)`` is the one way in; every error is a ``ConfigError`` naming the key
and the value (``shadows[0].url``). Values are decoded by ``shadowtap.recorder.settings``
(``typed_value``), the one decoder the differ's settings and ``shadowtap.proxy.flags.RuntimeFlags``
(the settings the admin API changes while running) use too. This module
must never do network or disk I/O (the CLI reads the file) and never read settings from anywhere but its input
and, for shadow credentials, the environment variables the config names.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from shadowtap.proxy.breaker import BreakerSettings
from shadowtap.proxy.forward import check_host, parse_primary
from shadowtap.proxy.rules import RouteRule
from shadowtap.proxy.sampling import SampleKey
from shadowtap.proxy.trips import TripRule, parse_trips
from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.redact import RULE_KINDS, RedactionRules, parse_json_path
from shadowtap.recorder.settings import (
    construct,
    field_type,
    reject_unknown,
    settings_from_mapping,
    typed_value,
)

__all__ = [
    "DEFAULT_STRIPPED_HEADERS",
    "AdminSettings",
    "EventsSettings",
    "ListenAddress",
    "LiveSettings",
    "MirrorSettings",
    "ProxyConfig",
    "RecordSettings",
    "ShadowSettings",
    "TlsSettings",
    "parse_listen",
    "file_value",
    "is_loopback_host",
]

#: Credentials never forwarded to a shadow unless the config swaps in shadow credentials for them.
DEFAULT_STRIPPED_HEADERS: Final = ("authorization", "cookie", "proxy-authorization", "x-api-key")
_MiB: Final = 1024 * 1024
#: The least a byte bound on a recording buffer may be: a few records of ordinary size.
_MIN_BUFFER_BYTES: Final = 64 * 1024
#: RFC 9110 token (a header name), and a header value that cannot split a header: visible ASCII.
_TOKEN_RE: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_VISIBLE_RE: Final = re.compile(r"^[!-~]+\Z")


def is_loopback_host(host: str) -> bool:
    """Whether only this machine can reach ``host``: the address is parsed, never matched by prefix
    (a name such as ``127.x.example`` can resolve anywhere); of names, only ``localhost`` counts."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("host must not be empty", field="host")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be within 0..65535, not {self.port!r}", field="port")

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: Any, *, field: str) -> ListenAddress:
    """``HOST:PORT``, ``[::1]:PORT`` or ``:PORT`` (loopback)."""
    if isinstance(value, ListenAddress):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"expected HOST:PORT, not {value!r}", field=field)
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(f"expected HOST:PORT, not {value!r}", field=field)
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]") and ":" in host):
            raise ConfigError(f"expected [IPv6]:PORT, not {value!r}", field=field)
        host = host[1:-1]
    host = host or "127.0.0.1"
    check_host(host, field=field, shown=value)
    try:
        return ListenAddress(host, int(port_text))
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} (in {value!r})", field=field) from exc


def _check_url(url: str, *, field: str, http2: bool = False) -> None:
    # The data path's own parser: a URL that passes here is one the forwarder and mirror can use.
    # ``h2c://`` (HTTP/2 by prior knowledge): the primary's, or a shadow's (the mirror speaks HTTP/2 to it).
    target = parse_primary(url, field=field)
    if target.scheme == "h2c" and not http2:
        raise ConfigError(f"an h2c:// URL is for the primary only (shadows speak HTTP/1): {url!r}", field=field)


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """One shadow: where it is, how much it gets, and the guard rails around it."""

    #: The shadow's name on the tape, in metrics and in ``diff --candidate`` (not ``primary``).
    name: str
    #: Base URL the copies go to (``http://``, ``https://``, or ``h2c://`` for cleartext HTTP/2).
    url: str
    #: Percent of eligible requests mirrored to this shadow.
    sample_percent: float = 100.0
    # Bounds the memory a stuck shadow can pin: queue_size x max_body_bytes at worst, and about a
    # second of traffic at 1k req/s, after which drops (counted) are better than growing latency.
    queue_size: int = 1000
    #: Copies in flight at once (and the most connections to the shadow). It must cover the copy
    #: rate times the time a copy takes as the proxy sees it (loop turns included: milliseconds under
    #: load): 16 dropped about 40 % of copies as queue-full at 8-11k req/s in bench/proxy_bench.py.
    concurrency: int = 64
    #: Copies one connection carries at once (HTTP/1.1 pipelining, safe methods only in practice as
    #: mirrors are); 1 turns pipelining off for a shadow that mishandles it.
    pipeline_depth: int = 8
    connect_timeout_s: float = 1.0
    total_timeout_s: float = 5.0
    max_body_bytes: int = _MiB
    max_response_bytes: int = _MiB
    rate_per_s: float | None = None
    burst: float | None = None
    host: str | None = None
    preserve_host: bool = False
    #: Request headers never sent to the shadow (credentials, by default).
    strip_headers: tuple[str, ...] = DEFAULT_STRIPPED_HEADERS
    #: Strip the headers ``record.redaction`` names from the shadow's copies, and hash or remove the
    #: query parameters, JSON fields and form fields it names, as on the tape (``false``: send them
    #: as the client did; ``credentials`` still apply).
    redact_secrets: bool = True
    #: Header name -> environment variable: the shadow gets the variable's value for that header.
    #: ``query:NAME``, ``json:PATH`` or ``form:NAME`` instead of a header name swaps the variable's
    #: value into that query parameter, JSON field or form field when the request has it.
    credentials: tuple[tuple[str, str], ...] = ()
    tls_verify: bool = True
    ca_file: str | None = None
    #: Speak HTTP/2 to an https shadow (TLS, ALPN ``h2``): every copy is a stream, HTTP/2 and gRPC
    #: calls included; a shadow that does not agree to ``h2`` fails its copies as ``connect-error``.
    #: An ``h2c://`` shadow always gets HTTP/2; an ``http://`` one cannot (use ``h2c://``).
    http2: bool = False
    breaker: BreakerSettings = field(default_factory=BreakerSettings)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"must be letters, digits, '-' or '_', not {self.name!r}", field="name")
        if self.name == "primary":
            raise ConfigError("'primary' is the primary's name; pick another", field="name")
        _check_url(self.url, field="url", http2=True)
        if self.http2 and not self.url.startswith("https://"):
            raise ConfigError(
                f"http2 is for https:// shadows (cleartext HTTP/2 is an h2c:// URL): {self.url!r}", field="http2"
            )
        if not 0.0 <= self.sample_percent <= 100.0:
            raise ConfigError(f"must be within 0..100, not {self.sample_percent!r}", field="sample_percent")
        for key in ("queue_size", "concurrency", "pipeline_depth"):
            if getattr(self, key) < 1:
                raise ConfigError(f"must be >= 1, not {getattr(self, key)!r}", field=key)
        for key in ("connect_timeout_s", "total_timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"must be > 0, not {getattr(self, key)!r}", field=key)
        for key in ("max_body_bytes", "max_response_bytes"):
            if getattr(self, key) < 0:
                raise ConfigError(f"must be >= 0, not {getattr(self, key)!r}", field=key)
        if self.rate_per_s is not None and self.rate_per_s <= 0:
            raise ConfigError(f"must be > 0, not {self.rate_per_s!r}", field="rate_per_s")
        if self.burst is not None and self.burst < 1:
            raise ConfigError(f"must be >= 1, not {self.burst!r}", field="burst")
        object.__setattr__(self, "strip_headers", tuple(h.lower() for h in self.strip_headers))
        if self.host is not None and not _VISIBLE_RE.match(self.host):
            raise ConfigError(f"not a valid Host header value: {self.host!r}", field="host")
        for index, (header, env_name) in enumerate(self.credentials):
            kind, name = _credential_target(header)
            if kind is None and not _TOKEN_RE.match(header):
                raise ConfigError(
                    f"not a header name, nor query:NAME, json:PATH or form:NAME: {header!r}",
                    field=f"credentials[{index}]",
                )
            if kind is not None and not name:
                raise ConfigError(f"no field named in {header!r}", field=f"credentials[{index}]")
            if kind == "json_fields":
                parse_json_path(name, field=f"credentials[{index}]")
            if not env_name:
                raise ConfigError(f"no environment variable named for {header!r}", field=f"credentials[{index}]")

    def credential_values(self) -> tuple[tuple[bytes, bytes], ...]:
        """The shadow's header credentials from the environment. Every variable ``credentials``
        names is checked, fields' too; a missing one is a ConfigError."""
        values: list[tuple[bytes, bytes]] = []
        for header, value in self._credential_texts():
            if _credential_target(header)[0] is not None:
                continue
            if any(c in value for c in "\r\n\0") or not value.isascii():
                raise ConfigError(
                    f"environment variable {dict(self.credentials)[header]!r} holds characters a header value "
                    "cannot carry",
                    field=f"shadows.{self.name}.credentials.{header}",
                )
            values.append((header.encode("ascii"), value.encode("ascii")))
        return tuple(values)

    def field_credentials(self) -> tuple[tuple[str, str, str], ...]:
        """The shadow's query parameter, JSON field and form field credentials from the environment,
        as ``(kind, name, value)`` (``recorder.Redactor``'s swaps)."""
        out: list[tuple[str, str, str]] = []
        for target, value in self._credential_texts():
            kind, name = _credential_target(target)
            if kind is not None:
                out.append((kind, name, value))
        return tuple(out)

    def _credential_texts(self) -> list[tuple[str, str]]:
        texts: list[tuple[str, str]] = []
        for target, env_name in self.credentials:
            value = os.environ.get(env_name)
            if value is None:
                raise ConfigError(
                    f"environment variable {env_name!r} is not set", field=f"shadows.{self.name}.credentials.{target}"
                )
            texts.append((target, value))
        return texts


#: ``shadows[].credentials`` keys that name a field rather than a header, and the rule kind of each.
_CREDENTIAL_KINDS: Final = {"query": "query_params", "json": "json_fields", "form": "form_fields"}


def _credential_target(key: str) -> tuple[str | None, str]:
    """``query:api_key`` -> ``("query_params", "api_key")``; a header name -> ``(None, name)``."""
    prefix, sep, name = key.partition(":")
    kind = _CREDENTIAL_KINDS.get(prefix) if sep else None
    return (kind, name) if kind is not None else (None, key)


@dataclass(frozen=True, slots=True)
class MirrorSettings:
    """Mirroring as a whole: the master switch, the consistent-sampling key and the route rules."""

    #: The master switch (the admin API's kill switch flips it at runtime).
    enabled: bool = True
    #: Consistent sampling: a key's requests are all mirrored or none are.
    sample_key: SampleKey | None = None
    #: Route rules, first match wins; requests matching none use the defaults.
    routes: tuple[RouteRule, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordSettings:
    """Recording to a tape directory (``tape=None``: no tape)."""

    #: Tape directory to record into, or an ``s3://bucket/prefix`` URL (segments are written to
    #: ``spool`` and each closed one uploaded) (``null``: no recording).
    tape: str | None = None
    #: The local directory an ``s3://`` tape is written to before upload (default: under
    #: ``$XDG_STATE_HOME/shadowtap/spool/``).
    spool: str | None = None
    #: With an ``s3://`` tape: keep each uploaded segment (moved to ``<spool>/uploaded/``) rather
    #: than remove it.
    keep_uploaded: bool = False
    #: With an ``s3://`` tape: bytes of closed segments the spool may hold waiting for upload; past
    #: it recording stops (counted as tape write errors) until uploads catch up, never deleting one.
    max_spool_bytes: int = 8 * 1024 * _MiB
    #: Percent of exchanges recorded (hashed on the exchange id).
    sample_percent: float = 100.0
    #: Body bytes recorded per message; longer bodies are cut and marked truncated.
    max_body_bytes: int = _MiB
    #: How long a finished primary exchange waits for its shadows before it is written without them.
    join_timeout_s: float = 10.0
    # Exchanges waiting for their shadows; beyond this the oldest is written at once (counted), so
    # a stuck shadow cannot grow memory without bound.
    max_pending: int = 10_000
    #: Bytes of exchanges waiting for their shadows (bodies as taped); beyond this the oldest is
    #: written at once (counted), so large bodies cannot pin more than this while shadows lag.
    max_pending_bytes: int = 64 * _MiB
    #: The tape writer's queue; when full, exchanges are dropped (counted), never waited for.
    queue_size: int = 10_000
    #: Bytes of exchanges between the proxy and the disk (the writer's queue, or the pipe to the
    #: writer process); beyond this they are dropped (counted), so a hung disk costs at most this.
    #: Together with ``max_pending_bytes``, 128 MiB per worker by default.
    queue_bytes: int = 64 * _MiB
    #: Tape segments rotate at this size.
    max_segment_bytes: int = 64 * _MiB
    #: ... and at this age, seconds.
    max_segment_age_s: float = 300.0
    #: Tape block compression: ``none`` or ``zstd``.
    compression: str = "zstd"
    #: When the tape is fsynced: ``none``, ``interval`` (about every second) or ``every`` batch.
    fsync: str = "interval"
    #: What is redacted on the tape and stripped from shadows' copies (``true``/``false`` or the
    #: rules: see the keys below).
    redaction: RedactionRules = field(default_factory=RedactionRules)
    #: Where the tape is encoded and written: ``process`` (a child process per worker, off the
    #: proxy's GIL) or ``thread`` (a thread in the worker; no extra process).
    writer: str = "process"

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_percent <= 100.0:
            raise ConfigError(f"must be within 0..100, not {self.sample_percent!r}", field="sample_percent")
        if self.max_body_bytes < 0:
            raise ConfigError(f"must be >= 0, not {self.max_body_bytes!r}", field="max_body_bytes")
        if self.join_timeout_s <= 0:
            raise ConfigError(f"must be > 0, not {self.join_timeout_s!r}", field="join_timeout_s")
        for key in ("max_pending", "queue_size", "max_segment_bytes", "max_spool_bytes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"must be >= 1, not {getattr(self, key)!r}", field=key)
        for key in ("max_pending_bytes", "queue_bytes"):
            if getattr(self, key) < _MIN_BUFFER_BYTES:
                raise ConfigError(f"must be >= {_MIN_BUFFER_BYTES}, not {getattr(self, key)!r}", field=key)
        if self.max_segment_age_s <= 0:
            raise ConfigError(f"must be > 0, not {self.max_segment_age_s!r}", field="max_segment_age_s")
        if self.compression not in ("none", "zstd"):
            raise ConfigError(f"must be 'none' or 'zstd', not {self.compression!r}", field="compression")
        if self.fsync not in ("none", "interval", "every"):
            raise ConfigError(f"must be 'none', 'interval' or 'every', not {self.fsync!r}", field="fsync")
        if self.writer not in ("process", "thread"):
            raise ConfigError(f"must be 'process' or 'thread', not {self.writer!r}", field="writer")


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """The admin API. ``listen=None`` turns it off; a non-loopback address needs ``allow_remote``."""

    #: Admin API address (``off`` or ``null``: no admin API); port 0 picks a free one.
    listen: ListenAddress | None = ListenAddress("127.0.0.1", 0)
    #: Environment variable holding the bearer token (never the token itself in a file).
    token_env: str | None = None
    #: Allow a non-loopback admin address (it needs ``token_env`` then, or ``insecure_no_token``).
    allow_remote: bool = False
    #: Serve a non-loopback admin address without a token (a warning is logged at start-up).
    insecure_no_token: bool = False
    #: Serve ``/metrics`` without the token, like ``/healthz`` and ``/readyz`` (Prometheus scraping by
    #: pod annotations sends none); the flags (the kill switch) and ``/stats`` still need it.
    public_metrics: bool = False

    def __post_init__(self) -> None:
        if self.listen is None or self.listen.is_loopback:
            return
        if not self.allow_remote:
            raise ConfigError(
                f"{self.listen} is not loopback; set admin.allow_remote (and a token) to expose it", field="listen"
            )
        if self.token_env is None and not self.insecure_no_token:
            # Whoever reaches the admin API can switch recording on (capturing traffic) or mirroring
            # off, and read every metric: from another host that must be a choice, not a default.
            raise ConfigError(
                f"{self.listen} is reachable from other hosts, and without a token anyone who reaches it can "
                "switch recording and mirroring; name the token's environment variable in admin.token_env "
                "(--admin-token-env), or accept that with admin.insecure_no_token (--admin-insecure-no-token)",
                field="listen",
            )

    def token(self) -> str | None:
        if self.token_env is None:
            return None
        value = os.environ.get(self.token_env)
        if not value:
            raise ConfigError(f"environment variable {self.token_env!r} is not set or empty", field="admin.token_env")
        return value


@dataclass(frozen=True, slots=True)
class EventsSettings:
    """Wide events: one JSON line per exchange to ``path`` (``-`` is stdout; ``None`` is off)."""

    #: Where the JSON lines go: a file, ``-`` for stdout, ``null`` for off.
    path: str | None = None
    # Events waiting for the writer thread; a full queue drops (counted) rather than slow the proxy.
    queue_size: int = 10_000

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ConfigError(f"must be >= 1, not {self.queue_size!r}", field="queue_size")


@dataclass(frozen=True, slots=True)
class LiveSettings:
    """Live diff: the recorded exchanges diffed as they are written (``shadowtap.proxy.live``)."""

    #: Diff the exchanges as they are joined, in a process beside the tape writer (which, without a
    #: tape, writes nothing); ``null``: on whenever a shadow is configured (``true`` refuses to start
    #: when it cannot run: a tape with ``record.writer: thread``).
    enabled: bool | None = None
    #: The live differ's results store (SQLite; ``shadowtap report --db``); default: a temporary
    #: file, removed when the proxy stops (its path is in ``/stats``).
    db: str | None = None
    #: The pipe from the tape writer to the live differ, bytes (with ``--workers N``, each worker's
    #: pipe; Linux caps it at /proc/sys/fs/pipe-max-size): exchanges that find it full are dropped
    #: and counted.
    tap_bytes: int = _MiB
    #: The live differ's CPU priority: ``idle`` (only CPU time nothing else wants: on a busy machine
    #: it falls behind and the tap drops, never the proxy's speed), ``low`` (nice 10) or ``normal``.
    priority: str = "idle"

    def __post_init__(self) -> None:
        if not 4096 <= self.tap_bytes <= 256 * _MiB:
            raise ConfigError(f"must be within 4096..268435456, not {self.tap_bytes!r}", field="tap_bytes")
        if self.priority not in ("idle", "low", "normal"):
            raise ConfigError(f"must be 'idle', 'low' or 'normal', not {self.priority!r}", field="priority")


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Listen with TLS when both files are given."""

    #: Certificate chain (PEM) to listen with TLS.
    cert_file: str | None = None
    #: Its private key (PEM).
    key_file: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("cert_file and key_file go together", field="cert_file")

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Everything ``shadowtap proxy`` runs with. ``forward`` is the data path's own settings mapping,
    validated by ``shadowtap.proxy.forward.ForwardSettings`` when the proxy is built (``forward_settings()``)."""

    #: URL of the primary service: every request is forwarded there and its answer returned.
    primary: str
    #: Address the proxy listens on; port 0 picks a free one.
    listen: ListenAddress = ListenAddress("127.0.0.1", 8080)
    #: Processes sharing the listen port (SO_REUSEPORT).
    workers: int = 1
    #: On SIGTERM: seconds to finish in-flight requests, drain mirrors and close the tape.
    shutdown_timeout_s: float = 10.0
    forward: Mapping[str, Any] = field(default_factory=dict)
    tls: TlsSettings = field(default_factory=TlsSettings)
    shadows: tuple[ShadowSettings, ...] = ()
    mirror: MirrorSettings = field(default_factory=MirrorSettings)
    record: RecordSettings = field(default_factory=RecordSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    events: EventsSettings = field(default_factory=EventsSettings)
    #: Trip rules that switch a shadow's mirroring off by themselves, e.g. `shadow.errors>20%/1m`,
    #: `v2:shadow.p99>3x primary/1m;rearm=5m` (docs/proxy.md, "Trip rules").
    trips: tuple[TripRule, ...] = ()
    live: LiveSettings = field(default_factory=LiveSettings)
    #: The differ's settings for live diff, as in ``shadowtap diff --config``'s ``diff`` section
    #: (so one file serves both); validated by ``shadowtap.differ.config_from_mapping``.
    diff: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_url(self.primary, field="primary", http2=True)
        if not 1 <= self.workers <= 256:
            raise ConfigError(f"must be within 1..256, not {self.workers!r}", field="workers")
        if self.shutdown_timeout_s <= 0:
            raise ConfigError(f"must be > 0, not {self.shutdown_timeout_s!r}", field="shutdown_timeout_s")
        names = [s.name for s in self.shadows]
        for index, name in enumerate(names):
            if names.index(name) != index:
                raise ConfigError(f"duplicate shadow name {name!r}", field=f"shadows[{index}].name")
        for index, shadow in enumerate(self.shadows):
            # A copy may wait in its queue up to total_timeout_s and then run as long again; a join
            # shorter than one run would tape answers that came in time as timeouts.
            if shadow.total_timeout_s > self.record.join_timeout_s:
                raise ConfigError(
                    f"must be at least shadows[{index}].total_timeout_s ({shadow.total_timeout_s}), "
                    f"not {self.record.join_timeout_s}",
                    field="record.join_timeout_s",
                )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ProxyConfig:
        """Validate a config mapping (a parsed file overlaid with flags); errors name the key."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a mapping, not {data!r}", field="(top)")
        _reject_unknown(data, cls, "")
        shadows_raw = data.get("shadows", [])
        if isinstance(shadows_raw, Mapping):
            # `shadows: {v2: {url: ...}}` is the same as a list with names.
            shadows_raw = [
                {"name": name, **(spec if isinstance(spec, Mapping) else {"url": spec})}
                for name, spec in shadows_raw.items()
            ]
        if not isinstance(shadows_raw, list):
            raise ConfigError(f"expected a list of shadows, not {shadows_raw!r}", field="shadows")
        shadows = tuple(_shadow(s, f"shadows[{i}]") for i, s in enumerate(shadows_raw))
        names = [s.name for s in shadows]
        forward = data.get("forward", {})
        if not isinstance(forward, Mapping):
            raise ConfigError(f"expected a mapping, not {forward!r}", field="forward")
        if "primary" not in data:
            raise ConfigError("is required (the URL of the service being proxied)", field="primary")
        values: dict[str, Any] = {
            "primary": typed_value(data["primary"], str, "primary"),
            "forward": dict(forward),
            "shadows": shadows,
            "mirror": _mirror(data.get("mirror", {}), names),
            "record": _record(data.get("record", {})),
            "admin": _admin(data.get("admin", {})),
            "events": settings_from_mapping(EventsSettings, data.get("events", {}), "events"),
            "tls": settings_from_mapping(TlsSettings, data.get("tls", {}), "tls"),
            "trips": parse_trips(data.get("trips", []), names),
            "live": settings_from_mapping(LiveSettings, data.get("live", {}), "live"),
            "diff": _diff(data.get("diff", {})),
        }
        if "listen" in data:
            values["listen"] = parse_listen(data["listen"], field="listen")
        for key in ("workers", "shutdown_timeout_s"):
            if key in data:
                values[key] = typed_value(data[key], field_type(cls, key), key)
        return construct(cls, values, "")

    def to_mapping(self) -> dict[str, Any]:
        """A plain mapping that ``from_mapping`` turns back into this config (for worker processes)."""
        return file_value(self)  # type: ignore[no-any-return]


# --- mapping -> dataclasses ------------------------------------------------------------------------


def _reject_unknown(data: Mapping[str, Any], cls: type, prefix: str, extra: Sequence[str] = ()) -> None:
    reject_unknown(data, [*(f.name for f in dataclasses.fields(cls)), *extra], prefix)


def _shadow(data: Any, where: str) -> ShadowSettings:
    if isinstance(data, str):
        name, sep, url = data.partition("=")
        if not sep:
            raise ConfigError(f"expected NAME=URL, not {data!r}", field=where)
        data = {"name": name, "url": url}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping with name and url, not {data!r}", field=where)
    _reject_unknown(data, ShadowSettings, f"{where}.")
    for required in ("name", "url"):
        if required not in data:
            raise ConfigError("is required", field=f"{where}.{required}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "breaker":
            values[key] = settings_from_mapping(BreakerSettings, value, f"{where}.breaker")
        elif key == "credentials":
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise ConfigError(
                    f"expected a mapping HEADER (or query:NAME, json:PATH, form:NAME): ENV_VAR, not {value!r}",
                    field=f"{where}.credentials",
                )
            values[key] = tuple(value.items())
        else:
            values[key] = typed_value(value, field_type(ShadowSettings, key), f"{where}.{key}")
    return construct(ShadowSettings, values, f"{where}.")


def _record(data: Any) -> RecordSettings:
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, not {data!r}", field="record")
    settings = settings_from_mapping(RecordSettings, {k: v for k, v in data.items() if k != "redaction"}, "record")
    if "redaction" not in data:
        return settings
    rules = RedactionRules.from_mapping(data["redaction"], "record.redaction")
    return dataclasses.replace(settings, redaction=rules)


def _diff(data: Any) -> dict[str, Any]:
    from shadowtap.differ.config import config_from_mapping

    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, not {data!r}", field="diff")
    config_from_mapping({"diff": data})  # errors name the key (diff.routes, ...)
    return dict(data)


def _mirror(data: Any, shadow_names: Sequence[str]) -> MirrorSettings:
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, not {data!r}", field="mirror")
    _reject_unknown(data, MirrorSettings, "mirror.")
    values: dict[str, Any] = {}
    if "enabled" in data:
        values["enabled"] = typed_value(data["enabled"], bool, "mirror.enabled")
    if data.get("sample_key") is not None:
        values["sample_key"] = SampleKey.parse(
            typed_value(data["sample_key"], str, "mirror.sample_key"), field="mirror.sample_key"
        )
    routes = data.get("routes", [])
    if not isinstance(routes, list):
        raise ConfigError(f"expected a list of routes, not {routes!r}", field="mirror.routes")
    values["routes"] = tuple(
        RouteRule.from_mapping(r, field=f"mirror.routes[{i}]", shadow_names=shadow_names) for i, r in enumerate(routes)
    )
    return MirrorSettings(**values)


def _admin(data: Any) -> AdminSettings:
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, not {data!r}", field="admin")
    _reject_unknown(data, AdminSettings, "admin.")
    values: dict[str, Any] = {}
    if "listen" in data:
        raw = data["listen"]
        values["listen"] = None if raw in (None, "off", False) else parse_listen(raw, field="admin.listen")
    for key in ("token_env", "allow_remote", "insecure_no_token", "public_metrics"):
        if key in data:
            values[key] = typed_value(data[key], field_type(AdminSettings, key), f"admin.{key}")
    return construct(AdminSettings, values, "admin.")


def file_value(value: Any) -> Any:
    """``value`` (a setting or a whole config) as it is written in a config file: the inverse of parsing."""
    if isinstance(value, ListenAddress):
        return str(value)
    if isinstance(value, SampleKey):
        return f"{value.source}:{value.name}"
    if isinstance(value, TripRule):
        return value.text
    if isinstance(value, RouteRule):
        out: dict[str, Any] = {"name": value.name, "mirror": value.mirror}
        if value.path is not None:
            out["path"] = value.path
        if value.methods is not None:
            out["methods"] = sorted(value.methods)
        if value.mirror_methods is not None:
            out["mirror_methods"] = sorted(value.mirror_methods)
        if value.sample_percent is not None:
            out["sample_percent"] = value.sample_percent
        if value.shadows is not None:
            out["shadows"] = list(value.shadows)
        if value.grpc is not None:
            out["grpc"] = value.grpc
        return out
    if isinstance(value, ShadowSettings):
        out = {f.name: file_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
        out["credentials"] = dict(value.credentials)
        return out
    if isinstance(value, RedactionRules):
        out = {f.name: file_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
        out.update({kind: dict(getattr(value, kind)) for kind in RULE_KINDS})
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: file_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [file_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: file_value(v) for k, v in value.items()}
    return value
