"""The differ's settings: one frozen dataclass tree built from the ``diff`` section of a config file.

It validates every key and names the bad one (``diff.noise.relative``) in a ``ConfigError``; values
are decoded by ``shadowtap.recorder.settings``, the same decoder as the proxy's settings. It must
never read files (``shadowtap.config`` does) and never compare anything: it only says how to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from shadowtap.differ.paths import compile_glob
from shadowtap.differ.verdict import parse_fail_on
from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.settings import reject_unknown, typed_value
from shadowtap.recorder.settings import section as _section

if TYPE_CHECKING:
    from shadowtap.differ.protobuf import ProtoSchema

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_IGNORED_HEADERS",
    "ConfigKey",
    "VOLATILE_DETECTORS",
    "CompareOptions",
    "DifferConfig",
    "IgnoreRule",
    "NoiseThresholds",
    "config_from_mapping",
]

#: Headers whose values change on every response or describe the hop, not the content: never compared
#: unless listed under ``headers.compare``. Content-Length is here because bodies are compared after
#: decoding, so its difference is either an encoding detail or already reported as a body change (as
#: are gRPC's message encodings).
DEFAULT_IGNORED_HEADERS: Final[frozenset[str]] = frozenset(
    {
        "date",
        "server",
        "age",
        "expires",
        "last-modified",
        "etag",
        "via",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "grpc-encoding",
        "grpc-accept-encoding",
        "x-request-id",
        "x-correlation-id",
        "request-id",
        "x-amzn-requestid",
        "x-amzn-trace-id",
        "x-amz-request-id",
        "x-amz-id-2",
        "traceparent",
        "tracestate",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "b3",
        "x-cloud-trace-context",
        "x-datadog-trace-id",
        "x-datadog-parent-id",
        "x-runtime",
        "x-response-time",
        "x-served-by",
        "x-cache",
        "x-cache-hits",
        "x-timer",
        "cf-ray",
        "report-to",
        "nel",
        "x-shadowtap-shadow",
        "x-shadowtap-correlation-id",
    }
)

#: The built-in volatile detectors (see differ/volatile.py), all on by default.
VOLATILE_DETECTORS: Final[tuple[str, ...]] = ("uuid", "iso-date", "http-date", "epoch", "jwt", "hex-id")


@dataclass(frozen=True, slots=True)
class ConfigKey:
    """One key of the ``diff`` config section: the single list that validation and docs/config.md read."""

    key: str
    type: str
    default: Any
    help: str


#: Every key ``config_from_mapping`` accepts (dotted, under ``diff``), with its default in file form.
#: A key missing here is rejected as unknown, so the reference cannot fall behind the parser.
CONFIG_KEYS: Final[tuple[ConfigKey, ...]] = (
    ConfigKey("headers.ignore", "list of header names", [], "added to the built-in ignore list of volatile headers"),
    ConfigKey("headers.compare", "list of header names", [], "removed from the built-in ignore list"),
    ConfigKey("headers.only", "list of header names or null", None, "allowlist: compare only these headers"),
    ConfigKey(
        "ignore",
        "list of path globs or {path, endpoint}",
        [],
        "value changes silenced at report time, globally or for endpoints matching `endpoint` (a glob);"
        " a structural change (removed field, type change) is never silenced by a rule",
    ),
    ConfigKey("routes", "list of route patterns", [], "endpoint templates, first match wins: `GET /users/{id}`"),
    ConfigKey("unordered_arrays", "bool or list of path globs", False, "arrays compared as multisets (`true`: all)"),
    ConfigKey("list_keys", "map of array path glob to field", {}, "match array elements by this field, order ignored"),
    ConfigKey("numeric_tolerance.absolute", "number", 0.0, "numbers closer than this are equal"),
    ConfigKey("numeric_tolerance.relative", "number", 0.0, "numbers within this fraction of each other are equal"),
    ConfigKey("noise.relative", "number (fraction)", 0.2, "Diffy's relative threshold for learned noise"),
    ConfigKey("noise.absolute", "number (fraction)", 0.0003, "Diffy's absolute threshold for learned noise"),
    ConfigKey("volatile.enabled", "bool", True, "suppress same-class volatile values (uuid->uuid, date->date ...)"),
    ConfigKey("volatile.detectors", "list of detector names", list(VOLATILE_DETECTORS), "the detectors in use"),
    ConfigKey(
        "templates.max_literal_children",
        "integer",
        20,
        "least distinct values before a path segment may be learned as `{id}` (it also has to keep "
        "growing with traffic; a few busy values stay apart)",
    ),
    ConfigKey("examples_per_signature", "integer", 3, "reservoir-sampled examples kept per signature"),
    ConfigKey("fail_on", "string", "severity>=high", "the gate (see --fail-on); overridden by the flag"),
    ConfigKey("min_samples", "integer", 10, "fewer compared pairs than this exits 2; overridden by the flag"),
    ConfigKey(
        "proto.descriptor",
        "path or null",
        None,
        "gRPC bodies decoded with this descriptor set (`protoc --descriptor_set_out=FILE --include_imports`);"
        " overridden by --proto-descriptor",
    ),
    ConfigKey(
        "proto.reflection",
        "host:port or null",
        None,
        "gRPC bodies decoded with the descriptors this server gives by server reflection; overridden by"
        " --proto-reflection",
    ),
)


_ROUTE_RE: Final = re.compile(r"(?:(?P<method>[A-Z]+|\*)\s+)?(?P<path>/\S*)\Z")


def _known(prefix: str) -> frozenset[str]:
    """The keys directly under ``prefix`` ("" for the section itself) according to ``CONFIG_KEYS``."""
    depth = 0 if not prefix else prefix.count(".") + 1
    start = f"{prefix}." if prefix else ""
    return frozenset(k.key.split(".")[depth] for k in CONFIG_KEYS if k.key.startswith(start))


@dataclass(frozen=True, slots=True)
class IgnoreRule:
    """Silence differences at ``path`` (a glob, see docs/differ.md) on endpoints matching ``endpoint``."""

    path: str
    endpoint: str = "*"
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    endpoint_pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("an ignore rule needs a path", field="diff.ignore")
        object.__setattr__(self, "pattern", compile_glob(self.path))
        object.__setattr__(self, "endpoint_pattern", _compile_endpoint_glob(self.endpoint))

    @property
    def reason(self) -> str:
        return f"rule:{self.path}" if self.endpoint == "*" else f"rule:{self.endpoint} {self.path}"

    def matches(self, endpoint: str, path: str) -> bool:
        return self.endpoint_pattern.match(endpoint) is not None and self.pattern.match(path) is not None


@dataclass(frozen=True, slots=True)
class NoiseThresholds:
    """Diffy's thresholds for learned noise, as fractions: 0.2 is 20%, 0.0003 is 0.03%."""

    relative: float = 0.2
    absolute: float = 0.0003

    def __post_init__(self) -> None:
        if self.relative < 0:
            raise ConfigError("must be >= 0", field="diff.noise.relative")
        if not 0 <= self.absolute <= 1:
            raise ConfigError("must be between 0 and 1", field="diff.noise.absolute")


@dataclass(frozen=True, slots=True)
class CompareOptions:
    """How two responses are compared (the engine's hot path reads these, so they are precompiled)."""

    ignored_headers: frozenset[str] = DEFAULT_IGNORED_HEADERS
    only_headers: frozenset[str] | None = None
    unordered_all: bool = False
    unordered_paths: tuple[str, ...] = ()
    list_keys: tuple[tuple[str, str], ...] = ()
    absolute_tolerance: float = 0.0
    relative_tolerance: float = 0.0
    volatile_detectors: frozenset[str] = frozenset(VOLATILE_DETECTORS)
    #: Descriptors for gRPC bodies (``shadowtap.differ.protobuf``); None: decoded schema-less.
    proto: ProtoSchema | None = None
    unordered_patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    list_key_patterns: tuple[tuple[re.Pattern[str], str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.absolute_tolerance < 0:
            raise ConfigError("must be >= 0", field="diff.numeric_tolerance.absolute")
        if self.relative_tolerance < 0:
            raise ConfigError("must be >= 0", field="diff.numeric_tolerance.relative")
        unknown = self.volatile_detectors - set(VOLATILE_DETECTORS)
        if unknown:
            raise ConfigError(
                f"unknown detector(s) {sorted(unknown)}; known: {', '.join(VOLATILE_DETECTORS)}",
                field="diff.volatile.detectors",
            )
        object.__setattr__(self, "unordered_patterns", tuple(compile_glob(p) for p in self.unordered_paths))
        object.__setattr__(self, "list_key_patterns", tuple((compile_glob(p), key) for p, key in self.list_keys))

    def header_compared(self, name: str) -> bool:
        """Whether header ``name`` (lower-case) takes part in the comparison."""
        if self.only_headers is not None:
            return name in self.only_headers
        return name not in self.ignored_headers


@dataclass(frozen=True, slots=True)
class DifferConfig:
    """Everything ``shadowtap diff`` / ``report`` can be told through the config file."""

    compare: CompareOptions = field(default_factory=CompareOptions)
    ignore: tuple[IgnoreRule, ...] = ()
    routes: tuple[str, ...] = ()
    noise: NoiseThresholds = field(default_factory=NoiseThresholds)
    max_literal_children: int = 20
    examples_per_signature: int = 3
    fail_on: str = "severity>=high"
    min_samples: int = 10
    proto_descriptor: str | None = None
    proto_reflection: str | None = None

    def __post_init__(self) -> None:
        for route in self.routes:
            if _ROUTE_RE.match(route) is None:
                raise ConfigError(f"route {route!r} is not '[METHOD] /path/{{name}}/...'", field="diff.routes")
        if self.max_literal_children < 1:
            raise ConfigError("must be >= 1", field="diff.templates.max_literal_children")
        if not 0 <= self.examples_per_signature <= 100:
            raise ConfigError("must be between 0 and 100", field="diff.examples_per_signature")
        if self.min_samples < 0:
            raise ConfigError("must be >= 0", field="diff.min_samples")
        try:
            parse_fail_on(self.fail_on)
        except ConfigError as exc:
            raise ConfigError(exc.message, field="diff.fail_on") from exc


def _compile_endpoint_glob(glob: str) -> re.Pattern[str]:
    # Endpoints are "METHOD /path/{id}": '*' matches anything there, braces are literal.
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")) + r"\Z")


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    """A list of non-empty strings (or one comma-separated string); absent or null is empty."""
    if value is None:
        return ()
    items: tuple[str, ...] = typed_value(value, tuple[str, ...], key)
    for index, item in enumerate(items):
        if not item:
            raise ConfigError("must be a non-empty string", field=f"{key}[{index}]")
    return items


def _number(value: Any, key: str, default: float) -> float:
    number: float = default if value is None else typed_value(value, float, key)
    return number


def _integer(value: Any, key: str, default: int) -> int:
    number: int = default if value is None else typed_value(value, int, key)
    return number


def _check_keys(data: Mapping[str, Any], known: set[str] | frozenset[str], prefix: str) -> None:
    reject_unknown(data, known, f"{prefix}.")


def _ignore_rules(value: Any) -> tuple[IgnoreRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("must be a list of paths or {path, endpoint} mappings", field="diff.ignore")
    rules: list[IgnoreRule] = []
    for index, item in enumerate(value):
        key = f"diff.ignore[{index}]"
        if isinstance(item, str):
            rules.append(IgnoreRule(item))
        elif isinstance(item, Mapping):
            _check_keys(item, {"path", "endpoint"}, key)
            path, endpoint = item.get("path"), item.get("endpoint", "*")
            if not isinstance(path, str) or not isinstance(endpoint, str):
                raise ConfigError("path and endpoint must be strings", field=key)
            rules.append(IgnoreRule(path, endpoint))
        else:
            raise ConfigError(f"must be a path or a {{path, endpoint}} mapping, not {item!r}", field=key)
    return tuple(rules)


def config_from_mapping(raw: Mapping[str, Any]) -> DifferConfig:
    """Build a ``DifferConfig`` from a parsed config file: its ``diff`` section if it has one."""
    section = _section(raw.get("diff"), "diff") if "diff" in raw else raw
    _check_keys(section, _known(""), "diff")

    headers = _section(section.get("headers"), "diff.headers")
    _check_keys(headers, _known("headers"), "diff.headers")
    extra_ignored = {h.lower() for h in _str_list(headers.get("ignore"), "diff.headers.ignore")}
    compared = {h.lower() for h in _str_list(headers.get("compare"), "diff.headers.compare")}
    ignored = (DEFAULT_IGNORED_HEADERS | extra_ignored) - compared
    only = headers.get("only")
    only_headers = None if only is None else frozenset(h.lower() for h in _str_list(only, "diff.headers.only"))

    unordered = section.get("unordered_arrays", False)
    unordered_paths: tuple[str, ...]
    if isinstance(unordered, bool):
        unordered_all, unordered_paths = unordered, ()
    else:
        unordered_all, unordered_paths = False, _str_list(unordered, "diff.unordered_arrays")

    list_keys_raw = _section(section.get("list_keys"), "diff.list_keys")
    for path, key in list_keys_raw.items():
        if not isinstance(key, str) or not key:
            raise ConfigError("must map an array path to the key field's name", field=f"diff.list_keys.{path}")

    tolerance = _section(section.get("numeric_tolerance"), "diff.numeric_tolerance")
    _check_keys(tolerance, _known("numeric_tolerance"), "diff.numeric_tolerance")

    volatile = _section(section.get("volatile"), "diff.volatile")
    _check_keys(volatile, _known("volatile"), "diff.volatile")
    enabled = typed_value(volatile.get("enabled", True), bool, "diff.volatile.enabled")
    detectors = (
        frozenset(_str_list(volatile["detectors"], "diff.volatile.detectors"))
        if "detectors" in volatile
        else frozenset(VOLATILE_DETECTORS)
    )

    compare = CompareOptions(
        ignored_headers=frozenset(ignored),
        only_headers=only_headers,
        unordered_all=unordered_all,
        unordered_paths=unordered_paths,
        list_keys=tuple((str(p), str(k)) for p, k in list_keys_raw.items()),
        absolute_tolerance=_number(tolerance.get("absolute"), "diff.numeric_tolerance.absolute", 0.0),
        relative_tolerance=_number(tolerance.get("relative"), "diff.numeric_tolerance.relative", 0.0),
        volatile_detectors=detectors if enabled else frozenset(),
    )

    noise = _section(section.get("noise"), "diff.noise")
    _check_keys(noise, _known("noise"), "diff.noise")
    templates = _section(section.get("templates"), "diff.templates")
    _check_keys(templates, _known("templates"), "diff.templates")
    fail_on = typed_value(section.get("fail_on", "severity>=high"), str, "diff.fail_on")
    proto = _section(section.get("proto"), "diff.proto")
    _check_keys(proto, _known("proto"), "diff.proto")
    proto_descriptor, proto_reflection = proto.get("descriptor"), proto.get("reflection")
    if proto_descriptor is not None:
        proto_descriptor = typed_value(proto_descriptor, str, "diff.proto.descriptor")
    if proto_reflection is not None:
        proto_reflection = typed_value(proto_reflection, str, "diff.proto.reflection")
    return DifferConfig(
        compare=compare,
        ignore=_ignore_rules(section.get("ignore")),
        routes=_str_list(section.get("routes"), "diff.routes"),
        noise=NoiseThresholds(
            relative=_number(noise.get("relative"), "diff.noise.relative", 0.2),
            absolute=_number(noise.get("absolute"), "diff.noise.absolute", 0.0003),
        ),
        max_literal_children=_integer(templates.get("max_literal_children"), "diff.templates.max_literal_children", 20),
        examples_per_signature=_integer(section.get("examples_per_signature"), "diff.examples_per_signature", 3),
        fail_on=fail_on,
        min_samples=_integer(section.get("min_samples"), "diff.min_samples", 10),
        proto_descriptor=proto_descriptor,
        proto_reflection=proto_reflection,
    )
