"""A long run of the data-path fuzz test: mutated raw requests against the real proxy and a primary
that logs what it receives (``tests/proxy/test_fuzz_functional.py``, which ``make test`` runs with
150 examples). Prints Hypothesis's statistics; a failure prints the smallest request that breaks
one of the test's promises. It never asserts on speed.

    .venv/bin/python bench/proxy_fuzz.py [--examples 20000] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000, help="mutated requests to send (default 20000)")
    parser.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: random)")
    args = parser.parse_args()
    env = {**os.environ, "SHADOWTAP_FUZZ_EXAMPLES": str(args.examples)}
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-o", "timeout=0",
        "--hypothesis-show-statistics", "tests/proxy/test_fuzz_functional.py",
    ]  # fmt: skip
    if args.seed is not None:
        command.append(f"--hypothesis-seed={args.seed}")
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
