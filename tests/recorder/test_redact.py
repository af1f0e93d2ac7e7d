"""Redaction: default secret headers, configured rules, the key's origin, and idempotence."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from recorder import (
    ConfigError,
    Exchange,
    RedactionRules,
    Redactor,
    Request,
    Response,
    SyncTapeWriter,
    TapeOptions,
    TapeReader,
    TapeWriter,
    exchange_from_wire,
    exchange_to_wire,
    header_value,
)
from recorder.redact import resolve_redaction_key

KEY = b"test-key"


def exchange(
    request_headers: tuple[tuple[bytes, bytes], ...] = (),
    target: str = "/",
    body: bytes = b"",
    response_headers: tuple[tuple[bytes, bytes], ...] = (),
    response_body: bytes = b"",
) -> Exchange:
    return Exchange(
        id="x",
        started_at_ns=1,
        request=Request("POST", target, request_headers, body),
        primary=Response(200, "OK", response_headers, response_body),
        shadows={"v2": Response(200, "OK", response_headers, response_body)},
    )


def test_default_rules_hash_secret_headers_keeping_scheme_and_cookie_names() -> None:
    redactor = Redactor(RedactionRules(), KEY)
    ex = exchange(
        (
            (b"Authorization", b"Bearer tok-1"),
            (b"cookie", b"sid=abc; theme=dark"),
            (b"X-API-Key", b"k1"),
            (b"Proxy-Authorization", b"Basic dXNlcjpwdw=="),
            (b"Accept", b"*/*"),
        ),
        response_headers=((b"Set-Cookie", b"sid=abc; Path=/; HttpOnly"),),
    )
    out = redactor.redact(ex)
    headers = dict(out.request.headers)
    assert headers[b"Authorization"] == b"Bearer " + redactor.hash_bytes(b"tok-1")
    assert headers[b"cookie"] == b"sid=" + redactor.hash_bytes(b"abc") + b"; theme=" + redactor.hash_bytes(b"dark")
    assert headers[b"X-API-Key"].startswith(b"redacted:hmac:") and len(headers[b"X-API-Key"]) == 14 + 16
    assert headers[b"Proxy-Authorization"].startswith(b"Basic redacted:hmac:")
    assert headers[b"Accept"] == b"*/*"
    assert [k for k, _ in out.request.headers] == [k for k, _ in ex.request.headers]
    for name in ("primary", "v2"):
        response = out.response(name)
        assert response is not None
        assert (
            header_value(response.headers, b"set-cookie")
            == b"sid=" + redactor.hash_bytes(b"abc") + b"; Path=/; HttpOnly"
        )
    assert b"tok-1" not in repr(out).encode() and b"abc" not in repr(out).encode()


def test_equal_secrets_match_and_different_keys_differ() -> None:
    a, b = Redactor(RedactionRules(), KEY), Redactor(RedactionRules(), b"other")
    assert a.hash_bytes(b"s") == a.hash_bytes(b"s") != a.hash_bytes(b"t")
    assert a.hash_bytes(b"s") != b.hash_bytes(b"s")


def test_redaction_is_idempotent_so_merged_tapes_keep_their_hashes() -> None:
    redactor = Redactor(RedactionRules(), KEY)
    once = redactor.redact(exchange(((b"Authorization", b"Bearer t"), (b"Cookie", b"a=1"))))
    assert Redactor(RedactionRules(), b"another key").redact(once) == once


def test_nothing_to_redact_returns_the_same_object() -> None:
    ex = exchange(((b"Accept", b"*/*"),))
    assert Redactor(RedactionRules(), KEY).redact(ex) is ex


def test_query_params_hashed_or_removed_others_untouched() -> None:
    rules = RedactionRules(hash_query_params=("token",), remove_query_params=("sig",))
    redactor = Redactor(rules, KEY)
    out = redactor.redact(exchange(target="/p?a=1&token=s%20x&sig=zz&b=&token=s%20x#frag"))
    hashed = redactor.hash_bytes(b"s%20x").decode()
    assert out.request.target == f"/p?a=1&token={hashed}&b=&token={hashed}#frag"
    assert redactor.redact(exchange(target="/p?sig=1")).request.target == "/p"


def test_json_fields_at_any_depth_with_content_length_fixed() -> None:
    rules = RedactionRules(hash_json_fields=("password",), remove_json_fields=("ssn",))
    redactor = Redactor(rules, KEY)
    body = json.dumps({"user": {"password": "hunter2", "ssn": "1", "name": "a"}, "items": [{"password": 7}]}).encode()
    out = redactor.redact(
        exchange(
            ((b"Content-Type", b"application/json; charset=utf-8"), (b"Content-Length", str(len(body)).encode())),
            body=body,
        )
    )
    doc = json.loads(out.request.body)
    assert doc == {
        "user": {"password": redactor.hash_bytes(b"hunter2").decode(), "name": "a"},
        "items": [{"password": redactor.hash_bytes(b"7").decode()}],
    }
    assert out.request.header(b"content-length") == str(len(out.request.body)).encode()


@pytest.mark.parametrize(
    ("headers", "body", "truncated"),
    [
        (((b"Content-Type", b"application/json"), (b"Content-Encoding", b"gzip")), b'{"password":"x"}', None),
        (((b"Content-Type", b"text/plain"),), b'{"password":"x"}', None),
        (((b"Content-Type", b"application/json"),), b'{"password":', None),
        (((b"Content-Type", b"application/json"),), b'{"password":"x"}', 99_999),
    ],
    ids=["content-encoded", "not-json-type", "invalid-json", "truncated"],
)
def test_bodies_that_cannot_be_rewritten_faithfully_are_left_alone(
    headers: tuple[tuple[bytes, bytes], ...], body: bytes, truncated: int | None
) -> None:
    redactor = Redactor(RedactionRules(hash_json_fields=("password",)), KEY)
    ex = Exchange(id="x", started_at_ns=1, request=Request("POST", "/", headers, body, truncated_from=truncated))
    assert redactor.redact(ex) is ex


def test_removed_headers_disappear() -> None:
    redactor = Redactor(RedactionRules(remove_headers=("X-Internal",)), KEY)
    out = redactor.redact(exchange(((b"x-internal", b"1"), (b"A", b"2"))))
    assert out.request.headers == ((b"A", b"2"),)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"hash_headers": "authorization"}, "redaction.hash_headers"),
        ({"remove_json_fields": ("",)}, "redaction.remove_json_fields"),
        ({"hash_headers": ("Cookie",), "remove_headers": ("cookie",)}, "redaction.remove_headers"),
        ({"hash_hex_chars": 4}, "redaction.hash_hex_chars"),
        ({"key_file_name": "../k"}, "redaction.key_file_name"),
    ],
)
def test_bad_rules_name_the_key(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedactionRules(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_rules_from_a_config_mapping() -> None:
    rules = RedactionRules.from_mapping({"hash_json_fields": ["password"], "remove_headers": ["x-a"]})
    assert rules.hash_json_fields == ("password",)
    with pytest.raises(ConfigError) as info:
        RedactionRules.from_mapping({"hash_jsn_fields": ["x"]})
    assert info.value.field == "redaction.hash_jsn_fields"


def test_key_from_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOWTAP_REDACTION_KEY", "from-env")
    assert resolve_redaction_key(RedactionRules(), tmp_path) == b"from-env"
    assert not (tmp_path / "redaction.key").exists()


def test_key_file_is_generated_private_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHADOWTAP_REDACTION_KEY", raising=False)
    first = resolve_redaction_key(RedactionRules(), tmp_path)
    key_file = tmp_path / "redaction.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first) == 64
    assert resolve_redaction_key(RedactionRules(), tmp_path) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redaction.key"]


def test_writer_redacts_by_default_and_not_when_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHADOWTAP_REDACTION_KEY", raising=False)
    ex = exchange(((b"Authorization", b"Bearer sekrit"),))
    with SyncTapeWriter(tmp_path / "on", TapeOptions(fsync="none")) as writer:
        writer.write(ex)
    with SyncTapeWriter(tmp_path / "off", TapeOptions(fsync="none", redaction=None)) as writer:
        writer.write(ex)
    for segment in (tmp_path / "on").glob("*.stape"):
        assert b"sekrit" not in segment.read_bytes()
    (on,) = TapeReader(tmp_path / "on")
    key = (tmp_path / "on" / "redaction.key").read_bytes().strip()
    assert on.request.header(b"authorization") == b"Bearer " + Redactor(RedactionRules(), key).hash_bytes(b"sekrit")
    (off,) = TapeReader(tmp_path / "off")
    assert off == ex


def test_record_redaction_used_by_writers_matches_exchange_redaction() -> None:
    rules = RedactionRules(hash_query_params=("token",), hash_json_fields=("password",), remove_headers=("x-drop",))
    redactor = Redactor(rules, KEY)
    body = b'{"password":"p","keep":1}'
    json_headers = ((b"Content-Type", b"application/json"), (b"Content-Length", b"25"), (b"X-Drop", b"1"))
    ex = exchange(
        ((b"Authorization", b"Bearer t"), *json_headers),
        target="/a?token=t&b=2",
        body=body,
        response_headers=((b"Set-Cookie", b"s=1; Secure"), *json_headers),
        response_body=body,
    )
    record = exchange_to_wire(ex)
    redactor.redact_record(record)
    assert exchange_from_wire(record) == redactor.redact(ex) != ex
    assert exchange_to_wire(ex) != record  # the model objects themselves were not touched


async def test_async_writer_redacts_with_the_environment_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOWTAP_REDACTION_KEY", "shared-by-all-sidecars")
    ex = exchange(((b"Cookie", b"sid=s3cret"),), target="/x?api_key=k3y")
    options = TapeOptions(redaction=RedactionRules(hash_query_params=("api_key",)))
    async with TapeWriter(tmp_path, options) as writer:
        assert writer.submit(ex)
    assert not (tmp_path / "redaction.key").exists()
    (segment,) = tmp_path.glob("*.stape")
    assert b"s3cret" not in segment.read_bytes() and b"k3y" not in segment.read_bytes()
    (back,) = TapeReader(tmp_path)
    expected = Redactor(RedactionRules(hash_query_params=("api_key",)), b"shared-by-all-sidecars").redact(ex)
    assert back == expected
