"""Secrets through the assembled proxy: never on the tape, never at a shadow, the key never in the tape."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig
from shadowtap.recorder import TapeReader
from tests.proxy.conftest import AppUpstream

# Each secret is distinct so a leak names the rule that failed.
SECRETS = {
    "json password": b"PW-s3cret-json",
    "json token": b"TK-s3cret-json",
    "nested json password": b"PW-s3cret-nested",
    "query api_key": b"AK-s3cret-query",
    "query access_token": b"AT-s3cret-query",
    "X-Auth-Token": b"XA-s3cret-header",
    "Authorization": b"BR-s3cret-header",
}


class Upstream(AppUpstream):
    """A real aiohttp server on 127.0.0.1 port 0 that keeps each request as it arrived."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.seen: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append({"target": request.raw_path, "headers": list(request.raw_headers), "body": body})
        self.arrived.set()
        return web.json_response({"served_by": self.name})




@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[Upstream, Upstream]]:
    primary, shadow = await Upstream("primary").start(), await Upstream("shadow").start()
    yield primary, shadow
    await primary.close()
    await shadow.close()


def raw_bytes(seen: dict[str, Any]) -> bytes:
    headers = b"\n".join(k + b": " + v for k, v in seen["headers"])
    return seen["target"].encode() + b"\n" + headers + b"\n\n" + seen["body"]


async def test_secrets_reach_neither_the_tape_nor_the_shadow(
    upstreams: tuple[Upstream, Upstream], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, shadow = upstreams
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.delenv("SHADOWTAP_REDACTION_KEY", raising=False)
    tape = tmp_path / "tape"
    config = ProxyConfig.from_mapping(
        {
            "listen": "127.0.0.1:0",
            "primary": primary.url,
            "shadows": {"v2": shadow.url},
            "mirror": {"routes": [{"path": "/login", "mirror_methods": ["POST"]}]},
            "record": {"tape": str(tape), "join_timeout_s": 5},
        }
    )
    app = ProxyApp(config)
    await app.start()
    body = {
        "user": "alice",
        "password": SECRETS["json password"].decode(),
        "token": SECRETS["json token"].decode(),
        "profile": {"password": SECRETS["nested json password"].decode()},
        # Exact names only: these look like secrets to a substring match but are not.
        "tokenizer": "wordpiece-kept",
        "password_hint_shown": "hint-kept",
    }
    query = f"api_key={SECRETS['query api_key'].decode()}&access_token={SECRETS['query access_token'].decode()}"
    try:
        async with aiohttp.ClientSession() as client:
            async with client.post(
                f"{app.listen_url}/login?{query}&page=2",
                data=json.dumps(body).encode(),
                headers={
                    "Content-Type": "application/json",
                    "X-Auth-Token": SECRETS["X-Auth-Token"].decode(),
                    "Authorization": "Bearer " + SECRETS["Authorization"].decode(),
                },
            ) as resp:
                assert resp.status == 200 and await resp.json() == {"served_by": "primary"}
            async with asyncio.timeout(10):
                await shadow.arrived.wait()
    finally:
        await app.shutdown()

    # The primary gets the request as the client sent it.
    assert all(secret in raw_bytes(primary.seen[0]) for secret in SECRETS.values())

    (at_shadow,) = shadow.seen
    sent = raw_bytes(at_shadow)
    leaked = [name for name, secret in SECRETS.items() if secret in sent]
    assert leaked == [], f"reached the shadow: {leaked}"
    shadow_body = json.loads(at_shadow["body"])
    assert shadow_body["user"] == "alice" and shadow_body["tokenizer"] == "wordpiece-kept"
    assert shadow_body["password_hint_shown"] == "hint-kept"
    assert at_shadow["target"].endswith("&page=2")

    files = [p for p in tape.rglob("*") if p.is_file()]
    assert files, "nothing was taped"
    for path in files:
        data = path.read_bytes()
        leaked = [name for name, secret in SECRETS.items() if secret in data]
        assert leaked == [], f"{path.name} holds {leaked}"
    (taped,) = TapeReader(tape)
    taped_body = json.loads(taped.request.body)
    assert taped_body["tokenizer"] == "wordpiece-kept" and taped_body["password_hint_shown"] == "hint-kept"
    assert taped_body["password"].startswith("redacted:hmac:")
    # Equal secrets hash equal: the shadow got the hash the tape holds, so an echo of it matches.
    assert shadow_body["password"] == taped_body["password"]
    assert taped.request.header(b"x-auth-token") is not None
    assert taped.request.header(b"x-auth-token").startswith(b"redacted:hmac:")  # type: ignore[union-attr]
    assert "v2" in taped.shadows

    # The key lives in the per-user state directory, private, and never beside the tape.
    assert not (tape / "redaction.key").exists()
    key_file = state / "shadowtap" / "redaction.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
