"""ProxyConfig: mappings become frozen settings; every bad value names its key; flags are shared."""

from __future__ import annotations

from typing import Any

import pytest

from shadowtap.proxy.config import ListenAddress, ProxyConfig, parse_listen
from shadowtap.recorder.errors import ConfigError

FULL: dict[str, Any] = {
    "listen": "127.0.0.1:0",
    "primary": "http://127.0.0.1:9000",
    "workers": 2,
    "forward": {"anything": 1},
    "shadows": [
        {
            "name": "v2",
            "url": "http://127.0.0.1:9001",
            "sample_percent": 25,
            "rate_per_s": 100,
            "credentials": {"Authorization": "V2_TOKEN"},
            "breaker": {"consecutive_failures": 3},
        },
        "v3=https://shadow.internal:8443/base",
    ],
    "mirror": {"sample_key": "header:X-User", "routes": [{"path": "/orders/**", "mirror_methods": ["POST"]}]},
    "record": {"tape": "/tmp/t", "sample_percent": 50, "compression": "zstd"},
    "admin": {"listen": "127.0.0.1:0", "token_env": "ADMIN_TOKEN"},
    "events": {"path": "-"},
}


def test_full_mapping_round_trips() -> None:
    config = ProxyConfig.from_mapping(FULL)
    assert config.listen == ListenAddress("127.0.0.1", 0)
    assert [s.name for s in config.shadows] == ["v2", "v3"]
    assert config.shadows[0].sample_percent == 25.0 and config.shadows[0].breaker.consecutive_failures == 3
    assert config.shadows[0].credentials == (("Authorization", "V2_TOKEN"),)
    assert config.shadows[1].url == "https://shadow.internal:8443/base" and config.shadows[1].tls_verify
    assert config.mirror.sample_key is not None and config.mirror.sample_key.name == "X-User"
    assert config.mirror.routes[0].allows_method("POST")
    assert config.record.compression == "zstd"
    assert ProxyConfig.from_mapping(config.to_mapping()) == config


def test_defaults_are_safe() -> None:
    config = ProxyConfig.from_mapping({"primary": "http://127.0.0.1:9000", "shadows": {"v2": "http://127.0.0.1:1"}})
    shadow = config.shadows[0]
    assert set(shadow.strip_headers) == {"authorization", "cookie", "proxy-authorization", "x-api-key"}
    assert config.admin.listen is not None and config.admin.listen.is_loopback
    assert config.record.tape is None and config.events.path is None
    assert config.mirror.routes == ()


@pytest.mark.parametrize(
    ("change", "field", "value_text"),
    [
        ({"primary": "ftp://x"}, "primary", "ftp://x"),
        ({"workers": 0}, "workers", "0"),
        ({"workers": "2"}, "workers", "'2'"),
        ({"listen": "nohost"}, "listen", "nohost"),
        ({"listen": "1.2.3.4:99999"}, "listen", "99999"),
        ({"bogus": 1}, "bogus", ""),
        ({"shadows": [{"name": "v2"}]}, "shadows[0].url", ""),
        ({"shadows": [{"name": "v2", "url": "http://h", "sample_percent": 101}]}, "shadows[0].sample_percent", "101"),
        ({"shadows": [{"name": "v2", "url": "http://h", "queue_size": 0}]}, "shadows[0].queue_size", "0"),
        ({"shadows": [{"name": "v 2", "url": "http://h"}]}, "shadows[0].name", "v 2"),
        ({"shadows": [{"name": "primary", "url": "http://h"}]}, "shadows[0].name", "primary"),
        ({"shadows": ["a=http://h", "a=http://i"]}, "shadows[1].name", "'a'"),
        ({"shadows": [{"name": "a", "url": "http://h", "breaker": {"open_s": -1}}]}, "shadows[0].breaker.open_s", "-1"),
        ({"shadows": [{"name": "a", "url": "http://h", "colour": 1}]}, "shadows[0].colour", ""),
        ({"mirror": {"sample_key": "body:x"}}, "mirror.sample_key", "body:x"),
        ({"mirror": {"routes": [{"shadows": ["zz"]}]}}, "mirror.routes[0].shadows[0]", "zz"),
        ({"record": {"compression": "lz4"}}, "record.compression", "lz4"),
        ({"record": {"writer": "fork"}}, "record.writer", "fork"),
        ({"record": {"join_timeout_s": 0}}, "record.join_timeout_s", "0"),
        ({"admin": {"listen": "0.0.0.0:9"}}, "admin.listen", "0.0.0.0"),
        ({"tls": {"cert_file": "c.pem"}}, "tls.cert_file", ""),
        ({"events": {"queue_size": -1}}, "events.queue_size", "-1"),
        (
            {"shadows": [{"name": "a", "url": "http://h", "total_timeout_s": 30}], "record": {"join_timeout_s": 5}},
            "record.join_timeout_s",
            "30",
        ),
        ({"shadows": [{"name": "a", "url": "http://h", "host": "two words"}]}, "shadows[0].host", "two words"),
        (
            {"shadows": [{"name": "a", "url": "http://h", "credentials": {"Bad Name": "E"}}]},
            "shadows[0].credentials[0]",
            "",
        ),
    ],
)
def test_errors_name_key_and_value(change: dict[str, Any], field: str, value_text: str) -> None:
    data = {"primary": "http://127.0.0.1:9000", **change}
    with pytest.raises(ConfigError) as info:
        ProxyConfig.from_mapping(data)
    assert info.value.field == field
    assert value_text in str(info.value)


def test_missing_primary() -> None:
    with pytest.raises(ConfigError, match="required") as info:
        ProxyConfig.from_mapping({})
    assert info.value.field == "primary"


def test_parse_listen_forms() -> None:
    assert parse_listen(":8080", field="l") == ListenAddress("127.0.0.1", 8080)
    assert parse_listen("[::1]:81", field="l") == ListenAddress("::1", 81)
    assert str(ListenAddress("::1", 81)) == "[::1]:81"


def test_credentials_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    shadow = ProxyConfig.from_mapping(FULL).shadows[0]
    monkeypatch.delenv("V2_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="V2_TOKEN"):
        shadow.credential_values()
    monkeypatch.setenv("V2_TOKEN", "Bearer shadow\r\nX-Injected: 1")
    with pytest.raises(ConfigError, match="cannot carry"):
        shadow.credential_values()
    monkeypatch.setenv("V2_TOKEN", "Bearer shadow")
    assert shadow.credential_values() == ((b"Authorization", b"Bearer shadow"),)


def test_redaction_takes_true_false_or_rules_and_round_trips() -> None:
    base = {"primary": "http://127.0.0.1:9000"}
    on = ProxyConfig.from_mapping(base).record.redaction
    assert on.enabled and ("x-auth-token", "hash") in on.headers and "access_token" in on.names("query_params")
    assert ProxyConfig.from_mapping({**base, "record": {"redaction": True}}).record.redaction == on
    assert not ProxyConfig.from_mapping({**base, "record": {"redaction": False}}).record.redaction.enabled
    config = ProxyConfig.from_mapping(
        {
            **base,
            "record": {
                "redaction": {
                    "headers": ["X-Session"],
                    "query_params": {"sig": "remove"},
                    "json_fields": ["user.pin", {"items[*].card": "remove"}],
                    "form_fields": {"action": "remove", "names": ["otp"]},
                    "key_file": "/run/keys/redaction",
                }
            },
        }
    )
    rules = config.record.redaction
    assert {("x-session", "hash"), ("authorization", "hash")} <= set(rules.headers)
    assert ("sig", "remove") in rules.query_params and ("items[*].card", "remove") in rules.json_fields
    assert ("otp", "remove") in rules.form_fields and rules.key_file == "/run/keys/redaction"
    assert ProxyConfig.from_mapping(config.to_mapping()) == config
    replaced = ProxyConfig.from_mapping(
        {**base, "record": {"redaction": {"extend_defaults": False, "json_fields": ["pin"]}}}
    ).record.redaction
    assert replaced.json_fields == (("pin", "hash"),) and replaced.headers == ()


@pytest.mark.parametrize(
    ("redaction", "field"),
    [
        ({"json_fields": ["password", "token", "a..b"]}, "record.redaction.json_fields[2]"),
        ({"headers": ["Authorization", "no spaces allowed"]}, "record.redaction.headers[1]"),
        ({"query_params": {"sig": "shred"}}, "record.redaction.query_params.sig"),
        ({"form_fields": "password"}, "record.redaction.form_fields"),
        ({"action": "shred"}, "record.redaction.action"),
        ({"colour": "red"}, "record.redaction.colour"),
        ({"enabled": "yes"}, "record.redaction.enabled"),
        ("on", "record.redaction"),
    ],
)
def test_redaction_errors_name_the_key(redaction: Any, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ProxyConfig.from_mapping({"primary": "http://127.0.0.1:9000", "record": {"redaction": redaction}})
    assert info.value.field == field


def test_shadow_credentials_can_swap_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = {"X-Api-Key": "V2_KEY", "query:api_key": "V2_QUERY_KEY", "json:user.token": "V2_TOKEN"}
    shadow = ProxyConfig.from_mapping(
        {"primary": "http://127.0.0.1:9000", "shadows": [{"name": "v2", "url": "http://h", "credentials": credentials}]}
    ).shadows[0]
    monkeypatch.setenv("V2_KEY", "k")
    monkeypatch.setenv("V2_QUERY_KEY", "q")
    monkeypatch.delenv("V2_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="V2_TOKEN"):
        shadow.credential_values()  # every variable is checked up front, not only the headers'
    monkeypatch.setenv("V2_TOKEN", "line one\nline two")  # fine in a JSON field, never in a header
    assert shadow.credential_values() == ((b"X-Api-Key", b"k"),)
    assert shadow.field_credentials() == (
        ("query_params", "api_key", "q"),
        ("json_fields", "user.token", "line one\nline two"),
    )
    for bad in ("json:a..b", "query:", "bad header"):
        with pytest.raises(ConfigError) as info:
            ProxyConfig.from_mapping(
                {
                    "primary": "http://127.0.0.1:9000",
                    "shadows": [{"name": "v2", "url": "http://h", "credentials": {bad: "E"}}],
                }
            )
        assert info.value.field == "shadows[0].credentials[0]"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"primary": "http://[::1"}, "primary"),
        ({"primary": "http://a b/"}, "primary"),
        ({"primary": "http://ab/c d"}, "primary"),
        ({"primary": "http://ab/\tc"}, "primary"),
        ({"primary": " http://ab/"}, "primary"),
        ({"primary": "http://a<b>/"}, "primary"),
        ({"primary": "http://ab:0/"}, "primary"),
        ({"shadows": {"v2": "http://[::1"}}, "shadows[0].url"),
        ({"shadows": {"v2": "http://a b"}}, "shadows[0].url"),
        ({"shadows": {"v2": "http://h\n/"}}, "shadows[0].url"),
        ({"shadows": {"v2": "http://u:p@h/"}}, "shadows[0].url"),
    ],
)
def test_bad_urls_are_refused_not_raised(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ProxyConfig.from_mapping({"primary": "http://127.0.0.1:9000", **change})
    assert info.value.field == field and "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize(
    "place",
    [
        lambda v: {"shutdown_timeout_s": v},
        lambda v: {"record": {"join_timeout_s": v}},
        lambda v: {"shadows": [{"name": "a", "url": "http://h", "total_timeout_s": v}]},
        lambda v: {"shadows": [{"name": "a", "url": "http://h", "rate_per_s": v}]},
        lambda v: {"shadows": [{"name": "a", "url": "http://h", "breaker": {"open_s": v}}]},
    ],
)
def test_numbers_must_be_finite(bad: float, place: Any) -> None:
    with pytest.raises(ConfigError, match="finite"):
        ProxyConfig.from_mapping({"primary": "http://127.0.0.1:9000", **place(bad)})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("LocalHost", True),
        ("::ffff:127.0.0.1", True),
        ("127.x.example", False),
        ("127.0.0.1.example", False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_is_loopback_parses_the_address(host: str, loopback: bool) -> None:
    assert ListenAddress(host, 80).is_loopback is loopback


@pytest.mark.parametrize("text", ["[::1:80", "::1]:80", "a b:80", "[nothex]:80", "ho\tst:80", "[127.0.0.1]:80"])
def test_parse_listen_refuses_bad_hosts(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_listen(text, field="listen")
    assert info.value.field == "listen"


def test_remote_admin_needs_a_token_or_an_explicit_insecure() -> None:
    base = {"primary": "http://127.0.0.1:9000"}
    with pytest.raises(ConfigError, match="token") as info:
        ProxyConfig.from_mapping({**base, "admin": {"listen": "0.0.0.0:9", "allow_remote": True}})
    assert info.value.field == "admin.listen" and "insecure_no_token" in str(info.value)
    with pytest.raises(ConfigError, match="not loopback"):
        ProxyConfig.from_mapping({**base, "admin": {"listen": "127.x.example:9"}})
    tokened = {"listen": "0.0.0.0:9", "allow_remote": True, "token_env": "ADMIN_TOKEN"}
    assert ProxyConfig.from_mapping({**base, "admin": tokened}).admin.token_env == "ADMIN_TOKEN"
    insecure = {"listen": "0.0.0.0:9", "allow_remote": True, "insecure_no_token": True}
    config = ProxyConfig.from_mapping({**base, "admin": insecure})
    assert config.admin.insecure_no_token and ProxyConfig.from_mapping(config.to_mapping()) == config
