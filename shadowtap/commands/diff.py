"""`shadowtap diff`: compare the baseline with the candidate in tapes, store the results, report.

It streams the tapes through the differ into a SQLite store (``--db``, in memory without it), builds
the report from the store, prints the terminal summary and writes the requested report files. The
exit code is the verdict: 0 pass, 1 regression, 2 too few samples or infrastructure errors. It must
never load a whole tape and never print a traceback for a user mistake.
"""

from __future__ import annotations

import argparse
import functools
import io
import itertools
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from shadowtap.commands._options import NO_PROGRESS, NO_PROGRESS_HELP

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from concurrent.futures import Executor, Future

    from shadowtap.differ import DifferConfig, DiffSession, DiffStore, IngestStats, RunMeta
    from shadowtap.differ.protobuf import ProtoSchema
    from shadowtap.differ.report_model import DiffReport
    from shadowtap.recorder import Exchange, TapeReader
    from shadowtap.recorder.errors import ConfigError
    from shadowtap.recorder.reader import SegmentRange

NAME = "diff"
HELP = "compare primary vs shadow (or recorded vs replayed) responses in tapes and report what changed"
ORDER = 40

EPILOG = """\
examples:
  shadowtap diff tapes/prod --candidate v2 --secondary secondary --html report.html
  shadowtap diff results/ --candidate replay --fail-on 'severity>=medium&rate>0.01' --junit junit.xml
  shadowtap diff tapes/prod --db diff.sqlite && shadowtap report --db diff.sqlite --since 2024-05-01T10:00

--fail-on SPEC: clauses separated by ',' (any failing clause fails), conditions in a clause joined by
'&': critical|high|medium|low, severity>=LEVEL, rate>X, count>=N, kind=KIND, any, never.
A clause may be a latency term: latency.p50|p90|p99 > +N% | +Nms | Nx (e.g. 'high,latency.p99>+20%'):
it fails where the candidate is slower by more than that beyond the 95% interval.
Default: severity>=high (from the config file's fail_on when set). See docs/differ.md.
"""

#: Shadows looked at to guess the candidate when --candidate is not given: enough to see every
#: shadow of a proxy tape, few enough that the guess costs nothing next to the diff itself.
_PEEK_EXCHANGES = 1_000
#: Below this much tape, ``--workers`` defaults to one: starting a process costs about a second.
_WORKERS_MIN_TAPE_BYTES = 8 << 20
#: Chunks per worker a tape of local files is cut in: enough that a worker slowed by other work on
#: the machine claims fewer and all finish together; each costs a file opened and a seek.
_CHUNKS_PER_WORKER = 64
#: Chunks are no smaller than this, whatever the number of workers.
_MIN_CHUNK_BYTES = 64 << 10
#: Pairs a worker process diffs into one store before it hands that store over to be merged and
#: goes on into a new one: the command's process merges them between its own chunks, so most of
#: the merging is shared out with the diffing, and what is left at the end is a piece this size
#: at most (a merge costs about 5 us a pair; each piece a commit and its own id caches).
_PIECE_PAIRS = 8_192


def _count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _positive(text: str) -> int:
    """An argparse type: a whole number, 1 or more."""
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return value


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The output and gate flags shared by `diff` and `report`."""
    parser.add_argument("--config", type=Path, metavar="FILE", help="differ config (YAML/TOML; its 'diff' section)")
    parser.add_argument("--html", type=Path, metavar="OUT", help="write the self-contained HTML report")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the JSON report (docs/report-schema.md)")
    parser.add_argument("--markdown", type=Path, metavar="OUT", help="write a Markdown summary for a pull request")
    parser.add_argument("--junit", type=Path, metavar="OUT", help="write JUnit XML, one test case per endpoint")
    parser.add_argument("--fail-on", metavar="SPEC", help="what fails the run (default: severity>=high)")
    parser.add_argument(
        "--min-samples", type=_count, metavar="N", help="fewer compared pairs than this exits 2 (default: 10)"
    )
    parser.add_argument("--no-color", action="store_true", help="never colour the terminal summary")
    parser.add_argument(
        "--full", action="store_true", help="list every endpoint and signature in the summary, not only the top ones"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the verdict line, not the summary")


def add_proto_arguments(parser: argparse.ArgumentParser) -> None:
    """The protobuf schema's flags, shared by ``diff`` and ``report``."""
    parser.add_argument(
        "--proto-descriptor",
        type=Path,
        metavar="FILE",
        help="decode gRPC bodies with this descriptor set (protoc --descriptor_set_out=FILE --include_imports)",
    )
    parser.add_argument(
        "--proto-reflection",
        metavar="HOST:PORT",
        help="decode gRPC bodies with the descriptors this server gives by gRPC server reflection",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("tape", nargs="+", metavar="TAPE", help="tape directories, segment files or globs")
    parser.add_argument("--primary", default="primary", metavar="NAME", help="the baseline outcome (default: primary)")
    parser.add_argument(
        "--candidate", metavar="NAME", help="the outcome under test (default: the tape's only shadow, or 'replay')"
    )
    parser.add_argument(
        "--secondary",
        metavar="NAME",
        help="a second baseline-like outcome to learn noise from (default: a shadow named 'secondary', if any)",
    )
    parser.add_argument(
        "--noise-tape",
        action="append",
        default=[],
        metavar="TAPE",
        help="a replay results tape of the baseline against itself (safe methods count): learned noise "
        "without a secondary shadow; repeatable",
    )
    parser.add_argument(
        "--noise-name",
        default="replay",
        metavar="NAME",
        help="the second baseline answer in --noise-tape exchanges (default: replay)",
    )
    add_proto_arguments(parser)
    parser.add_argument("--db", type=Path, metavar="PATH", help="SQLite results store to create or add to")
    parser.add_argument("--salvage", action="store_true", help="skip corrupt ranges of the tape instead of stopping")
    parser.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="diff in N processes, each claiming chunks of the tape as it goes (or, when it cannot be cut, the "
        "exchanges of its endpoints), merged exactly (default: the cores available; one for tapes under 8 MiB)",
    )
    parser.add_argument(NO_PROGRESS, action="store_true", help=NO_PROGRESS_HELP)
    add_report_arguments(parser)


def load_config(path: Path | None) -> DifferConfig:
    from shadowtap.config import load_mapping
    from shadowtap.differ import DifferConfig, config_from_mapping

    return DifferConfig() if path is None else config_from_mapping(load_mapping(path))


def with_proto_schema(config: DifferConfig, args: argparse.Namespace) -> DifferConfig:
    """``config`` with the protobuf schema the flags (or else the config file) name, loaded."""
    from dataclasses import replace

    from shadowtap.differ.protobuf import ProtobufDecodeError, load_schema
    from shadowtap.recorder.errors import ConfigError

    flags = args.proto_descriptor is not None or args.proto_reflection is not None
    descriptor = args.proto_descriptor if flags else config.proto_descriptor
    reflection = args.proto_reflection if flags else config.proto_reflection
    try:
        schema = load_schema(descriptor, reflection)
    except ProtobufDecodeError as exc:
        raise ConfigError(str(exc), field="--proto-descriptor" if descriptor else "--proto-reflection") from exc
    return config if schema is None else replace(config, compare=replace(config.compare, proto=schema))


def _names_on(exchanges: Iterable[Exchange], names: set[str]) -> None:
    """Add the names of the responses ``exchanges`` hold (``primary`` and each shadow's) to ``names``."""
    from shadowtap.recorder import PRIMARY

    for exchange in exchanges:
        if exchange.primary is not None:
            names.add(PRIMARY)
        names.update(exchange.shadows)


def _pick_names(exchanges: list[Exchange], seen: set[str], args: argparse.Namespace) -> tuple[str, str | None]:
    """The candidate and secondary: as given, or guessed from the names ``seen`` at the tape's start."""
    from shadowtap.recorder import PRIMARY, REPLAY
    from shadowtap.recorder.errors import ConfigError

    if not exchanges:
        raise ConfigError("the tape holds no exchanges to compare")
    others = seen - {args.primary, PRIMARY}  # guessed among the shadows (and replays) only
    secondary: str | None = args.secondary
    if secondary is None and "secondary" in others and args.candidate != "secondary":
        secondary = "secondary"
    candidate: str | None = args.candidate
    if candidate is None:
        choices = sorted(others - {secondary})
        if REPLAY in choices:
            candidate = REPLAY
        elif len(choices) == 1:
            candidate = choices[0]
        elif not choices:
            raise ConfigError("the tape holds no shadow or replay responses to compare", field="--candidate")
        else:
            raise ConfigError(f"the tape holds several shadows ({', '.join(choices)}); pick one", field="--candidate")
    if candidate in (args.primary, secondary):
        raise ConfigError(f"{candidate!r} cannot be both the candidate and the baseline/secondary", field="--candidate")
    return candidate, secondary


def _unknown_name(args: argparse.Namespace, seen: set[str]) -> ConfigError | None:
    """The error for a name given on the command line that no response ``seen`` has, listing theirs."""
    from shadowtap.recorder.errors import ConfigError

    for flag, name in (("--primary", args.primary), ("--candidate", args.candidate), ("--secondary", args.secondary)):
        if name is not None and name not in seen:
            holds = ", ".join(sorted(seen)) or "no responses"
            return ConfigError(f"no response named {name!r} on the tape; it holds: {holds}", field=flag)
    return None


def emit(report: DiffReport, args: argparse.Namespace, proto: ProtoSchema | None = None, *, processes: int = 1) -> int:
    """Print the summary, write every requested report file (gRPC bodies decoded with ``proto``, the
    diff's schema, when given); the verdict's exit code. With ``processes`` above one (and this
    process free to fork, ``_start_method``), the files are written that many at a time: each
    other one in a forked process that inherits ``report``."""
    from shadowtap.differ.reports import render_terminal

    if not args.quiet:
        render_terminal(report, sys.stdout, color=False if args.no_color else None, full=args.full)
    files = [
        (kind, path)
        for kind, path in (("html", args.html), ("json", args.json), ("markdown", args.markdown), ("junit", args.junit))
        if path is not None
    ]
    if processes > 1 and len(files) > 1 and _start_method() == "fork":
        _write_forked(report, proto, files, processes)
    else:
        for kind, path in files:
            _write_report_file(kind, path, report, proto)
    verdict = report.verdict
    print(f"verdict: exit {verdict.exit_code}: {verdict.reason}")
    return verdict.exit_code


def _write_report_file(kind: str, path: Path, report: DiffReport, proto: ProtoSchema | None) -> None:
    from shadowtap.differ.reports import proto_schema, write_html, write_json, write_junit, write_markdown

    write = {"html": write_html, "json": write_json, "markdown": write_markdown, "junit": write_junit}[kind]
    with proto_schema(proto):
        write(report, path)


#: The report (and schema) a forked report writer inherits from the command's process.
_forked_report: tuple[DiffReport, ProtoSchema | None] | None = None


def _share_report(report: DiffReport | None, proto: ProtoSchema | None) -> None:
    global _forked_report
    _forked_report = None if report is None else (report, proto)


def _write_inherited(kind: str, path: Path) -> None:
    """A forked report writer: one file of the report it inherited."""
    assert _forked_report is not None
    _write_report_file(kind, path, *_forked_report)


def _write_forked(report: DiffReport, proto: ProtoSchema | None, files: list[tuple[str, Path]], processes: int) -> None:
    """``files`` written by ``processes`` at once: the first here, the others each in a forked
    process (a report is not pickled: the fork inherits it). A failure is raised here as it was
    there, after every file was tried."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(
        min(processes, len(files)) - 1,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_share_report,
        initargs=(report, proto),
    ) as pool:
        futures = [pool.submit(_write_inherited, kind, path) for kind, path in files[1:]]
        try:
            _write_report_file(*files[0], report, proto)
        finally:
            for future in futures:
                future.result()


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class _Job:
    """What one worker process needs to diff its shard of the tapes into its own store."""

    tapes: tuple[str, ...]
    noise_tapes: tuple[str, ...]
    noise_name: str
    salvage: bool
    config: Path | None
    #: The protobuf schema's flags: each worker loads the schema itself (a descriptor pool does not
    #: cross processes).
    proto_descriptor: Path | None
    proto_reflection: str | None
    meta: RunMeta
    shard: int
    shards: int
    db: str
    progress: bool
    collect_names: bool
    #: Below this many bytes to read no bar is drawn; a worker's share of a tape large enough for one
    #: draws its bar whatever its own size (``_worker_jobs``).
    progress_min_bytes: int | None = None
    #: When ``ranged``, the tapes are read in ``chunks`` instead of ``tapes`` and ``noise_tapes``:
    #: every process of the run is given them all and claims the next unclaimed one when it is done
    #: with the last (``_claim_chunks``), so a process slowed by other work on the machine reads less.
    ranged: bool = False
    chunks: tuple[_Chunk, ...] = ()
    #: A worker process (never the command's own) of a ranged run diffs this many pairs into one
    #: store (``_piece``), then hands it over and goes on into the next; 0: one store.
    piece_pairs: int = 0


@dataclass(frozen=True, slots=True)
class _Chunk:
    """Byte ranges of whole frames of a tape (or of a noise tape), read by one process."""

    ranges: tuple[SegmentRange, ...]
    size_bytes: int
    noise: bool = False


@dataclass(slots=True)
class _Done:
    stats: IngestStats
    notes: list[str]
    names: set[str]
    #: The stores a worker process diffed into (``_piece``), each handed over when finished.
    pieces: int = 0


def _piece(db: str, index: int, *, done: bool = True) -> str:
    """The path of a worker's ``index``-th store: while it is written, and once it is finished
    (renamed: a finished store is there whole or not at all)."""
    return f"{db}.{index}" if done else f"{db}.{index}.part"


def _read_notes(readers: Iterable[TapeReader | None]) -> list[str]:
    notes: list[str] = []
    for read in readers:
        if read is None:
            continue
        for segment, tail in read.report.torn_tails:
            notes.append(f"note: {segment}: torn tail at byte {tail.offset} ({tail.length} bytes) ignored")
        for segment, skipped in read.report.skipped_ranges:
            notes.append(
                f"note: {segment}: skipped {skipped.length} corrupt bytes at {skipped.offset}: {skipped.reason}"
            )
    return notes


#: The index of the next chunk to claim, shared by the processes of one run: a ``multiprocessing``
#: value, handed to each worker process as it starts (the only way one crosses to a spawned process).
_next_chunk: Any = None
#: The run's config, when the worker process was forked from the command's (it needs no loading
#: then; a spawned one loads it, protobuf schema and all, as a descriptor pool does not pickle).
_forked_config: DifferConfig | None = None


def _share_run(counter: Any, config: DifferConfig | None) -> None:
    """The worker processes' initializer: the run's chunk counter, and its config when forked."""
    global _next_chunk, _forked_config
    _next_chunk, _forked_config = counter, config


def _claim_chunks(job: _Job) -> Iterator[tuple[int, _Chunk]]:
    """The chunks this process claims, one at a time, until none is left."""
    counter = _next_chunk
    while True:
        with counter.get_lock():
            index = counter.value
            counter.value = index + 1
        if index >= len(job.chunks):
            return
        yield index, job.chunks[index]


def _ingest(session: DiffSession, job: _Job, between_chunks: Callable[[], None] | None = None) -> _Done:
    """Feed the tapes (this job's shard of them, or the chunks it claims) through ``session``; the
    store is not finished. A ranged job calls ``between_chunks`` after each chunk, and hands over a
    store every ``piece_pairs``."""
    from shadowtap.commands._progress import MIN_TOTAL_BYTES, ReadProgress
    from shadowtap.differ.pipeline import shard_of
    from shadowtap.recorder import TapeReader

    names: set[str] = set()
    minimum = MIN_TOTAL_BYTES if job.progress_min_bytes is None else job.progress_min_bytes
    if job.ranged:
        # The bar counts the chunks before the one being read as done, whoever read them.
        sizes = [chunk.size_bytes for chunk in job.chunks if not chunk.noise]
        readers: list[TapeReader | None] = []
        pieces, piece_from = 0, 0
        with ReadProgress("diff", sizes, enabled=job.progress, min_total_bytes=minimum) as progress:
            for index, chunk in _claim_chunks(job):
                reader = TapeReader.of_ranges(chunk.ranges)
                readers.append(reader)
                if chunk.noise:
                    for exchange in reader:
                        session.add_noise(exchange, job.noise_name)
                else:
                    for exchange in progress.wrap(reader, functools.partial(int, index)):
                        session.add(exchange)
                        if job.collect_names:
                            _names_on((exchange,), names)
                diffed = session.stats.exchanges + session.stats.noise_pairs
                if job.piece_pairs and diffed - piece_from >= job.piece_pairs:
                    _hand_over(session, job.db, pieces)
                    pieces, piece_from = pieces + 1, diffed
                if between_chunks is not None:
                    between_chunks()
        return _Done(session.stats, _read_notes(readers), names, pieces)
    shard, shards = job.shard, job.shards

    def in_shard(method: str, target: str) -> bool:
        return shard_of(method, target, shards) == shard

    # Each process decodes only its endpoints' exchanges: the others are told by their request line.
    keep = None if shards == 1 else in_shard
    reader = TapeReader(job.tapes, salvage=job.salvage, keep=keep)
    with ReadProgress("diff", reader.segment_sizes(), enabled=job.progress, min_total_bytes=minimum) as progress:
        for exchange in progress.wrap(reader, lambda: len(reader.report.segments) - 1):
            session.add(exchange)
            if job.collect_names:
                _names_on((exchange,), names)
    noise_reader = TapeReader(job.noise_tapes, salvage=job.salvage, keep=keep) if job.noise_tapes else None
    if noise_reader is not None:
        for exchange in noise_reader:
            session.add_noise(exchange, job.noise_name)
    return _Done(session.stats, _read_notes((reader, noise_reader)), names)


def _hand_over(session: DiffSession, db: str, index: int) -> None:
    """Finish the ``index``-th store of a worker, go on into the next, and hand the finished one
    over (renamed: the command's process merges it when it sees it)."""
    from shadowtap.differ import DiffStore

    finished = session.store
    session.switch_store(DiffStore(_piece(db, index + 1, done=False), scratch=True))
    finished.close()
    os.rename(_piece(db, index, done=False), _piece(db, index))


def _diff_shard(job: _Job) -> _Done:
    """One worker process: its shard of the tapes into stores of its own (``_piece``), each merged
    by the command's process once handed over."""
    from shadowtap.differ import DiffSession, DiffStore

    config = _forked_config
    if config is None:
        flags = argparse.Namespace(proto_descriptor=job.proto_descriptor, proto_reflection=job.proto_reflection)
        config = with_proto_schema(load_config(job.config), flags)
    session = DiffSession(DiffStore(_piece(job.db, 0, done=False), scratch=True), config, job.meta)
    try:
        done = _ingest(session, job)
        session.finish(relearn=False)
    finally:
        session.store.close()
    os.rename(_piece(job.db, done.pieces, done=False), _piece(job.db, done.pieces))
    done.pieces += 1
    return done


def _split_by_bytes(segments: Sequence[tuple[Path, int]], parts: int, noise: bool = False) -> list[_Chunk]:
    """Local ``segments`` (path, bytes) cut in ``parts`` chunks of about equal bytes, each a run of
    whole frames: a cut inside a segment moves on to the start of the next frame (``frame_starts``
    walks the frame headers up to it), or to the segment's end when its frames cannot be walked
    (damage: the one reader of that segment reports it)."""
    from shadowtap.recorder.reader import SegmentRange, frame_starts

    total = sum(size for _, size in segments)
    targets = [total * k // parts for k in range(1, parts)]
    # Each cut as (segment index, offset in it); a cut at a segment's end is the next one's start.
    cuts: list[tuple[int, int]] = []
    before = 0
    for index, (path, size) in enumerate(segments):
        inside = [t - before for t in targets if before <= t < before + size]
        if inside:
            starts = frame_starts(path, inside)
            cuts += [(index, offset) for offset in (starts or [size] * len(inside))]
        before += size
    bounds = [(0, 0), *cuts, (len(segments) - 1, segments[-1][1])]
    chunks: list[_Chunk] = []
    for (first, start), (last, stop) in itertools.pairwise(bounds):
        ranges: list[SegmentRange] = []
        size_bytes = 0
        for index in range(first, last + 1):
            path, size = segments[index]
            lo = start if index == first else 0
            hi = stop if index == last else size
            if hi > lo or size == 0:  # an empty segment too: its reader notes it
                ranges.append(SegmentRange(path, lo, None if hi >= size else hi))
                size_bytes += hi - lo
        if ranges:
            chunks.append(_Chunk(tuple(ranges), size_bytes, noise))
    return chunks


def _worker_jobs(job: _Job, tapes: TapeReader, noise: TapeReader | None, workers: int, scratch: str) -> list[_Job]:
    """One job per worker. Local tapes are cut in chunks of whole frames (about ``workers`` x
    ``_CHUNKS_PER_WORKER`` of equal bytes) and tapes in object storage with enough objects (two per
    worker) in objects, which the workers claim as they go. Otherwise (or with ``--salvage``, which
    must see every damaged byte in order) each worker reads every exchange and diffs those of its
    endpoints. Either way the merge is exact (see ``_run_workers``)."""
    from shadowtap.commands._progress import MIN_TOTAL_BYTES
    from shadowtap.recorder.reader import SegmentRange

    segments = list(zip(tapes.segments, tapes.segment_sizes(), strict=True))
    noise_segments = [] if noise is None else list(zip(noise.segments, noise.segment_sizes(), strict=True))
    dbs = [str(Path(scratch) / f"shard-{i}.sqlite") for i in range(workers)]
    # The first worker draws the bar for the run: when the whole tape is big enough for one, its
    # share is too.
    job = replace(job, progress_min_bytes=0) if sum(size for _, size in segments) >= MIN_TOTAL_BYTES else job
    files = [(path, size) for path, size in segments if isinstance(path, Path)]
    noise_files = [(path, size) for path, size in noise_segments if isinstance(path, Path)]
    chunks: list[_Chunk] | None = None
    if job.salvage or not segments:
        pass
    elif len(files) == len(segments) and len(noise_files) == len(noise_segments):
        chunks = []
        for parts, noisy in ((files, False), (noise_files, True)):
            total = sum(size for _, size in parts)
            count = max(workers, min(workers * _CHUNKS_PER_WORKER, total // _MIN_CHUNK_BYTES))
            chunks += _split_by_bytes(parts, count, noisy) if parts else []
    elif len(segments) >= 2 * workers and (not noise_segments or len(noise_segments) >= 2 * workers):
        # Objects whole, largest first: the last ones claimed are the small ones.
        chunks = [
            _Chunk((SegmentRange(segment),), size, noisy)
            for parts, noisy in ((segments, False), (noise_segments, True))
            for segment, size in sorted(parts, key=lambda item: -item[1])
        ]
    if chunks is not None:
        ranged = replace(job, ranged=True, chunks=tuple(chunks), shard=0, shards=1)
        return [
            replace(ranged, db=dbs[i], progress=job.progress and i == 0, piece_pairs=_PIECE_PAIRS if i else 0)
            for i in range(workers)
        ]
    return [replace(job, shard=i, shards=workers, db=dbs[i], progress=job.progress and i == 0) for i in range(workers)]


def _start_method() -> str:
    """``fork`` when this process runs no other thread (on Linux): the worker starts at once and
    inherits what this one has imported and loaded; ``spawn`` otherwise (a thread holding a lock at
    the fork would hold it forever in the child). gRPC, once loaded (a schema by reflection), runs
    threads of its own that ``threading`` does not see: spawn then too."""
    import multiprocessing
    import threading

    if sys.platform.startswith("linux") and threading.active_count() == 1 and "grpc" not in sys.modules:
        if "fork" in multiprocessing.get_all_start_methods():
            return "fork"
    return "spawn"


def _run_workers(
    open_store: Callable[[], DiffStore], config: DifferConfig, meta: RunMeta, jobs: list[_Job]
) -> tuple[DiffStore, _Done]:
    """The first job in this process, straight into the run's store (``open_store()``, opened once
    the other processes are started: its creation waits on the disk), each other in a process of its own
    diffing into stores of its own, which this process merges into ``store`` as they are handed
    over (between its own chunks, then the last ones); endpoints are left to learn (``run``).
    The merge is the one-process result: keys and difference sets are named by their content,
    pairs merge by exchange id, and each sample is bottom-k by a hash of the exchange id (the
    smallest k of a union are among the union of each part's smallest k)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from shadowtap.differ import DiffSession
    from shadowtap.differ.pipeline import add_stats

    global _next_chunk
    method = _start_method()
    context = multiprocessing.get_context(method)
    counter = context.Value("q", 0)
    _next_chunk = counter
    dbs = [part_job.db for part_job in jobs[1:]]
    merged = [0] * len(dbs)  # per worker, the stores merged so far
    duplicates = 0
    store: DiffStore | None = None

    def merge_handed_over() -> None:
        nonlocal duplicates
        assert store is not None
        for worker, db in enumerate(dbs):
            while os.path.exists(piece := _piece(db, merged[worker])):
                duplicates += store.merge_from(piece)
                Path(piece).unlink()
                merged[worker] += 1

    try:
        with ProcessPoolExecutor(
            len(jobs) - 1,
            mp_context=context,
            initializer=_share_run,
            initargs=(counter, config if method == "fork" else None),
        ) as pool:
            futures = [pool.submit(_diff_shard, part_job) for part_job in jobs[1:]]
            try:
                # Meanwhile this process diffs its own share (no process to start for it, no store
                # to merge), merging the workers' stores as they come.
                store = open_store()
                store.set_meta(meta)
                session = DiffSession(store, config, meta)
                total = _ingest(session, jobs[0], merge_handed_over)
                session.finish(relearn=False)
                parts = [future.result() for future in futures]
            except BaseException:
                with counter.get_lock():  # the other processes stop after the chunk they are on
                    counter.value = len(jobs[0].chunks)
                for future in futures:
                    future.cancel()
                if store is not None:
                    store.close()
                raise
    finally:
        _next_chunk = None
    assert store is not None
    try:
        merge_handed_over()
        if merged != [done.pieces for done in parts]:
            raise RuntimeError(f"worker stores merged {merged}, handed over {[done.pieces for done in parts]}")
        store.commit()
    except BaseException:
        store.close()
        raise
    total.stats.duplicates += duplicates
    total.pieces = sum(merged)
    for done in parts:
        add_stats(total.stats, done.stats)
        total.notes += done.notes
        total.names |= done.names
    # Whichever process read a damaged segment (with endpoint shards, each reads every segment), the
    # same notes once each, in the same order.
    total.notes = sorted(set(total.notes))
    return store, total


#: The report files' flags: a speculative report writes each to a temporary sibling first.
_REPORT_FILES = ("html", "json", "markdown", "junit")


class _Captured(io.StringIO):
    """Standard output kept for later, answering ``isatty`` and ``fileno`` as the real one does (the
    terminal summary's colour and width follow them)."""

    def __init__(self, real: TextIO) -> None:
        super().__init__()
        self.real = real

    def isatty(self) -> bool:
        return self.real.isatty()

    def fileno(self) -> int:
        return self.real.fileno()


#: The config and arguments a ``_Speculation``'s forked process inherits (arguments hold the
#: parser's functions, which do not pickle).
_forked_speculation: tuple[DifferConfig, argparse.Namespace] | None = None


def _share_speculation(config: DifferConfig, args: argparse.Namespace) -> None:
    global _forked_speculation
    _forked_speculation = (config, args)


def _speculative_report(path: str, processes: int) -> tuple[str, int]:
    """The forked process of ``_Speculation``: the report of the store at ``path`` as it stands,
    emitted (files to the paths in the arguments it inherited, standard output kept); what it
    printed and the exit code."""
    from shadowtap.differ import DiffStore, build_report

    assert _forked_speculation is not None
    config, args = _forked_speculation
    store = DiffStore(path, create=False)
    try:
        report = build_report(store, config, fail_on=args.fail_on, min_samples=args.min_samples)
    finally:
        store.close()
    captured = _Captured(sys.stdout)
    sys.stdout = captured
    try:
        code = emit(report, args, config.compare.proto, processes=processes)
    finally:
        sys.stdout = captured.real
    return captured.getvalue(), code


@dataclass(slots=True)
class _Speculation:
    """The report built and written by a forked process from the store with the endpoints it was
    written with, while this one learns the endpoints over every path: when the learning changes
    none (routes stored under their final templates, as with ids in paths), that report is the one
    this process would build, and its files (written to temporary siblings) are moved into place.
    Otherwise they are removed and the report is built again."""

    pool: Executor
    future: Future[tuple[str, int]]
    #: (temporary, target) of each report file.
    files: list[tuple[Path, Path]]

    @classmethod
    def start(cls, path: str, config: DifferConfig, args: argparse.Namespace, processes: int) -> _Speculation:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        temporary = argparse.Namespace(**vars(args))
        files: list[tuple[Path, Path]] = []
        for kind in _REPORT_FILES:
            target: Path | None = getattr(args, kind)
            if target is not None:
                files.append((target.with_name(f".{target.name}.{os.getpid()}.speculative"), target))
                setattr(temporary, kind, files[-1][0])
        pool = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_share_speculation,
            initargs=(config, temporary),
        )
        return cls(pool, pool.submit(_speculative_report, path, processes), files)

    def take(self, *, holds: bool) -> tuple[str, int] | None:
        """What the forked process printed and its exit code, its files moved into place, when
        ``holds`` and it succeeded; else None, its files removed (it is waited for either way: a
        report file must never be written after this)."""
        result: tuple[str, int] | None = None
        try:
            result = self.future.result()
        except Exception:  # a shortcut never fails the run: the report is built again, and fails there
            result = None
        finally:
            self.pool.shutdown()
        if result is None or not holds:
            for temporary, _ in self.files:
                temporary.unlink(missing_ok=True)
            return None
        for temporary, target in self.files:
            os.replace(temporary, target)
        return result


def run(args: argparse.Namespace) -> int:
    from itertools import islice

    from shadowtap.commands.tape import refuse_files_that_are_not_tapes
    from shadowtap.differ import DiffSession, DiffStore, RunMeta, build_report, parse_fail_on
    from shadowtap.differ.pipeline import relearn_endpoints
    from shadowtap.recorder import TapeReader

    config = with_proto_schema(load_config(args.config), args)
    if args.fail_on is not None:
        parse_fail_on(args.fail_on)  # a bad SPEC fails before the tape is read, not after
    refuse_files_that_are_not_tapes([*args.tape, *args.noise_tape], args.salvage)
    reader = TapeReader(args.tape, salvage=args.salvage)
    peek = list(islice(iter(reader), _PEEK_EXCHANGES))
    seen: set[str] = set()
    _names_on(peek, seen)
    candidate, secondary = _pick_names(peek, seen, args)
    # A name missing from the tape's start may still come later: then the whole pass decides.
    unknown = _unknown_name(args, seen)
    if unknown is not None and len(peek) < _PEEK_EXCHANGES:
        raise unknown
    workers = args.workers if args.workers is not None else _default_workers()
    if args.workers is None and sum(reader.segment_sizes()) < _WORKERS_MIN_TAPE_BYTES:
        workers = 1  # starting processes would cost more than they save
    del peek
    sources = (*(str(t) for t in args.tape), *(f"noise:{t}" for t in args.noise_tape))
    meta = RunMeta(args.primary, candidate, secondary, sources)
    job = _Job(
        tapes=tuple(str(t) for t in args.tape),
        noise_tapes=tuple(str(t) for t in args.noise_tape),
        noise_name=args.noise_name,
        salvage=args.salvage,
        config=args.config,
        proto_descriptor=args.proto_descriptor,
        proto_reflection=args.proto_reflection,
        meta=meta,
        shard=0,
        shards=workers,
        db="",
        progress=not args.no_progress,
        collect_names=unknown is not None,
    )
    # Without --db the store is a temporary file, not memory: its pages stay on disk, so memory
    # does not grow with the tape. Workers' stores live there too until merged.
    scratch = tempfile.TemporaryDirectory(prefix="shadowtap-diff-")
    db = args.db if args.db is not None else Path(scratch.name) / "diff.sqlite"
    store: DiffStore | None = None
    try:
        if workers > 1:
            noise_reader = TapeReader(args.noise_tape, salvage=args.salvage) if args.noise_tape else None
            jobs = _worker_jobs(job, reader, noise_reader, workers, scratch.name)
            store, done = _run_workers(functools.partial(DiffStore, db), config, meta, jobs)
        else:
            store = DiffStore(db)
            session = DiffSession(store, config, meta)
            done = _ingest(session, job)
            session.finish()
        stats = done.stats
        if unknown is not None:
            unknown = _unknown_name(args, seen | done.names)
            if unknown is not None:
                raise unknown
        for note in done.notes:
            print(note, file=sys.stderr)
        if args.noise_tape and stats.noise_pairs == stats.noise_skipped:
            print(
                f"note: no usable pair in --noise-tape (safe methods with both primary and {args.noise_name!r})",
                file=sys.stderr,
            )
        if stats.duplicates:
            print(f"note: {stats.duplicates} exchanges were already in {args.db}; counted once", file=sys.stderr)
        speculated: tuple[str, int] | None = None
        if workers > 1:
            # The report is built and written beside the learning, by a forked process, and stands
            # if the learning changes no route's endpoint.
            speculation = _Speculation.start(store.path, config, args, workers) if _start_method() == "fork" else None
            try:
                changed = relearn_endpoints(store, config)
                store.commit()
            except BaseException:
                if speculation is not None:  # waited for and its files removed, before the store goes
                    speculation.take(holds=False)
                raise
            if speculation is not None:
                speculated = speculation.take(holds=not changed)
        report = (
            None
            if speculated is not None
            else build_report(store, config, fail_on=args.fail_on, min_samples=args.min_samples)
        )
    finally:
        if store is not None:
            store.close()
        scratch.cleanup()
    if speculated is not None:
        printed, code = speculated
        sys.stdout.write(printed)
        return code
    assert report is not None
    return emit(report, args, config.compare.proto, processes=workers)
