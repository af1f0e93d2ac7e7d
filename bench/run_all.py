"""`make bench`: run every benchmark in bench/ in turn and say which ones failed to run.

Each benchmark prints its own figures (ratios against a baseline measured in the same run). This
runner adds nothing to them; it must never turn figures into pass/fail verdicts.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHES = (
    "tape_bench.py",
    "differ_bench.py",
    "import_bench.py",
    "replay_bench.py",
    "proxy_bench.py",
    "proxy_instructions.py",
    "proxy_inprocess.py",
    "h2_bench.py",
    "grpc_bench.py",
    "grpc_diff_bench.py",
    "tape_s3_bench.py",
    "diff_scale.py",
    "replay_memory.py",
)


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for name in BENCHES:
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(here / name)])
        print(f"=== {name}: exit {code} after {time.monotonic() - started:.0f}s ===", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"\nbenchmarks that did not run to the end: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
