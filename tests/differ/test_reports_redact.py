"""Render-time redaction: secrets go, shape stays."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from shadowtap.differ.reports.redact import (
    REDACTED,
    is_secret_header,
    is_secret_name,
    redact_form,
    redact_header_value,
    redact_headers,
    redact_json,
    redact_multipart,
    redact_target,
    redact_text,
)
from tests.differ.report_fixtures import JWT_SECRET


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (b"Authorization", b"Bearer abc.def", b"Bearer [redacted]"),
        (b"authorization", b"Basic dXNlcjpwYXNz", b"Basic [redacted]"),
        (b"Authorization", b"opaque-token-without-scheme", b"[redacted]"),
        (b"Proxy-Authorization", b"Digest username=x", b"Digest [redacted]"),
        (b"X-Api-Key", b"k-123", b"[redacted]"),
        (b"X-Auth-Token", b"t-1", b"[redacted]"),
        (b"Cookie", b"sid=abc; theme=dark", b"sid=[redacted]; theme=[redacted]"),
        (
            b"Set-Cookie",
            b"session=abc; Path=/; Max-Age=60; HttpOnly",
            b"session=[redacted]; Path=/; Max-Age=60; HttpOnly",
        ),
        (b"Content-Type", b"application/json", b"application/json"),
        (b"WWW-Authenticate", b'Bearer realm="api"', b'Bearer realm="api"'),
        (b"X-Forwarded-For", b"10.0.0.1, " + JWT_SECRET.encode(), b"10.0.0.1, [redacted jwt]"),
    ],
)
def test_header_values(name: bytes, value: bytes, expected: bytes) -> None:
    assert redact_header_value(name, value) == expected


def test_headers_keep_order_case_and_duplicates() -> None:
    headers = ((b"X-A", b"1"), (b"Cookie", b"a=1"), (b"x-a", b"2"), (b"COOKIE", b"b=2"))
    assert redact_headers(headers) == (
        (b"X-A", b"1"),
        (b"Cookie", b"a=[redacted]"),
        (b"x-a", b"2"),
        (b"COOKIE", b"b=[redacted]"),
    )


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/users/7", "/users/7"),
        ("/u?token=abc&x=1", "/u?token=[redacted]&x=1"),
        ("/u?x=1&api_key=abc", "/u?x=1&api_key=[redacted]"),
        ("/u?access_token=a&refresh_token=b&page=2", "/u?access_token=[redacted]&refresh_token=[redacted]&page=2"),
        ("/u?API-KEY=a&key=b&monkey=c&zip_code=d", "/u?API-KEY=[redacted]&key=[redacted]&monkey=c&zip_code=d"),
        ("/u?password=p&flag&sig=s", "/u?password=[redacted]&flag&sig=[redacted]"),
        ("/u?client_secret=x;session=y", "/u?client_secret=[redacted];session=[redacted]"),
        ("/u?q=" + JWT_SECRET, "/u?q=[redacted jwt]"),
        ("/u?", "/u?"),
    ],
)
def test_targets(target: str, expected: str) -> None:
    assert redact_target(target) == expected


def test_forms_and_free_text() -> None:
    assert redact_form("user=ann&password=hunter2&remember=1") == "user=ann&password=[redacted]&remember=1"
    assert redact_text(f"Bearer {JWT_SECRET} ok") == "Bearer [redacted jwt] ok"
    assert redact_text("no secrets here eyJ.not.a.jwt") == "no secrets here eyJ.not.a.jwt"


def test_json_keeps_shape_and_only_replaces_secret_strings() -> None:
    value: dict[str, Any] = {
        "user": {"name": "Ann", "author": "Bob", "password": "p", "api_key": "k"},
        "tokens_used": 12,
        "session": {"id": "s-1"},
        "items": [{"access_token": "t", "n": 1}, "x " + JWT_SECRET],
        "secret": None,
    }
    redacted, changed = redact_json(value)
    assert changed
    assert redacted == {
        "user": {"name": "Ann", "author": "Bob", "password": REDACTED, "api_key": REDACTED},
        "tokens_used": 12,
        "session": {"id": "s-1"},
        "items": [{"access_token": REDACTED, "n": 1}, "x [redacted jwt]"],
        "secret": None,
    }
    assert value["user"]["password"] == "p"  # a copy, the input is untouched
    assert redact_json({"a": [1, {"b": "c"}]}) == ({"a": [1, {"b": "c"}]}, False)


@pytest.mark.parametrize("name", ["token", "X-Session-Token", "client_secret", "passwd", "apiKey", "Authorization"])
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["author", "monkey", "zip_code", "keyboard", "sessions_count", "description"])
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)
    assert not is_secret_name(name, in_query=True)


def test_url_credential_names_are_secrets_in_queries_only() -> None:
    for name in ("key", "sig", "signature", "X-Amz-Signature", "code", "session", "jsessionid"):
        assert is_secret_name(name, in_query=True)
        assert not is_secret_name(name)
    assert redact_json({"code": "E_TIMEOUT", "key": "user-7"}) == ({"code": "E_TIMEOUT", "key": "user-7"}, False)
    assert redact_target("/cb?code=abc&state=1") == "/cb?code=[redacted]&state=1"


def test_values_the_tape_already_hashed_are_kept() -> None:
    hashed = "redacted:hmac:0123456789abcdef"
    assert redact_header_value(b"Authorization", b"Bearer " + hashed.encode()) == b"Bearer " + hashed.encode()
    assert redact_header_value(b"X-Api-Key", hashed.encode()) == hashed.encode()
    assert redact_header_value(b"Cookie", b"a=" + hashed.encode() + b"; b=live") == (
        b"a=" + hashed.encode() + b"; b=[redacted]"
    )
    assert redact_target(f"/u?token={hashed}&api_key=live") == f"/u?token={hashed}&api_key=[redacted]"
    assert redact_target("/u?token=redacted%3Ahmac%3Aab") == "/u?token=redacted%3Ahmac%3Aab"
    assert redact_json({"password": hashed, "token": "live"}) == ({"password": hashed, "token": REDACTED}, True)


def test_multipart_fields_named_like_secrets_are_redacted() -> None:
    body = (
        "--XyZ\r\n"
        'Content-Disposition: form-data; name="user"\r\n\r\n'
        "ann\r\n"
        "--XyZ\r\n"
        'Content-Disposition: form-data; name="password"\r\n'
        "Content-Type: text/plain\r\n\r\n"
        "hunter2\r\nsecond line\r\n"
        "--XyZ\r\n"
        'Content-Disposition: form-data; name="avatar"; filename="a.png"\r\n\r\n'
        "PNGDATA\r\n"
        "--XyZ--\r\n"
    )
    redacted = redact_multipart(body)
    assert "hunter2" not in redacted and "second line" not in redacted
    assert 'name="password"\r\nContent-Type: text/plain\r\n\r\n[redacted]\r\n--XyZ' in redacted
    assert "ann\r\n" in redacted and "PNGDATA" in redacted


def test_jwt_detection_is_linear_on_hostile_runs_and_still_finds_tokens() -> None:
    # A 1 MiB run of "eyJ" used to be tried from every position (64 KiB took 3.7 s); it is one
    # scan now. The run is not a JWT and stays as it was.
    hostile = "eyJ" * 350_000
    assert redact_text(hostile) == hostile
    assert redact_text(f"a={JWT_SECRET}&b") == "a=[redacted jwt]&b"
    assert redact_text(f'{{"t": "{JWT_SECRET}"}}') == '{"t": "[redacted jwt]"}'


# Credentials, not words: names are matched exactly (any case), with the tape's own default lists.
SECRET_HEADER_NAMES = [
    "authorization",
    "Proxy-Authorization",
    "cookie",
    "Set-Cookie",
    "x-api-key",
    "X-Auth-Token",
    "x-csrf-token",
    "X-Amz-Security-Token",
]
ORDINARY_HEADER_NAMES = [
    "access-control-allow-credentials",
    "Access-Control-Allow-Headers",
    "WWW-Authenticate",
    "X-RateLimit-Remaining-Tokens",
    "X-Session-Count",
    "Content-Type",
    "Keep-Alive",
]
SECRET_FIELD_NAMES = [
    "password",
    "Passwd",
    "passphrase",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "accessToken",
    "refresh_token",
    "id_token",
    "session_token",
    "api_key",
    "apiKey",
    "api-key",
    "private_key",
]
ORDINARY_FIELD_NAMES = [
    "total_tokens",
    "max_tokens",
    "prompt_tokens",
    "tokens_used",
    "password_changed_at",
    "password_hint",
    "tokenizer",
    "keyboard",
    "author",
    "monkey",
    "secretary",
    "sessions_count",
    "credentials_expire_at",
    "description",
]


@pytest.mark.parametrize("name", SECRET_HEADER_NAMES)
def test_credential_headers_are_secret(name: str) -> None:
    assert is_secret_header(name.encode())
    assert redact_header_value(name.encode(), b"live-value-123") != b"live-value-123"


@pytest.mark.parametrize("name", ORDINARY_HEADER_NAMES)
def test_headers_that_merely_mention_a_word_are_shown(name: str) -> None:
    assert not is_secret_header(name.encode())
    assert redact_header_value(name.encode(), b"true") == b"true"


@pytest.mark.parametrize("name", SECRET_FIELD_NAMES)
def test_credential_fields_are_secret_everywhere(name: str) -> None:
    assert is_secret_name(name)
    assert is_secret_name(name, in_query=True)
    assert redact_json({name: "live"}) == ({name: REDACTED}, True)
    assert redact_target(f"/u?{name}=live") == f"/u?{name}={REDACTED}"
    assert redact_form(f"{name}=live&a=1") == f"{name}={REDACTED}&a=1"


@pytest.mark.parametrize("name", ORDINARY_FIELD_NAMES)
def test_fields_that_merely_mention_a_word_are_shown(name: str) -> None:
    assert not is_secret_name(name)
    assert not is_secret_name(name, in_query=True)
    document = {name: "2025-11-22T00:00:00Z", "n": {name: "v"}}
    assert redact_json(document, json.dumps(document)) == (document, False)
    assert redact_target(f"/u?{name}=v") == f"/u?{name}=v"


def test_an_llm_usage_block_and_cors_headers_survive_intact() -> None:
    usage = {"usage": {"prompt_tokens": "12", "total_tokens": "40", "max_tokens": "512"}, "tokenizer": "cl100k"}
    assert redact_json(usage, json.dumps(usage)) == (usage, False)
    cors = ((b"Access-Control-Allow-Credentials", b"true"), (b"Access-Control-Allow-Origin", b"https://a.example"))
    assert redact_headers(cors) == cors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bearer abcdef0123456789", "Bearer [redacted]"),
        ("auth: bearer abcdef0123456789.xyz~", "auth: bearer [redacted]"),
        ("Basic dXNlcjpwYXNzd29yZA==", "Basic [redacted]"),
        ("call with Basic dXNlcjpwYXNz== please", "call with Basic [redacted] please"),
        ("key AKIAIOSFODNN7EXAMPLE here", "key [redacted] here"),
        ("ghp_" + "a1B2c3D4e5" * 4, "[redacted]"),
        ("xoxb-1234567890-abcdefghij", "[redacted]"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpA\n-----END RSA PRIVATE KEY-----", "[redacted]"),
        # Words and challenges are not credentials.
        ("Basic plan", "Basic plan"),
        ("a Bearer of bad news", "a Bearer of bad news"),
        ('Bearer realm="api", error="invalid_token"', 'Bearer realm="api", error="invalid_token"'),
        ('Basic realm="Restricted Area"', 'Basic realm="Restricted Area"'),
        ('Bearer error_description="token expired"', 'Bearer error_description="token expired"'),
        ("sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", None),
        ('etag W/"5d41402abc4b2a76b9719d911017c592"', None),
    ],
)
def test_values_shaped_like_secrets_are_redacted_wherever_they_are(text: str, expected: str | None) -> None:
    assert redact_text(text) == (text if expected is None else expected)


def test_secret_shaped_values_are_caught_under_ordinary_names() -> None:
    assert redact_header_value(b"X-Forwarded-Authorization", b"Bearer abcdef0123456789") == b"Bearer [redacted]"
    assert redact_header_value(b"X-Upstream", b"Basic dXNlcjpwYXNz==") == b"Basic [redacted]"
    assert redact_json({"note": "Bearer abcdef0123456789"}) == ({"note": "Bearer [redacted]"}, True)
    document = {"header": "Basic dXNlcjpwYXNzd29yZA=="}
    assert redact_json(document, json.dumps(document)) == ({"header": "Basic [redacted]"}, True)
    assert redact_target("/cb?note=Bearer+abcdef0123456789") == "/cb?note=Bearer+[redacted]"


def test_credential_header_names_are_credentials_in_json_too() -> None:
    echoed = {"headers": {"Authorization": "opaque-credential", "Cookie": "sid=1", "Accept": "*/*"}}
    assert redact_json(echoed, json.dumps(echoed)) == (
        {"headers": {"Authorization": REDACTED, "Cookie": REDACTED, "Accept": "*/*"}},
        True,
    )


def test_nameless_cookies_are_values() -> None:
    assert redact_header_value(b"Cookie", b"opaque; a=1; ") == b"[redacted]; a=[redacted]; "
    assert redact_header_value(b"Set-Cookie", b"opaque; Secure; HttpOnly") == b"[redacted]; Secure; HttpOnly"


def test_json_names_spelled_with_escapes_are_still_found() -> None:
    text = '{"pass\\u0077ord": "hunter2"}'
    assert redact_json(json.loads(text), text) == ({"password": REDACTED}, True)


def test_shape_detection_is_linear_on_hostile_runs() -> None:
    for hostile in (
        "Bearer " * 100_000 + "Basic " + "A" * 500_000 + '"',
        "-----BEGIN PRIVATE KEY-----" * 20_000,
        "ghp_" * 100_000 + "xoxb-" * 100_000 + "AKIA" * 100_000,
        "Bearer x=" * 100_000,
    ):
        started = time.perf_counter()
        redact_text(hostile)
        assert time.perf_counter() - started < 1.0, hostile[:20]
