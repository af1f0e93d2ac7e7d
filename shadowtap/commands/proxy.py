"""`shadowtap proxy`: run the sidecar proxy (forward to the primary, mirror to shadows, record a tape).

Settings come from ``--config FILE`` (YAML or TOML) overlaid with flags; every config key is also a
flag, either a named one below or ``--set KEY=VALUE`` (``--set shadows.v2.rate_per_s=50``).
``--check-config FILE`` validates and prints the effective config without starting anything. This
module must never validate settings itself: it builds one mapping and ``shadowtap.proxy.config`` judges it.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
from collections.abc import Callable
from typing import Any, Final

from shadowtap.commands._options import HelpFormatter

NAME = "proxy"
HELP = "Run the sidecar proxy: forward to the primary, mirror a sample to shadows, record a tape."
ORDER = 10

_EPILOG = """\
examples:
  shadowtap proxy --listen 127.0.0.1:8080 --primary http://127.0.0.1:9000 \\
                  --shadow v2=http://127.0.0.1:9001 --tape ./tape --admin 127.0.0.1:8081
  shadowtap proxy --config proxy.yaml --set shadows.v2.sample_percent=5 --workers 2
  shadowtap proxy --check-config proxy.yaml

Once listening it prints one line:
  shadowtap proxy: listening on http://HOST:PORT admin http://HOST:PORT workers N pid PID
See docs/proxy.md for every config key, the admin API and the metrics."""


# (flag, config path, value type, help). "shadows.*" applies to every shadow; a value of None for
# the type means a switch that sets the given constant.
_FLAGS: Final[list[tuple[str, str, Callable[[str], Any] | None, Any, str]]] = [
    ("--listen", "listen", str, None, "HOST:PORT to listen on (default 127.0.0.1:8080; port 0 picks one)"),
    ("--primary", "primary", str, None, "URL of the primary service (required)"),
    ("--workers", "workers", int, None, "processes sharing the listen port with SO_REUSEPORT (default 1)"),
    ("--shutdown-timeout", "shutdown_timeout_s", float, None, "seconds to finish in-flight work on SIGTERM"),
    ("--tls-cert", "tls.cert_file", str, None, "listen with TLS: certificate chain (PEM)"),
    ("--tls-key", "tls.key_file", str, None, "listen with TLS: private key (PEM)"),
    ("--connect-timeout", "forward.connect_timeout_s", float, None, "primary connect timeout, seconds (504)"),
    ("--first-byte-timeout", "forward.first_byte_timeout_s", float, None, "primary response-head timeout (504)"),
    ("--total-timeout", "forward.total_timeout_s", float, None, "primary whole-exchange timeout, seconds"),
    ("--capture-limit", "forward.capture_limit_bytes", int, None, "bytes of each body kept for mirror and tape"),
    ("--pool-max-idle", "forward.pool_max_idle", int, None, "idle keep-alive connections kept to the primary"),
    ("--via", "forward.via", str, None, "add 'Via: 1.1 NAME' to requests and responses"),
    ("--no-x-forwarded-for", "forward.x_forwarded_for", None, False, "do not append X-Forwarded-For"),
    ("--no-x-forwarded-proto", "forward.x_forwarded_proto", None, False, "do not add X-Forwarded-Proto"),
    ("--no-x-forwarded-host", "forward.x_forwarded_host", None, False, "do not add X-Forwarded-Host"),
    ("--rewrite-host", "forward.preserve_host", None, False, "send the primary's authority as Host"),
    ("--primary-insecure", "forward.tls_verify", None, False, "do not verify an https primary's certificate"),
    ("--primary-ca-file", "forward.ca_file", str, None, "CA bundle for an https primary"),
    ("--no-mirror", "mirror.enabled", None, False, "start with mirroring off (the admin API can turn it on)"),
    ("--sample-key", "mirror.sample_key", str, None, "consistent sampling key: header:NAME, cookie:NAME, query:NAME"),
    ("--sample-percent", "shadows.*.sample_percent", float, None, "percent of requests mirrored to each shadow"),
    ("--shadow-queue-size", "shadows.*.queue_size", int, None, "copies queued per shadow before dropping"),
    ("--shadow-concurrency", "shadows.*.concurrency", int, None, "copies in flight per shadow"),
    ("--shadow-pipeline", "shadows.*.pipeline_depth", int, None, "copies per shadow connection (1: no pipelining)"),
    ("--shadow-connect-timeout", "shadows.*.connect_timeout_s", float, None, "shadow connect timeout, seconds"),
    ("--shadow-timeout", "shadows.*.total_timeout_s", float, None, "shadow whole-exchange timeout, seconds"),
    ("--shadow-max-body", "shadows.*.max_body_bytes", int, None, "largest request body mirrored, bytes"),
    ("--shadow-max-response", "shadows.*.max_response_bytes", int, None, "shadow response bytes kept"),
    ("--shadow-rate", "shadows.*.rate_per_s", float, None, "copies per second per shadow at most"),
    ("--shadow-burst", "shadows.*.burst", float, None, "rate cap burst size"),
    ("--shadow-host", "shadows.*.host", str, None, "Host header sent to shadows"),
    ("--shadow-preserve-host", "shadows.*.preserve_host", None, True, "send the client's Host to shadows"),
    ("--shadow-insecure", "shadows.*.tls_verify", None, False, "do not verify https shadows' certificates"),
    ("--shadow-ca-file", "shadows.*.ca_file", str, None, "CA bundle for https shadows"),
    ("--breaker-failures", "shadows.*.breaker.consecutive_failures", int, None, "failures in a row that open it"),
    ("--breaker-open", "shadows.*.breaker.open_s", float, None, "seconds the breaker stays open"),
    ("--tape", "record.tape", str, None, "record exchanges to this tape directory or s3://bucket/prefix"),
    ("--tape-spool", "record.spool", str, None, "local directory an s3:// tape is written to before upload"),
    ("--record-sample-percent", "record.sample_percent", float, None, "percent of exchanges recorded"),
    ("--record-max-body", "record.max_body_bytes", int, None, "body bytes recorded (truncation is marked)"),
    ("--join-timeout", "record.join_timeout_s", float, None, "seconds an exchange waits for its shadows"),
    ("--tape-compression", "record.compression", str, None, "none or zstd"),
    ("--tape-fsync", "record.fsync", str, None, "none, interval or every"),
    ("--tape-writer", "record.writer", str, None, "process (off the proxy's GIL) or thread"),
    ("--tape-segment-bytes", "record.max_segment_bytes", int, None, "rotate tape segments at this size"),
    ("--no-redaction", "record.redaction.enabled", None, False,
     "record secrets as they are (redaction is on by default; shadows' copies are still stripped)"),
    ("--live-diff", "live.enabled", None, True,
     "diff exchanges as they are joined (default: on with a shadow, tape or not; this makes it required)"),
    ("--no-live-diff", "live.enabled", None, False,
     "do not diff exchanges as they are joined (without a tape: no tape writer process)"),
    ("--live-db", "live.db", str, None,
     "the live diff's results database, kept (default: a temporary one, removed when the proxy stops)"),
    ("--events", "events.path", str, None, "write one JSON line per exchange to FILE ('-' for stdout)"),
    ("--admin", "admin.listen", str, None, "admin API HOST:PORT (default 127.0.0.1:0) or 'off'"),
    ("--admin-token-env", "admin.token_env", str, None, "environment variable holding the admin bearer token"),
    ("--admin-allow-remote", "admin.allow_remote", None, True, "allow a non-loopback admin address (needs a token)"),
    ("--admin-insecure-no-token", "admin.insecure_no_token", None, True,
     "serve a non-loopback admin address without a token (anyone reaching it can switch recording)"),
]  # fmt: skip


#: How ``--help`` groups the flags: by the config section each sets (a path equal to a prefix, or
#: under one ending in "."), in the order a reader sets a proxy up.
_GROUPS: Final = (
    ("listening", ("listen", "workers", "shutdown_timeout_s")),
    ("primary", ("primary", "forward.")),
    ("shadows", ("shadows.",)),
    ("mirroring rules", ("mirror.",)),
    ("recording", ("record.",)),
    ("admin and events", ("admin.", "events.")),
    ("TLS (listening)", ("tls.",)),
    ("live diff", ("live.",)),
)


def _group_of(path: str) -> str:
    for title, prefixes in _GROUPS:
        if any(path == p or (p.endswith(".") and path.startswith(p)) for p in prefixes):
            return title
    raise AssertionError(f"config path {path!r} is in no --help group")


def _dest(flag: str) -> str:
    return "opt_" + flag.lstrip("-").replace("-", "_")


@functools.cache
def _config_defaults() -> dict[str, str]:
    """Each valued flag's default as the config reference (docs/config.md) spells it, by ``dest``.

    Read from the config classes, the one place defaults live; imported only when help is printed,
    so ``--help`` of the other commands and the proxy's start-up do not pay for it."""
    from shadowtap.configdoc import proxy_keys

    by_key = {doc.key: doc.default for doc in proxy_keys()}
    defaults = {}
    for flag, path, kind, _constant, _help in _FLAGS:
        shown = by_key.get(path.replace("shadows.*.", "shadows[]."))
        if kind is not None and shown is not None and shown not in ("null", "(required)"):
            defaults[_dest(flag)] = shown.strip('"')
    return defaults


class _HelpFormatter(HelpFormatter):
    """The shared formatter, with each config-backed flag's default taken from the config classes."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        default = _config_defaults().get(action.dest)
        if not text or default is None or "default" in text:
            return super()._get_help_string(action)
        return f"{text} (default: {default.replace('%', '%%')})"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _EPILOG
    parser.formatter_class = _HelpFormatter
    config = parser.add_argument_group("config file")
    groups = {title: parser.add_argument_group(title) for title, _ in _GROUPS}
    config.add_argument("--config", metavar="FILE", help="YAML or TOML config file (flags override it)")
    config.add_argument(
        "--check-config", metavar="FILE", help="validate FILE (with any flags), print the effective config, exit"
    )
    config.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config key by dotted path, value in YAML (shadows.NAME.KEY for one shadow)",
    )
    groups["shadows"].add_argument(
        "--shadow",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="mirror to this shadow (repeatable; adds to the config file's shadows)",
    )
    groups["mirroring rules"].add_argument(
        "--route",
        action="append",
        default=[],
        metavar="SPEC",
        help="a route rule, e.g. 'path=/orders/**;methods=POST;mirror_methods=POST;sample_percent=10' "
        "(repeatable; keys as in the config's mirror.routes; lists comma-separated)",
    )
    groups["shadows"].add_argument(
        "--trip",
        action="append",
        default=[],
        metavar="RULE",
        help="a trip rule that switches a shadow's mirroring off, e.g. 'shadow.errors>20%%/1m', "
        "'v2:shadow.p99>3x primary/1m;rearm=5m', 'diff.critical>=1' (judged by live diff) "
        "(repeatable; adds to the config's trips)",
    )
    for flag, path, kind, constant, help_text in _FLAGS:
        group = groups[_group_of(path)]
        if kind is None:
            group.add_argument(flag, dest=_dest(flag), action="store_const", const=constant, help=help_text)
        else:
            group.add_argument(flag, dest=_dest(flag), type=kind, metavar=path.rsplit(".", 1)[-1].upper(),
                               help=help_text)  # fmt: skip


def _shadow_list(raw: Any) -> list[Any]:
    if isinstance(raw, dict):
        return [{"name": name, **(spec if isinstance(spec, dict) else {"url": spec})} for name, spec in raw.items()]
    if isinstance(raw, list):
        return [_shadow_entry(s) for s in raw]
    return raw  # type: ignore[no-any-return]  # shadowtap.proxy.config reports the wrong type


def _shadow_entry(spec: Any) -> Any:
    if isinstance(spec, str) and "=" in spec:
        name, _, url = spec.partition("=")
        return {"name": name, "url": url}
    return spec


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    from shadowtap.recorder.errors import ConfigError

    keys = path.split(".")
    if keys[0] == "shadows" and len(keys) > 2:
        shadows = data.setdefault("shadows", [])
        targets = [s for s in shadows if isinstance(s, dict) and (keys[1] == "*" or s.get("name") == keys[1])]
        if keys[1] != "*" and not targets:
            raise ConfigError(f"no shadow named {keys[1]!r} (add it with --shadow)", field=path)
        for target in targets:
            _set_nested(target, keys[2:], value, path)
        return
    _set_nested(data, keys, value, path)


def _set_nested(data: dict[str, Any], keys: list[str], value: Any, path: str) -> None:
    from shadowtap.recorder.errors import ConfigError

    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key!r} is not a section", field=path)
        node = child
    node[keys[-1]] = value


def _parse_route(spec: str) -> dict[str, Any]:
    from shadowtap.recorder.errors import ConfigError

    route: dict[str, Any] = {}
    for part in spec.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"expected KEY=VALUE, not {part!r}", field="--route")
        if key in ("methods", "mirror_methods", "shadows"):
            route[key] = [v.strip() for v in value.split(",") if v.strip()]
        elif key == "mirror":
            route[key] = value.strip().lower() in ("1", "true", "yes", "on")
        elif key == "sample_percent":
            try:
                route[key] = float(value)
            except ValueError:
                raise ConfigError(f"expected a number, not {value!r}", field="--route sample_percent") from None
        else:
            route[key] = value.strip()
    return route


def build_mapping(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    """The config file's mapping with every given flag applied on top."""
    from shadowtap.config import parse_yaml_value
    from shadowtap.recorder.errors import ConfigError

    data = copy.deepcopy(base)
    record = data.get("record")
    if isinstance(record, dict) and isinstance(record.get("redaction"), bool):
        # `redaction: false` in the file is the rules' switch, which flags and --set keys go under.
        record["redaction"] = {"enabled": record["redaction"]}
    if "shadows" in data:
        data["shadows"] = _shadow_list(data["shadows"])
    for spec in args.shadow:
        name, sep, url = spec.partition("=")
        if not sep or not name:
            raise ConfigError(f"expected NAME=URL, not {spec!r}", field="--shadow")
        shadows = data.setdefault("shadows", [])
        existing = [s for s in shadows if isinstance(s, dict) and s.get("name") == name]
        if existing:
            existing[0]["url"] = url
        else:
            shadows.append({"name": name, "url": url})
    if args.route:
        mirror = data.setdefault("mirror", {})
        if not isinstance(mirror, dict):
            raise ConfigError("expected a mapping", field="mirror")
        mirror["routes"] = [*mirror.get("routes", []), *(_parse_route(r) for r in args.route)]
    if args.trip:
        trips = data.get("trips", [])
        data["trips"] = [*(trips if isinstance(trips, list) else [trips]), *args.trip]
    for flag, path, _kind, _constant, _help in _FLAGS:
        value = getattr(args, _dest(flag))
        if value is not None:
            _set_path(data, path, value)
    for assignment in args.set:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, not {assignment!r}", field="--set")
        _set_path(data, key, parse_yaml_value(text, field=key))
    return data


def load_config(args: argparse.Namespace, path: str | None) -> Any:
    """The validated ``ProxyConfig`` (and, through the data path, its forward settings)."""
    from shadowtap.config import load_mapping
    from shadowtap.proxy.app import build_forward_settings, listen_ssl_context
    from shadowtap.proxy.config import ProxyConfig
    from shadowtap.proxy.mirror import shadow_ssl_context

    base = load_mapping(path) if path else {}
    config = ProxyConfig.from_mapping(build_mapping(args, base))
    build_forward_settings(config)
    listen_ssl_context(config)
    for shadow in config.shadows:
        shadow.credential_values()
        if shadow.url.startswith("https:"):
            shadow_ssl_context(shadow)
    config.admin.token()
    return config


def run(args: argparse.Namespace) -> int:
    from shadowtap import runtime
    from shadowtap.workers import serve_proxy

    if args.check_config:
        config = load_config(args, args.check_config)
        print(f"shadowtap proxy: config OK ({args.check_config})")
        print(json.dumps(config.to_mapping(), indent=2, sort_keys=True))
        return 0
    config = load_config(args, args.config)
    return serve_proxy(config, run=runtime.run)
