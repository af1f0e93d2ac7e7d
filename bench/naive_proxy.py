"""The naive design DESIGN.md's budgets are set against: an aiohttp.web reverse proxy on uvloop.

A calibration point, not a product: DESIGN.md's reference machine measured this design at about
2.1k req/s pass-through and 1.2k mirroring, against 35-39k direct (0.055-0.060 and 0.031-0.034 x
direct). Running it here, in the same run as everything else, tells how this machine treats Python
relative to that one, so shadowtap's own ratios can be read against the budgets fairly. It forwards
method, path, headers and body to the primary through one keep-alive ``ClientSession``, answers
with the primary's status, headers and body, and with ``--shadow`` fires a copy of each request at
the shadow as a task it never awaits (as simple mirroring code does).

    python bench/naive_proxy.py LISTEN_PORT PRIMARY_URL [--shadow SHADOW_URL]
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import uvloop
from aiohttp import web

#: Hop-by-hop headers (RFC 9110 section 7.6.1) plus the ones aiohttp sets itself.
_SKIP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length", "host"}


async def serve(port: int, primary: str, shadow: str | None) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False, skip_auto_headers=("User-Agent",)
    )
    copies: set[asyncio.Task[None]] = set()

    async def mirror(method: str, url: str, headers: dict[str, str], body: bytes) -> None:
        try:
            async with session.request(method, url, headers=headers, data=body) as response:
                await response.read()
        except aiohttp.ClientError:
            pass

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP}
        if shadow is not None:
            task = asyncio.create_task(mirror(request.method, shadow + request.raw_path, headers, body))
            copies.add(task)
            task.add_done_callback(copies.discard)
        async with session.request(request.method, primary + request.raw_path, headers=headers, data=body) as up:
            payload = await up.read()
            kept = {k: v for k, v in up.headers.items() if k.lower() not in _SKIP}
            return web.Response(status=up.status, reason=up.reason, headers=kept, body=payload)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("primary")
    parser.add_argument("--shadow")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.primary.rstrip("/"), args.shadow.rstrip("/") if args.shadow else None))


if __name__ == "__main__":
    main()
