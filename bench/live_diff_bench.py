"""Live diff's budgets: the live differ's speed on one core, the proxy's mirror+record throughput with
live diff on against off, and the live page's render time with many endpoints and signatures.

1. ``--pairs N`` differing pairs (JSON bodies, a field's type changed) packed as tape frames are fed
   to ``shadowtap.differ.live.LiveDiffer`` in 1 MiB reads, committing once a second, as the live
   differ process does: pairs per CPU-second (budget: at least 5,000).
2. ``shadowtap proxy`` mirroring to a shadow whose body differs and recording, under ``wrk -t1 -c32``,
   with ``--no-live-diff`` and without (live diff on), and nginx ``mirror`` (1 worker) to the same
   shadow, interleaved ``--rounds`` times, each run after a direct baseline (bench/proxy_bench.py's
   helpers: nginx origin and shadow): the medians of the on/off ratios (budget: at least 0.9) and of
   live diff on against nginx mirror (each x direct; budget: at least 1), and what the tap took and
   dropped.
3. With ``--page``, the live page in headless Chromium fed a synthetic report of ``--endpoints``
   templates and ``--signatures`` signatures: the time its render function takes per update
   (budget: under 200 ms).

Prints figures; never asserts on them.

    .venv/bin/python bench/live_diff_bench.py [--pairs 20000] [--rounds 3] [--duration 8] [--page]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def differ_speed(pairs: int) -> None:
    from shadowtap.differ.live import LiveDiffer, LiveOptions
    from shadowtap.recorder._frames import FrameEncoder
    from shadowtap.recorder.model import Exchange, Request, Response, exchange_to_wire

    encoder = FrameEncoder()
    headers = ((b"content-type", b"application/json"),)
    parts: list[bytes] = []
    for i in range(pairs):
        doc = {"id": i, "name": f"item {i}", "price": 10 * i, "tags": ["a", "b"], "stock": i % 7}
        changed = {**doc, "price": str(10 * i)}
        exchange = Exchange(
            id=f"ex-{i}",
            started_at_ns=1_700_000_000_000_000_000 + i * 1000,
            request=Request("GET", f"/items/{i}", (), b""),
            primary=Response(200, "OK", headers, json.dumps(doc).encode()),
            shadows={"v2": Response(200, "OK", headers, json.dumps(changed).encode())},
        )
        encoder.record_parts(exchange_to_wire(exchange), parts, None)
    data = b"".join(parts)
    with tempfile.TemporaryDirectory() as tmp:
        live = LiveDiffer(LiveOptions(databases=(("v2", str(Path(tmp) / "live.sqlite")),)))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        last_commit = wall0
        for start in range(0, len(data), 1 << 20):
            live.take(data[start : start + (1 << 20)])
            if time.perf_counter() - last_commit >= 1.0:
                live.commit()
                last_commit = time.perf_counter()
        live.commit()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        live.finish()
    print(
        f"live differ: {pairs:,} differing pairs, {pairs / cpu:,.0f} pairs/CPU-s "
        f"({pairs / wall:,.0f}/s wall), compared {live.report.compared:,}",
        flush=True,
    )


def proxy_ab(rounds: int, duration_s: int) -> None:
    import proxy_bench as pb

    body2 = pb.BODY.replace("abcdef", "abcdeg")
    ports = {name: pb.free_port() for name in ("origin", "shadow", "tap", "admin", "nginx_mirror")}
    ratios: list[float] = []
    against_nginx: list[float] = []
    with tempfile.TemporaryDirectory(prefix="shadowtap-live-bench-") as tmp:
        work = Path(tmp)
        servers = "".join(
            f"  server {{ listen 127.0.0.1:{ports[name]}; "
            f"location / {{ default_type application/json; return 200 '{body}'; }} }}\n"
            for name, body in (("origin", pb.BODY), ("shadow", body2))
        )
        # proxy_bench.py's nginx mirror, to the same differing shadow.
        servers += f"""
  upstream origin {{ server 127.0.0.1:{ports["origin"]}; keepalive 64; }}
  upstream shadow {{ server 127.0.0.1:{ports["shadow"]}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{ports["nginx_mirror"]};
    location / {{ mirror /mirror; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://origin; }}
    location = /mirror {{
      internal; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_connect_timeout 1s; proxy_read_timeout 1s; proxy_pass http://shadow$request_uri;
    }}
  }}
"""
        shadow = ["--shadow", f"v2=http://127.0.0.1:{ports['shadow']}", "--sample-percent", "100"]
        print(f"proxy mirror+record, wrk -t1 -c32 -d{duration_s}s, load average {os.getloadavg()[0]:.2f}:")
        with pb.nginx(work / "origin", servers, ports["origin"]):
            for i in range(rounds):
                nginx_run = pb.run_wrk(
                    f"round {i + 1}: nginx mirror (1 worker)", ports["nginx_mirror"], duration_s, ports["origin"]
                )
                figures: dict[str, float] = {}
                for mode in ("off", "on"):
                    extra = [*shadow, "--tape", str(work / f"tape-{mode}-{i}")]
                    extra += ["--no-live-diff"] if mode == "off" else []
                    with pb.shadowtap_proxy(ports["tap"], ports["origin"], extra, ports["admin"]) as proc:
                        result = pb.run_wrk(
                            f"round {i + 1}: live diff {mode}",
                            ports["tap"],
                            duration_s,
                            ports["origin"],
                            cpu_pid=proc.pid,
                        )
                        pb.delivery_shares(result, ports["admin"])
                        if mode == "on":
                            time.sleep(1.5)  # the differ's last commit
                            stats = json.loads(
                                urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/stats").read()
                            )
                            live = stats["live_diff"]
                            print(
                                f"      live diff: tapped {live['tapped']:,}, dropped {live['dropped']:,} (tap full), "
                                f"compared {live['compared']:,} of {stats['tape']['written']:,} taped"
                            )
                        figures[mode] = result.requests_per_s
                        figures[f"{mode} x direct"] = result.ratio
                ratios.append(figures["on"] / figures["off"])
                against_nginx.append(figures["on x direct"] / nginx_run.ratio)
    print(f"  live diff on / off: median {statistics.median(ratios):.3f} (rounds: {[round(r, 3) for r in ratios]})")
    print(
        f"  live diff on / nginx mirror (each x direct): median {statistics.median(against_nginx):.3f} "
        f"(rounds: {[round(r, 3) for r in against_nginx]})"
    )


def synthetic_report(endpoints: int, signatures: int) -> dict[str, Any]:
    per = max(1, signatures // endpoints)
    side = {"type": "response", "status": 200, "reason": "OK", "headers": [["content-type", "application/json"]],
            "body": {"kind": "json", "text": json.dumps({"id": 1, "price": 10, "items": list(range(20))})},
            "http_version": "1.1", "truncated_from": None, "trailers": [], "messages": []}  # fmt: skip
    example = {"exchange_id": "x", "started_at_ns": 0, "request": {"method": "GET", "target": "/x"},
               "baseline": side, "candidate": side, "paths": ["body.price"]}  # fmt: skip
    out = []
    for e in range(endpoints):
        sigs = [
            {
                "id": f"{e}-{s}",
                "endpoint": f"GET /e{e}/{{id}}",
                "path": f"body.f{s}",
                "kind": "value",
                "transition": "int->int",
                "severity": ("critical", "high", "medium", "low")[s % 4],
                "count": 10 + s,
                "rate": 0.1,
                "first_seen_ns": 0,
                "last_seen_ns": 0,
                "suppressed": s % 5 == 0,
                "suppression_reason": "learned noise" if s % 5 == 0 else None,
                "noise_rate": None,
                "examples": [example],
            }  # fmt: skip
            for s in range(per)
        ]
        out.append({"endpoint": f"GET /e{e}/{{id}}", "compared": 1000, "equal": 900, "differing": 100 + e,
                    "errors": 0, "severity": "high", "fields": [], "signatures": sigs})  # fmt: skip
    return {"schema_version": 1, "generated_at_ns": 0, "sources": [], "baseline_name": "primary",
            "candidate_name": "v2", "secondary_name": None, "window_start_ns": None, "window_end_ns": None,
            "pairs": 1000 * endpoints, "compared": 1000 * endpoints, "equal": 0, "differing": 0, "errors": 0,
            "noise_suppressed": 0, "suppressions": [{"reason": "learned noise", "count": 5}], "endpoints": out,
            "verdict": {"exit_code": 1, "reason": "synthetic", "failing_signatures": []}}  # fmt: skip


def page_render(endpoints: int, signatures: int) -> None:
    from playwright.sync_api import Route, sync_playwright

    page_html = (ROOT / "proxy" / "live_page.html").read_bytes()
    stats = {"live_diff": {"state": "running", "databases": {"v2": "live.sqlite"}, "compared": 1, "dropped": 0,
                           "lag_s": 0.1, "restarts": 0, "noise": {"secondary": None}},
             "mirror": {"v2": {"breaker": "closed", "outcomes": {"ok": 1}}}}  # fmt: skip
    flags = {"mirroring": True, "live_diff": True, "shadows": {"v2": {"mirroring": True, "sample_percent": 100.0}}}
    report = json.dumps(synthetic_report(endpoints, signatures)).encode()

    def serve(route: Route) -> None:
        url = route.request.url
        if url.endswith("/live"):
            route.fulfill(body=page_html, content_type="text/html")
        elif "/diff" in url:
            route.fulfill(body=report, content_type="application/json")
        elif url.endswith("/stats"):
            route.fulfill(body=json.dumps(stats), content_type="application/json")
        elif url.endswith("/flags"):
            route.fulfill(body=json.dumps(flags), content_type="application/json")
        else:
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.route("**/*", serve)
        page.goto("http://live.invalid/live")
        page.wait_for_function("document.body.dataset.renderMs !== undefined", timeout=60_000)
        times = []
        for _ in range(8):
            before = page.evaluate("document.body.dataset.updated")
            page.wait_for_function(f"document.body.dataset.updated !== '{before}'", timeout=60_000)
            times.append(float(page.evaluate("document.body.dataset.renderMs")))
        browser.close()
    print(
        f"live page: {endpoints} endpoints, {signatures} signatures: render {statistics.median(times):.1f} ms median, "
        f"{max(times):.1f} ms worst of {len(times)} updates"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20_000, help="differing pairs for the differ's speed")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved on/off proxy runs (0: skip)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--page", action="store_true", help="also time the live page in headless Chromium")
    parser.add_argument("--endpoints", type=int, default=500)
    parser.add_argument("--signatures", type=int, default=5000)
    args = parser.parse_args()
    differ_speed(args.pairs)
    if args.rounds > 0:
        proxy_ab(args.rounds, args.duration)
    if args.page:
        page_render(args.endpoints, args.signatures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
