"""`shadowtap demo`: the whole idea on loopback in under a minute (see shadowtap/demo/run.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = "run the built-in demo end to end: services, proxy, mirroring, recording, replay, diff"
ORDER = 90


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="where the tape and reports go (default: ./demo-output)")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after driving traffic, leave the proxy and services up and print curl commands to try",
    )
    parser.add_argument("--sessions", type=int, default=40, help="shopper sessions to drive (default: 40)")


def run(args: argparse.Namespace) -> int:
    from shadowtap.demo.run import default_out_dir, run_demo
    from shadowtap.runtime import run as run_loop

    run_loop(run_demo(args.out or default_out_dir(), keep_running=args.keep_running, sessions=args.sessions))
    return 0
