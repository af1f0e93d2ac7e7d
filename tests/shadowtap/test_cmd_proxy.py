"""`shadowtap proxy` flags become one mapping on top of the config file, judged by proxy.config."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from proxy.config import ProxyConfig
from recorder.errors import ConfigError
from shadowtap.commands import proxy as cmd


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
