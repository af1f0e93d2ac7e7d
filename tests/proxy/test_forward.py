"""ForwardSettings validation and the request-side header policy (no sockets)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from shadowtap.proxy.forward import ForwardSettings, parse_primary, upstream_ssl_context
from shadowtap.proxy.rewrite import RequestRewriter
from shadowtap.recorder.errors import ConfigError


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"primary": "ftp://x"}, "primary"),
        ({"primary": "http://"}, "primary"),
        ({"primary": "http://h:99999"}, "primary"),
        ({"primary": "http://h/?q=1"}, "primary"),
        ({"primary": "http://u:p@h"}, "primary"),
        ({"connect_timeout_s": 0}, "connect_timeout_s"),
        ({"first_byte_timeout_s": -1}, "first_byte_timeout_s"),
        ({"total_timeout_s": 0.0}, "total_timeout_s"),
        ({"keepalive_timeout_s": -5}, "keepalive_timeout_s"),
        ({"capture_limit_bytes": -1}, "capture_limit_bytes"),
        ({"pool_max_idle": 1.5}, "pool_max_idle"),
        ({"max_pipelined": 0}, "max_pipelined"),
        ({"max_header_bytes": 10}, "max_header_bytes"),
        ({"via": "bad\r\nX: y"}, "via"),
        ({"ca_file": ""}, "ca_file"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    values: dict[str, object] = {"primary": "http://127.0.0.1:9000", **kwargs}
    with pytest.raises(ConfigError) as info:
        ForwardSettings(**values)  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)


def test_parse_primary() -> None:
    target = parse_primary("https://api.internal/v1/")
    assert (target.scheme, target.host, target.port, target.path_prefix, target.authority) == (
        "https",
        "api.internal",
        443,
        b"/v1",
        b"api.internal",
    )
    assert target.tls
    v6 = parse_primary("http://[::1]:8080")
    assert (v6.host, v6.port, v6.authority) == ("::1", 8080, b"[::1]:8080")


def _rewrite(settings: ForwardSettings, headers: list[tuple[bytes, bytes]], **kw: object) -> bytes:
    options: dict[str, object] = {"client_ip": b"10.0.0.9", "scheme": b"http", "chunked": False, **kw}
    return RequestRewriter(settings).head(b"GET", b"/a?b=1", headers, **options)  # type: ignore[arg-type]


def test_rewriter_default_policy() -> None:
    settings = ForwardSettings(primary="http://127.0.0.1:9000")
    head = _rewrite(
        settings,
        [(b"Host", b"shop.example"), (b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1"), (b"Accept", b"*/*")],
    )
    assert head == (
        b"GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nAccept: */*\r\n"
        b"X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: shop.example\r\n\r\n"
    )


def test_rewriter_appends_to_forwarded_for_and_keeps_client_forwarded_fields() -> None:
    settings = ForwardSettings(primary="http://127.0.0.1:9000")
    head = _rewrite(
        settings,
        [
            (b"Host", b"h"),
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"o"),
        ],
    )
    assert b"x-forwarded-for: 1.2.3.4, 10.0.0.9\r\n" in head
    repeated = _rewrite(settings, [(b"X-Forwarded-For", b"1.1.1.1"), (b"X-Forwarded-For", b"2.2.2.2")])
    assert b"X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2, 10.0.0.9\r\n" in repeated
    off = _rewrite(ForwardSettings(primary="http://h", x_forwarded_for=False), [(b"X-Forwarded-For", b"1.1.1.1")])
    assert b"X-Forwarded-For: 1.1.1.1\r\n" in off
    assert head.count(b"X-Forwarded-Proto") == 1 and b"X-Forwarded-Proto: https" in head
    assert head.count(b"X-Forwarded-Host") == 1


def test_rewriter_host_prefix_via_and_chunked() -> None:
    settings = ForwardSettings(
        primary="http://10.1.1.1:8080/base",
        preserve_host=False,
        via="shadowtap",
        x_forwarded_for=False,
        x_forwarded_proto=False,
        x_forwarded_host=False,
    )
    head = _rewrite(settings, [(b"host", b"public.example"), (b"Transfer-Encoding", b"chunked")], chunked=True)
    assert head == (
        b"GET /base/a?b=1 HTTP/1.1\r\nhost: 10.1.1.1:8080\r\nVia: 1.1 shadowtap\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    # HTTP/1.0 clients may send no Host; the primary still gets one.
    no_host = _rewrite(settings, [])
    assert b"\r\nHost: 10.1.1.1:8080\r\n" in no_host


def test_rewriter_keeps_upgrade_fields_for_upgrades() -> None:
    settings = ForwardSettings(primary="http://127.0.0.1:9000", x_forwarded_for=False)
    headers = [(b"Host", b"h"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    assert b"Upgrade: websocket" in _rewrite(settings, headers, upgrade=True)
    assert b"Upgrade" not in _rewrite(settings, headers)


def test_upstream_tls_context(tmp_path: Path) -> None:
    assert upstream_ssl_context(ForwardSettings(primary="http://h")) is None
    verified = upstream_ssl_context(ForwardSettings(primary="https://h"))
    assert verified is not None and verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
    unverified = upstream_ssl_context(ForwardSettings(primary="https://h", tls_verify=False))
    assert unverified is not None and unverified.verify_mode == ssl.CERT_NONE
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("nope")
    with pytest.raises(ConfigError) as info:
        upstream_ssl_context(ForwardSettings(primary="https://h", ca_file=str(bad)))
    assert info.value.field == "ca_file"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://[::1", "not a valid URL"),
        ("http://[::1]x/", "not a valid URL"),
        ("http://[127.0.0.1]/", "not a valid URL"),
        ("http://[v1.x]/", "brackets"),
        ("http://a b/", "spaces"),
        ("http://ab/c d", "spaces"),
        ("http://ab/c\td", "control"),
        ("http://ab\n/", "control"),
        (" http://ab/", "spaces"),
        ("http://ab/\x7f", "control"),
        ("http://a<b>/", "host name"),
        ("http://a..b/", "host name"),
        ("http://ab:0/", "1..65535"),
        ("http://@ab/", "credentials"),
        ("http://ab/?", "query"),
        ("http://ab/caf\u00e9", "ASCII"),
    ],
)
def test_parse_primary_refuses_in_one_line(url: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_primary(url, field="shadows.v2.url")
    assert info.value.field == "shadows.v2.url" and needle in str(info.value) and "\n" not in str(info.value)


def test_parse_primary_accepts_names_and_addresses() -> None:
    for url in ("http://api_v2.internal:8080/", "http://host./", "http://10.0.0.1/", "https://b\u00fccher.example/"):
        parse_primary(url)
    assert parse_primary("http://[fe80::1]:81").authority == b"[fe80::1]:81"
