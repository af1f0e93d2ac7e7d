"""Redaction: default secret headers, configured rules, the key's origin, and idempotence."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from shadowtap.recorder import (
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
from shadowtap.recorder.redact import default_key_path, resolve_redaction_key

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
    rules = RedactionRules(query_params=(("token", "hash"), ("sig", "remove")))
    redactor = Redactor(rules, KEY)
    out = redactor.redact(exchange(target="/p?a=1&token=s%20x&sig=zz&b=&Token=s%20x#frag"))
    hashed = redactor.hash_bytes(b"s%20x").decode()
    assert out.request.target == f"/p?a=1&token={hashed}&b=&Token={hashed}#frag"
    assert redactor.redact(exchange(target="/p?sig=1")).request.target == "/p"


def test_default_names_are_exact_and_any_case_never_substrings() -> None:
    redactor = Redactor(RedactionRules(), KEY)
    target = "/p?api_key=k1&access_token=t1&tokenizer=wp&password_hint_shown=1&PassWord=p1&apiKey=k2&q=x"
    out = redactor.redact(exchange(target=target))
    assert out.request.target == (
        f"/p?api_key={redactor.hash_bytes(b'k1').decode()}&access_token={redactor.hash_bytes(b't1').decode()}"
        f"&tokenizer=wp&password_hint_shown=1&PassWord={redactor.hash_bytes(b'p1').decode()}"
        f"&apiKey={redactor.hash_bytes(b'k2').decode()}&q=x"
    )
    body = json.dumps(
        {"password": "p", "Token": "t", "tokenizer": "wp", "password_hint_shown": True, "my_token_count": 3}
    ).encode()
    doc = json.loads(redactor.redact(exchange(JSON_TYPE, body=body)).request.body)
    assert doc == {
        "password": redactor.hash_bytes(b"p").decode(),
        "Token": redactor.hash_bytes(b"t").decode(),
        "tokenizer": "wp",
        "password_hint_shown": True,
        "my_token_count": 3,
    }
    headers = redactor.redact(
        exchange(((b"X-Auth-Token", b"a"), (b"x-csrf-token", b"c"), (b"X-Auth-Token-Hint", b"h")))
    ).request.headers
    assert headers == (
        (b"X-Auth-Token", redactor.hash_bytes(b"a")),
        (b"x-csrf-token", redactor.hash_bytes(b"c")),
        (b"X-Auth-Token-Hint", b"h"),
    )


JSON_TYPE = ((b"Content-Type", b"application/json"),)


def test_json_fields_at_any_depth_with_content_length_fixed() -> None:
    rules = RedactionRules(json_fields=(("password", "hash"), ("ssn", "remove")))
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


def test_json_paths_match_from_the_root_with_array_wildcards() -> None:
    rules = RedactionRules(
        extend_defaults=False, json_fields=(("user.pin", "hash"), ("items[*].card", "remove"), ("codes[*]", "hash"))
    )
    redactor = Redactor(rules, KEY)
    body = {
        "user": {"pin": "1234", "name": "a"},
        "other": {"user": {"pin": "kept: not at the path"}},
        "items": [{"card": "4111", "sku": 1}, {"sku": 2}],
        "codes": ["c1", "c2"],
        "pin": "kept: a path is not a name",
    }
    out = json.loads(redactor.redact(exchange(JSON_TYPE, body=json.dumps(body).encode())).request.body)
    assert out == {
        "user": {"pin": redactor.hash_bytes(b"1234").decode(), "name": "a"},
        "other": {"user": {"pin": "kept: not at the path"}},
        "items": [{"sku": 1}, {"sku": 2}],
        "codes": [redactor.hash_bytes(b"c1").decode(), redactor.hash_bytes(b"c2").decode()],
        "pin": "kept: a path is not a name",
    }
    root_array = Redactor(RedactionRules(extend_defaults=False, json_fields=(("[*].pin", "remove"),)), KEY)
    out = root_array.redact(exchange(JSON_TYPE, body=b'[{"pin":1,"a":2}]'))
    assert out.request.body == b'[{"a":2}]'


def test_escaped_json_names_are_still_found() -> None:
    redactor = Redactor(RedactionRules(), KEY)
    out = redactor.redact(exchange(JSON_TYPE, body=b'{"pass\\u0077ord": "hunter2"}'))
    assert b"hunter2" not in out.request.body


def test_encoded_query_names_are_still_found() -> None:
    redactor = Redactor(RedactionRules(), KEY)
    out = redactor.redact(exchange(target="/p?p%61ssword=hunter2&q=a+b&ACCESS_TOKEN=t"))
    assert "hunter2" not in out.request.target and "=t" not in out.request.target
    assert out.request.target.endswith("&q=a+b&ACCESS_TOKEN=" + redactor.hash_bytes(b"t").decode())


def test_form_bodies_urlencoded_and_multipart() -> None:
    redactor = Redactor(RedactionRules(form_fields=(("otp", "remove"),)), KEY)
    form = ((b"Content-Type", b"application/x-www-form-urlencoded"), (b"Content-Length", b"39"))
    out = redactor.redact(exchange(form, body=b"user=al&password=hunter2&otp=12&passwd"))
    assert out.request.body == b"user=al&password=" + redactor.hash_bytes(b"hunter2") + b"&passwd"
    assert out.request.header(b"content-length") == str(len(out.request.body)).encode()
    multipart = (
        b'--XyZ\r\nContent-Disposition: form-data; name="user"\r\n\r\nal\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="password"\r\n\r\nhunter2\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="otp"\r\n\r\n12\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="doc"; filename="password"\r\n\r\nfile body\r\n'
        b"--XyZ--\r\n"
    )
    out = redactor.redact(exchange(((b"Content-Type", b'multipart/form-data; boundary="XyZ"'),), body=multipart))
    assert out.request.body == (
        b'--XyZ\r\nContent-Disposition: form-data; name="user"\r\n\r\nal\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="password"\r\n\r\n' + redactor.hash_bytes(b"hunter2") + b"\r\n"
        b'--XyZ\r\nContent-Disposition: form-data; name="doc"; filename="password"\r\n\r\nfile body\r\n'
        b"--XyZ--\r\n"
    )


def test_keep_carves_a_name_out_of_the_defaults_and_extend_defaults_false_replaces_them() -> None:
    rules = RedactionRules(json_fields=(("token", "keep"),))
    assert ("token", "keep") in rules.json_fields and "token" not in rules.names("json_fields")
    redactor = Redactor(rules, KEY)
    out = json.loads(redactor.redact(exchange(JSON_TYPE, body=b'{"token":"t","password":"p"}')).request.body)
    assert out == {"token": "t", "password": redactor.hash_bytes(b"p").decode()}
    only = RedactionRules(extend_defaults=False, headers=(("x-mine", "hash"),))
    assert only.headers == (("x-mine", "hash"),) and only.query_params == ()
    assert Redactor(only, KEY).redact(exchange(((b"Authorization", b"Bearer t"),))).request.headers == (
        (b"Authorization", b"Bearer t"),
    )
    removing = RedactionRules(action="remove")
    assert ("authorization", "remove") in removing.headers


def test_rules_that_redact_alike_compare_equal() -> None:
    assert RedactionRules(headers=(("Authorization", "hash"),)) == RedactionRules()
    assert RedactionRules(query_params=(("b", "hash"), ("a", "hash"))) == RedactionRules(
        query_params=(("a", "hash"), ("b", "hash"))
    )


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
    redactor = Redactor(RedactionRules(json_fields=(("password", "hash"),)), KEY)
    ex = Exchange(id="x", started_at_ns=1, request=Request("POST", "/", headers, body, truncated_from=truncated))
    assert redactor.redact(ex) is ex


def test_removed_headers_disappear() -> None:
    redactor = Redactor(RedactionRules(headers=(("X-Internal", "remove"),)), KEY)
    out = redactor.redact(exchange(((b"x-internal", b"1"), (b"A", b"2"))))
    assert out.request.headers == ((b"A", b"2"),)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"headers": "authorization"}, "redaction.headers"),
        ({"json_fields": ("",)}, "redaction.json_fields[0]"),
        ({"json_fields": ("a", "b", "x..y")}, "redaction.json_fields[2]"),
        ({"json_fields": ("items[0].card",)}, "redaction.json_fields[0]"),
        ({"headers": (("Cookie", "hash"), ("cookie", "remove"))}, "redaction.headers[1]"),
        ({"headers": ("Bad Header",)}, "redaction.headers[0]"),
        ({"query_params": (("a", "scramble"),)}, "redaction.query_params[0]"),
        ({"action": "scramble"}, "redaction.action"),
        ({"hash_hex_chars": 4}, "redaction.hash_hex_chars"),
        ({"key_file": ""}, "redaction.key_file"),
        ({"extend_defaults": "no"}, "redaction.extend_defaults"),
    ],
)
def test_bad_rules_name_the_key(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedactionRules(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_rules_from_a_config_mapping_in_every_form() -> None:
    rules = RedactionRules.from_mapping(
        {
            "headers": ["X-Session", {"X-Debug": "remove"}],
            "query_params": {"sig": "remove", "tenant_key": "hash"},
            "json_fields": {"action": "remove", "names": ["user.ssn", "items[*].card"]},
            "form_fields": ["pin"],
            "key_file": "/run/keys/redaction",
        }
    )
    assert {("x-session", "hash"), ("x-debug", "remove"), ("authorization", "hash")} <= set(rules.headers)
    assert {("sig", "remove"), ("tenant_key", "hash"), ("api_key", "hash")} <= set(rules.query_params)
    assert {("user.ssn", "remove"), ("items[*].card", "remove"), ("password", "hash")} <= set(rules.json_fields)
    assert ("pin", "hash") in rules.form_fields and rules.key_file == "/run/keys/redaction"
    assert RedactionRules.from_mapping(True) == RedactionRules()
    assert RedactionRules.from_mapping(False) == RedactionRules(enabled=False)
    # The first format's keys still read.
    legacy = RedactionRules.from_mapping({"hash_json_fields": ["pin"], "remove_headers": ["x-a"]})
    assert ("pin", "hash") in legacy.json_fields and ("x-a", "remove") in legacy.headers


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"hash_jsn_fields": ["x"]}, "record.redaction.hash_jsn_fields"),
        ({"json_fields": ["a", "b", "c[0]"]}, "record.redaction.json_fields[2]"),
        ({"json_fields": {"a": "scramble"}}, "record.redaction.json_fields.a"),
        ({"json_fields": {"action": "remove", "names": ["ok", ""]}}, "record.redaction.json_fields.names[1]"),
        ({"headers": 7}, "record.redaction.headers"),
        ({"action": "x"}, "record.redaction.action"),
        ({"hash_hex_chars": 2}, "record.redaction.hash_hex_chars"),
        ("yes", "record.redaction"),
    ],
)
def test_config_errors_name_the_key(section: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedactionRules.from_mapping(section, "record.redaction")
    assert info.value.field == field


def test_key_from_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOWTAP_REDACTION_KEY", "from-env")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert resolve_redaction_key(RedactionRules(), tmp_path) == b"from-env"
    assert not (tmp_path / "redaction.key").exists() and not (tmp_path / "state").exists()


def test_key_file_is_generated_private_outside_the_tape_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHADOWTAP_REDACTION_KEY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    tape = tmp_path / "tape"
    tape.mkdir()
    first = resolve_redaction_key(RedactionRules(), tape)
    key_file = tmp_path / "state" / "shadowtap" / "redaction.key"
    assert key_file == default_key_path()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert len(first) == 64
    assert resolve_redaction_key(RedactionRules(), tape) == first
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["redaction.key"]
    assert list(tape.iterdir()) == []


def test_key_file_from_config_and_home_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHADOWTAP_REDACTION_KEY", raising=False)
    configured = tmp_path / "k"
    configured.write_text("configured-key\n")
    assert resolve_redaction_key(RedactionRules(key_file=str(configured))) == b"configured-key"
    monkeypatch.setenv("MY_KEY", "mine")
    assert resolve_redaction_key(RedactionRules(key_file=str(configured), key_env="MY_KEY")) == b"mine"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_key_path() == tmp_path / "home" / ".local" / "state" / "shadowtap" / "redaction.key"


def test_an_old_key_beside_the_tape_is_warned_about_and_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SHADOWTAP_REDACTION_KEY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    tape = tmp_path / "tape"
    tape.mkdir()
    (tape / "redaction.key").write_text("old-key-in-the-tape\n")
    with caplog.at_level(logging.WARNING, logger="shadowtap.recorder.redact"):
        key = resolve_redaction_key(RedactionRules(), tape)
        resolve_redaction_key(RedactionRules(), tape)
    assert key != b"old-key-in-the-tape"
    (warning,) = [r for r in caplog.records if "beside the tape" in r.getMessage()]
    assert str(tape / "redaction.key") in warning.getMessage()


def test_writer_redacts_by_default_and_not_when_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHADOWTAP_REDACTION_KEY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    ex = exchange(((b"Authorization", b"Bearer sekrit"),))
    with SyncTapeWriter(tmp_path / "on", TapeOptions(fsync="none")) as writer:
        writer.write(ex)
    with SyncTapeWriter(tmp_path / "off", TapeOptions(fsync="none", redaction=None)) as writer:
        writer.write(ex)
    with SyncTapeWriter(tmp_path / "disabled", TapeOptions(fsync="none", redaction=RedactionRules(enabled=False))) as w:
        w.write(ex)
    for segment in (tmp_path / "on").glob("*.stape"):
        assert b"sekrit" not in segment.read_bytes()
    (on,) = TapeReader(tmp_path / "on")
    assert not (tmp_path / "on" / "redaction.key").exists()
    key = default_key_path().read_bytes().strip()
    assert on.request.header(b"authorization") == b"Bearer " + Redactor(RedactionRules(), key).hash_bytes(b"sekrit")
    (off,) = TapeReader(tmp_path / "off")
    (disabled,) = TapeReader(tmp_path / "disabled")
    assert off == disabled == ex


def test_record_redaction_used_by_writers_matches_exchange_redaction() -> None:
    rules = RedactionRules(query_params=("token",), json_fields=("password",), headers=(("x-drop", "remove"),))
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


def test_trailers_are_redacted_like_headers_in_both_paths() -> None:
    # gRPC metadata can come at the end of a stream: a token in a trailer must not reach the tape.
    redactor = Redactor(RedactionRules(headers=(("x-session", "remove"),)), KEY)
    ex = Exchange(
        id="g",
        started_at_ns=1,
        request=Request("POST", "/shop.Catalog/GetProduct", (), b"", trailers=((b"authorization", b"Bearer t"),)),
        primary=Response(
            200, "OK", (), b"", trailers=((b"grpc-status", b"0"), (b"x-session", b"s3cret"), (b"x-api-key", b"k1"))
        ),
    )
    out = redactor.redact(ex)
    assert out.request.trailers[0][1].startswith(b"Bearer ") and out.request.trailers[0][1] != b"Bearer t"
    assert isinstance(out.primary, Response)
    assert out.primary.trailers[0] == (b"grpc-status", b"0")  # no secret: kept as it was
    assert [name for name, _ in out.primary.trailers] == [b"grpc-status", b"x-api-key"]
    assert out.primary.trailers[1][1] != b"k1"
    record = exchange_to_wire(ex)
    redactor.redact_record(record)
    assert exchange_from_wire(record) == out


async def test_async_writer_redacts_with_the_environment_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOWTAP_REDACTION_KEY", "shared-by-all-sidecars")
    ex = exchange(((b"Cookie", b"sid=s3cret"),), target="/x?api_key=k3y")
    options = TapeOptions(redaction=RedactionRules(query_params=("api_key",)))
    async with TapeWriter(tmp_path, options) as writer:
        assert writer.submit(ex)
    assert not (tmp_path / "redaction.key").exists()
    (segment,) = tmp_path.glob("*.stape")
    assert b"s3cret" not in segment.read_bytes() and b"k3y" not in segment.read_bytes()
    (back,) = TapeReader(tmp_path)
    expected = Redactor(RedactionRules(query_params=("api_key",)), b"shared-by-all-sidecars").redact(ex)
    assert back == expected
