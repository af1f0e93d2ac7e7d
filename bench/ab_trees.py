"""Two checkouts of shadowtap, measured against each other in alternated rounds of one run.

For a change that moves code around (a renovation must not get slower): each round runs, for each
tree in turn, ``shadowtap proxy`` mirroring and recording in front of nginx (``wrk -t1 -c32`` for
5 s; CPU per request of the proxy process and of its tape writer child, read from /proc), and
``shadowtap replay --speed 0`` of a 20,000-request tape against the same nginx (CPU per request of
the whole CLI run, start-up included). Medians over the rounds are printed per tree. Each tree runs
its own sources (``cwd`` and ``PYTHONPATH`` are the tree; build its data path there first with
``python scripts/build_native.py``), with this venv's interpreter. Prints figures; asserts nothing.

    .venv/bin/python bench/ab_trees.py BEFORE_DIR AFTER_DIR [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_bench as pb  # noqa: E402
import replay_bench as rb  # noqa: E402

REPLAY_REQUESTS = 20_000


def _own_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def record_round(tree: Path, origin: int, tape: Path) -> tuple[float, float, float]:
    """req/s, proxy us/request, writer child us/request."""
    port = pb.free_port()
    argv = [pb.PYTHON, "-m", "shadowtap", "proxy", "--listen", f"127.0.0.1:{port}", "--primary",
            f"http://127.0.0.1:{origin}", "--shadow", f"v2=http://127.0.0.1:{origin}", "--tape", str(tape),
            "--admin", "off"]  # fmt: skip
    with pb.process(argv, ready_port=port, cwd=tree, env=_env(tree), stdout=subprocess.DEVNULL) as proc:
        url = f"http://127.0.0.1:{port}/"
        subprocess.run([pb.WRK, "-t1", "-c32", "-d1s", url], capture_output=True, check=True)  # warm-up
        tree0, own0 = pb.process_tree_cpu_s(proc.pid), _own_cpu_s(proc.pid)
        out = subprocess.run([pb.WRK, "-t1", "-c32", "-d5s", url], capture_output=True, text=True, check=True).stdout
        time.sleep(1.0)  # the writer drains what is queued
        tree1, own1 = pb.process_tree_cpu_s(proc.pid), _own_cpu_s(proc.pid)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    own = own1 - own0
    return rps, own * 1e6 / requests, ((tree1 - tree0) - own) * 1e6 / requests


def replay_round(tree: Path, origin: int, tape: Path, out: Path) -> float:
    """CPU us per request of one whole ``replay --speed 0`` run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [pb.PYTHON, "-m", "shadowtap", "replay", str(tape), "--target", f"http://127.0.0.1:{origin}", "--speed", "0",
         "--connections", "64", "--no-progress", "--json", str(out)],
        cwd=tree, env=_env(tree), capture_output=True, check=True,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return cpu * 1e6 / REPLAY_REQUESTS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, type=Path, help="BEFORE_DIR AFTER_DIR")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trees = {"before": args.trees[0].resolve(), "after": args.trees[1].resolve()}
    work = Path(tempfile.mkdtemp(prefix="shadowtap-ab-"))
    rb.write_tape(work / "replay-tape", REPLAY_REQUESTS, spacing_us=10)
    origin = pb.free_port()
    body = '{"ok":true,"items":[1,2,3],"name":"bench"}'
    servers = f"server {{ listen 127.0.0.1:{origin}; location / {{ return 200 '{body}'; }} }}"
    rows: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in trees}
    with pb.nginx(work / "nginx", servers, origin):
        for r in range(args.rounds):
            for name, tree in trees.items():
                rps, proxy_us, child_us = record_round(tree, origin, work / f"tape-{name}-{r}")
                replay_us = replay_round(tree, origin, work / "replay-tape", work / f"{name}-{r}.json")
                rows[name].append((rps, proxy_us, child_us, replay_us))
                print(f"round {r} {name:6}  mirror+record {rps:8,.0f} req/s, proxy {proxy_us:5.1f} us/req, "
                      f"writer child {child_us:5.1f} us/req;  replay --speed 0 {replay_us:5.1f} us CPU/req",
                      flush=True)  # fmt: skip
    print("\nmedians                mirror+record req/s   proxy us/req   writer child us/req   replay us/req")
    for name, got in rows.items():
        med = [statistics.median(column) for column in zip(*got, strict=True)]
        print(f"  {name:<20} {med[0]:>19,.0f} {med[1]:>14.1f} {med[2]:>21.1f} {med[3]:>15.1f}  ({trees[name]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
