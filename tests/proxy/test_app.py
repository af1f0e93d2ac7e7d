"""Assembly helpers without sockets: the public API, forward settings, TLS and tape options."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shadowtap import proxy
from shadowtap.proxy.app import build_forward_settings, listen_ssl_context, tape_options
from shadowtap.proxy.config import ProxyConfig
from shadowtap.recorder.errors import ConfigError


def test_public_api_is_pinned() -> None:
    assert sorted(proxy.__all__) == sorted(
        [
            "CORRELATION_HEADER", "MARKER_HEADER", "AdminServer", "AdminSettings", "BreakerSettings",
            "CircuitBreaker", "EventLog", "EventsSettings", "ForwardSettings", "ListenAddress", "MetricsStage",
            "MirrorSettings", "MirrorStage", "PrimaryObserver", "ProxiedExchange", "ProxyApp", "ProxyConfig",
            "ProxyMetrics",
            "ProxyServer", "RecordSettings", "RecordStage", "RouteRule", "RuntimeFlags", "SampleKey",
            "ShadowSettings", "Stage", "TlsSettings", "build_forward_settings", "serve_app",
        ]
    )  # fmt: skip
    for name in proxy.__all__:
        assert getattr(proxy, name) is not None


def test_forward_section_goes_to_the_data_path_with_key_names() -> None:
    config = ProxyConfig.from_mapping(
        {"primary": "http://127.0.0.1:9000", "forward": {"connect_timeout_s": 2, "via": "shadowtap"}}
    )
    forward = build_forward_settings(config)
    assert forward.primary == "http://127.0.0.1:9000"
    assert forward.connect_timeout_s == 2.0 and forward.via == "shadowtap"
    for bad, field in [
        ({"connect_timeout_s": 0}, "forward.connect_timeout_s"),
        ({"connect_timeout_s": "soon"}, "forward.connect_timeout_s"),
        ({"colour": "red"}, "forward.colour"),
    ]:
        with pytest.raises(ConfigError) as info:
            build_forward_settings(ProxyConfig.from_mapping({"primary": "http://127.0.0.1:9000", "forward": bad}))
        assert info.value.field == field


def test_tls_listen_context(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    base = {"primary": "http://127.0.0.1:9000"}
    assert listen_ssl_context(ProxyConfig.from_mapping(base)) is None
    context = listen_ssl_context(
        ProxyConfig.from_mapping({**base, "tls": {"cert_file": str(cert), "key_file": str(key)}})
    )
    assert context is not None
    with pytest.raises(ConfigError) as info:
        listen_ssl_context(ProxyConfig.from_mapping({**base, "tls": {"cert_file": str(key), "key_file": str(key)}}))
    assert info.value.field == "tls.cert_file"


def test_tape_options_follow_record_settings() -> None:
    config = ProxyConfig.from_mapping(
        {"primary": "http://127.0.0.1:9", "record": {"tape": "t", "compression": "zstd", "fsync": "every",
                                                      "redaction": False, "queue_size": 7}}
    )  # fmt: skip
    options = tape_options(config)
    assert options.compression == "zstd" and options.fsync == "every" and options.queue_size == 7
    assert options.redaction is None
    assert tape_options(ProxyConfig.from_mapping({"primary": "http://127.0.0.1:9"})).redaction is not None
