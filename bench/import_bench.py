"""Import speed and memory of the HAR, GoReplay and mitmproxy importers, against naive baselines.

Generates one large ``.gor``, HAR and flow file from the same synthetic exchanges, then measures each
step in a fresh subprocess (so peak RSS belongs to that step alone):

* ``gor in-memory`` baseline: read the whole file, split it on the separator, parse every payload
  with the same HTTP parser (no streaming, no pairing);
* ``gor import`` ``GorReader`` streaming, parsing and pairing every record;
* ``har json.load`` baseline: load the whole document with ``json.load``;
* ``har import`` ``HarReader`` streaming entry by entry;
* ``mitm FlowReader`` baseline: mitmproxy's own reader, flows only;
* ``mitm import`` ``MitmReader`` (FlowReader plus the mapping to Exchanges);
* ``* -> tape``  importer plus ``SyncTapeWriter`` with redaction on (what ``shadowtap import`` does).

Figures are printed as rates and as ratios against the baseline of the same run. It never times
anything in a test and never touches the network.

    .venv/bin/python bench/import_bench.py [--exchanges 50000] [--body-bytes 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from shadowtap.recorder import Exchange, Request, Response, SyncTapeWriter, TapeOptions, Timing
from shadowtap.recorder.formats import GorReader, HarReader, MitmReader, write_gor, write_har, write_mitm
from shadowtap.recorder.formats._http1 import parse_request, parse_response
from shadowtap.recorder.formats.gor import SEPARATOR


def synthetic(count: int, body_bytes: int) -> Iterator[Exchange]:
    start_ns = 1_700_000_000_000_000_000
    payload = b'{"id": %d, "pad": "' + b"x" * max(0, body_bytes - 24) + b'"}'
    for i in range(count):
        body = payload % i
        yield Exchange(
            id=f"{i:024x}",
            started_at_ns=start_ns + i * 1_000_000,
            request=Request(
                "POST" if i % 5 == 0 else "GET",
                f"/api/items/{i}?page={i % 7}",
                (
                    (b"Host", b"api.test"),
                    (b"User-Agent", b"bench/1.0"),
                    (b"Authorization", b"Bearer token-%d" % (i % 13)),
                    (b"Accept", b"application/json"),
                )
                + (
                    ((b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body)))
                    if i % 5 == 0
                    else ()
                ),
                body if i % 5 == 0 else b"",
                authority="api.test",
            ),
            primary=Response(
                200,
                "OK",
                ((b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body)), (b"X-Req", b"%d" % i)),
                body,
            ),
            timings={"primary": Timing(sent_ns=100_000, first_byte_ns=900_000, done_ns=1_000_000)},
        )


def measure(kind: str, path: Path, work: Path) -> dict[str, float]:
    began = time.perf_counter()
    if kind == "gor in-memory":
        count = 0
        for record in path.read_bytes().split(SEPARATOR)[:-1]:
            header, _, payload = record.partition(b"\n")
            if header.startswith(b"1"):
                parse_request(payload)
                count += 1
            else:
                parse_response(payload)
    elif kind == "gor import":
        count = sum(1 for _ in GorReader(path))
    elif kind == "har json.load":
        with path.open("rb") as stream:
            count = len(json.load(stream)["log"]["entries"])
    elif kind == "har import":
        count = sum(1 for _ in HarReader(path))
    elif kind == "mitm FlowReader":
        from mitmproxy.io import FlowReader

        with path.open("rb") as stream:
            count = sum(1 for _ in FlowReader(stream).stream())
    elif kind == "mitm import":
        count = sum(1 for _ in MitmReader(path))
    elif kind.endswith("-> tape"):
        reader = {"gor": GorReader, "har": HarReader, "mitm": MitmReader}[kind.split()[0]](path)
        with SyncTapeWriter(work / "tape", TapeOptions(fsync="none")) as writer:
            count = writer.write_many(reader)
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    seconds = time.perf_counter() - began
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"count": count, "seconds": seconds, "peak_rss_mib": peak_mib}


def run_step(kind: str, path: Path, work: Path, repeat: int) -> dict[str, float]:
    """The fastest of ``repeat`` runs: on a shared machine the minimum is the least disturbed one."""
    best: dict[str, float] | None = None
    for _ in range(repeat):
        shutil.rmtree(work / "tape", ignore_errors=True)
        result = subprocess.run(
            [sys.executable, __file__, "--measure", kind, str(path), str(work)],
            capture_output=True,
            text=True,
            check=True,
        )
        figures: dict[str, float] = json.loads(result.stdout)
        if best is None or figures["seconds"] < best["seconds"]:
            best = figures
    assert best is not None
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exchanges", type=int, default=50_000)
    parser.add_argument("--mitm-exchanges", type=int, default=10_000, help="flow files are slower to generate")
    parser.add_argument("--body-bytes", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3, help="runs per step; the fastest is reported")
    parser.add_argument("--measure", nargs=3, metavar=("KIND", "PATH", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        kind, path, work = args.measure
        print(json.dumps(measure(kind, Path(path), Path(work))))
        return 0
    with tempfile.TemporaryDirectory(prefix="import-bench-") as directory:
        root = Path(directory)
        files = {
            "gor": root / "big.gor",
            "har": root / "big.har",
            "mitm": root / "big.mitm",
        }
        write_gor(synthetic(args.exchanges, args.body_bytes), files["gor"])
        write_har(synthetic(args.exchanges, args.body_bytes), files["har"])
        write_mitm(synthetic(args.mitm_exchanges, args.body_bytes), files["mitm"])
        plan = [
            ("gor", "gor in-memory", None),
            ("gor", "gor import", "gor in-memory"),
            ("gor", "gor -> tape", "gor in-memory"),
            ("har", "har json.load", None),
            ("har", "har import", "har json.load"),
            ("har", "har -> tape", "har json.load"),
            ("mitm", "mitm FlowReader", None),
            ("mitm", "mitm import", "mitm FlowReader"),
            ("mitm", "mitm -> tape", "mitm FlowReader"),
        ]
        results: dict[str, dict[str, float]] = {}
        print(
            f"exchanges: {args.exchanges} (mitm: {args.mitm_exchanges}), body {args.body_bytes} B, "
            f"best of {args.repeat} runs per step"
        )
        for fmt, path in files.items():
            print(f"{fmt} file: {path.stat().st_size / 2**20:.1f} MiB")
        header = f"{'step':<18}{'exchanges/s':>14}{'MiB/s':>10}{'peak RSS MiB':>14}{'vs baseline':>13}"
        print(header)
        print("-" * len(header))
        for fmt, kind, baseline in plan:
            figures = run_step(kind, files[fmt], root, args.repeat)
            results[kind] = figures
            rate = figures["count"] / figures["seconds"]
            mib_s = files[fmt].stat().st_size / 2**20 / figures["seconds"]
            ratio = "baseline"
            if baseline is not None:
                base = results[baseline]
                ratio = f"{(base['seconds'] / figures['seconds']):.2f}x speed"
            print(f"{kind:<18}{rate:>14,.0f}{mib_s:>10.1f}{figures['peak_rss_mib']:>14.0f}{ratio:>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
