"""`shadowtap proxy` flags become one mapping on top of the config file, judged by shadowtap.proxy.config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from shadowtap.commands import proxy as cmd
from shadowtap.proxy.config import ProxyConfig
from shadowtap.recorder.errors import ConfigError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cmd.configure(parser)
    return parser.parse_args(argv)


FILE: dict[str, Any] = {
    "primary": "http://127.0.0.1:9000",
    "shadows": {"v2": "http://127.0.0.1:9001", "v3": {"url": "http://127.0.0.1:9002", "sample_percent": 50}},
    "mirror": {"routes": [{"path": "/a/**", "mirror": False}]},
}


def test_flags_override_the_file_and_apply_to_every_shadow() -> None:
    args = parse(
        "--shadow", "v2=http://127.0.0.1:7777", "--shadow", "v4=http://127.0.0.1:9004",
        "--sample-percent", "5", "--shadow-rate", "20", "--tape", "/tmp/t", "--no-redaction",
        "--admin", "off", "--workers", "3", "--via", "shadowtap", "--no-mirror",
        "--route", "path=/orders/**;methods=POST,PUT;mirror_methods=POST;sample_percent=2.5;shadows=v2",
        "--set", "shadows.v3.strip_headers=[authorization]", "--set", "record.join_timeout_s=7",
    )  # fmt: skip
    config = ProxyConfig.from_mapping(cmd.build_mapping(args, FILE))
    by_name = {s.name: s for s in config.shadows}
    assert by_name["v2"].url == "http://127.0.0.1:7777" and "v4" in by_name
    assert {s.sample_percent for s in config.shadows} == {5.0}
    assert {s.rate_per_s for s in config.shadows} == {20.0}
    assert by_name["v3"].strip_headers == ("authorization",)
    assert config.record.tape == "/tmp/t" and config.record.join_timeout_s == 7.0
    assert not config.record.redaction.enabled
    assert config.admin.listen is None and config.workers == 3 and not config.mirror.enabled
    assert config.forward == {"via": "shadowtap"}
    first, second = config.mirror.routes
    assert first.path == "/a/**" and not first.mirror
    assert second.methods == frozenset({"POST", "PUT"}) and second.allows_method("POST")
    assert second.sample_percent == 2.5 and second.shadows == ("v2",)
    assert FILE["shadows"]["v2"] == "http://127.0.0.1:9001"  # the file's mapping is not modified


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (("--set", "novalue"), "--set"),
        (("--set", "shadows.v9.rate_per_s=1"), "shadows.v9.rate_per_s"),
        (("--set", "primary.x=1"), "primary.x"),
        (("--route", "path"), "--route"),
        (("--route", "sample_percent=lots"), "--route sample_percent"),
        (("--shadow", "=http://x"), "--shadow"),
    ],
)
def test_bad_flags_name_themselves(argv: tuple[str, ...], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        cmd.build_mapping(parse(*argv), FILE)
    assert info.value.field == field


def _one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    from shadowtap.cli import main

    assert main(["proxy", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("shadowtap proxy: error: "), err
    assert "Traceback" not in err
    return err


DEEP_FILES = {
    "deep.yaml": "primary: http://127.0.0.1:9\nx: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "deep.toml": 'primary = "http://127.0.0.1:9"\nx = ' + "[" * 10_000 + "]" * 10_000 + "\n",
    "deep-table.toml": 'primary = "http://127.0.0.1:9"\nx = ' + "{a = " * 10_000 + "1" + "}" * 10_000 + "\n",
}


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        *((DEEP_FILES[name], ("nested more than",)) for name in DEEP_FILES),
        ("primary: http://127.0.0.1:9\nforward:\n  connect_timeout_s: .inf\n", ("finite", "connect_timeout_s")),
        ("primary: http://127.0.0.1:9\nshadows:\n  v2:\n    url: http://h\n    total_timeout_s: .nan\n", ("finite",)),
        ("primary: http://127.0.0.1:9\nrecord:\n  join_timeout_s: -.inf\n", ("finite",)),
        ("primary: http://127.0.0.1:9\nrecord: {tape: t}\nrecord: {tape: u}\n", ("duplicate key 'record'", "line 3")),
        ('primary: "http://127.0.0.1:9\x01"\n', ("unacceptable character", "line 1")),
        ("primary: http://127.0.0.1:9\nshadows: [a, b\nmirror: {}\n", ("expected ',' or ']'", "line 3")),
        ("primary: 'http://a b/'\n", ("spaces",)),
        ("primary: 'http://[::1'\n", ("not a valid URL",)),
        ("primary: http://127.0.0.1:9\nshadows: {v2: 'http://[::1'}\n", ("shadows[0].url",)),
    ],
)
def test_bad_config_files_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needles: tuple[str, ...]
) -> None:
    name = "c.toml" if text.startswith("primary =") else "c.yaml"
    (tmp_path / name).write_text(text)
    err = _one_line_error(capsys, "--check-config", str(tmp_path / name))
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("--primary", "http://[::1", "--listen", "127.0.0.1:0"), "Invalid IPv6 URL"),
        (("--primary", "http://a b/"), "spaces"),
        (("--primary", "http://127.0.0.1:9", "--connect-timeout", "inf"), "finite"),
        (("--primary", "http://127.0.0.1:9", "--shadow", "v2=http://h", "--shadow-timeout", "nan"), "finite"),
        (("--primary", "http://127.0.0.1:9", "--set", "record.tape=[1"), "line 1"),
        (("--primary", "http://127.0.0.1:9", "--set", "mirror={a: 1, a: 2}"), "duplicate key 'a'"),
        (("--primary", "http://127.0.0.1:9", "--listen", "[::1:80"), "listen"),
        (("--primary", "http://127.0.0.1:9", "--admin", "127.x.example:0"), "not loopback"),
        (("--primary", "http://127.0.0.1:9", "--admin", "0.0.0.0:0", "--admin-allow-remote"), "without a token"),
    ],
)
def test_bad_flags_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], needle: str
) -> None:
    (tmp_path / "empty.yaml").write_text("")
    # --check-config: a value wrongly accepted prints the config and exits 0 instead of serving.
    check = ("--check-config", str(tmp_path / "empty.yaml")) if "--listen" not in argv else ()
    assert needle in _one_line_error(capsys, *check, *argv)


def test_remote_admin_without_token_on_explicit_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shadowtap.cli import main

    (tmp_path / "c.yaml").write_text("primary: http://127.0.0.1:9\n")
    argv = ["--admin", "0.0.0.0:0", "--admin-allow-remote", "--admin-insecure-no-token"]
    assert main(["proxy", "--check-config", str(tmp_path / "c.yaml"), *argv]) == 0
    assert '"insecure_no_token": true' in capsys.readouterr().out


def _help_sections() -> dict[str, list[str]]:
    """``shadowtap proxy --help`` as section title -> the flags listed under it, in order."""
    from shadowtap.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    text = commands.choices["proxy"].format_help()
    sections: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
            sections[current] = []
        elif line.startswith("  --") and current:
            sections[current].append(line.split()[0])
    return sections


def test_help_groups_every_flag_by_what_it_configures() -> None:
    sections = _help_sections()
    assert list(sections)[:9] == [
        "options", "config file", "listening", "primary", "shadows", "mirroring rules", "recording",
        "admin and events", "TLS (listening)",
    ]  # fmt: skip
    listed = [flag for flags in sections.values() for flag in flags]
    assert len(listed) == len(set(listed))  # each flag once
    assert set(listed) == {flag for flag, *_ in cmd._FLAGS} | {"--config", "--check-config", "--set", "--shadow",
                                                               "--route", "--trip"}  # fmt: skip
    assert {"--listen", "--workers"} <= set(sections["listening"])
    assert {"--primary", "--connect-timeout", "--primary-insecure"} <= set(sections["primary"])
    assert {"--shadow", "--shadow-timeout", "--breaker-open", "--trip"} <= set(sections["shadows"])
    assert {"--route", "--no-mirror", "--sample-key"} <= set(sections["mirroring rules"])
    assert {"--tape", "--tape-fsync", "--no-redaction"} <= set(sections["recording"])
    assert {"--admin", "--admin-token-env", "--events"} <= set(sections["admin and events"])
    assert sections["TLS (listening)"] == ["--tls-cert", "--tls-key"]


def test_help_shows_the_config_defaults() -> None:
    import re

    from shadowtap.cli import build_parser
    from shadowtap.proxy.forward import ForwardSettings

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    text = " ".join(commands.choices["proxy"].format_help().split())
    config = ProxyConfig.from_mapping(
        {"primary": "http://127.0.0.1:1", "shadows": [{"name": "a", "url": "http://127.0.0.1:2"}]}
    )
    actual = config.to_mapping()
    actual["shadows"] = actual["shadows"][0]
    forward = ForwardSettings("http://127.0.0.1:1")
    actual["forward"] = {path.split(".")[1]: getattr(forward, path.split(".")[1], None) for _, path, *_ in cmd._FLAGS
                         if path.startswith("forward.")}  # fmt: skip
    shown = 0
    for flag, path, kind, _constant, _help in cmd._FLAGS:
        value: Any = actual
        for key in path.replace("shadows.*", "shadows").split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if kind is None or value is None or path == "primary":  # a switch, no default, or required
            continue
        entry = re.search(rf"{re.escape(flag)} [A-Z_]+ ((?:(?! --).)*)", text)
        assert entry is not None, flag
        default = re.search(r"\(default:? ([^;)]+)[;)]", entry[1])
        assert default is not None, flag
        assert default[1] == str(value), flag
        shown += 1
    assert shown >= 20
