"""The ``farm`` command: submit, wait on and inspect builds; run workers; keep the registry true.

Every failure a user can fix ends in one sentence on stderr and a non-zero exit, never a
traceback. Commands import what they need when they run: ``farm --help`` and ``farm status``
load neither the builders nor pydantic (a pipeline may poll with them).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from farm import terminal
from farm.errors import FarmError, InputError
from farm.limits import MAX_BATCH, MAX_JITTER

if TYPE_CHECKING:
    from farm.client import Farm
    from farm.config import Settings
    from farm.kinds import DatasetRequest
    from farm.records import ArtifactRecord
    from farm.registry import Registry
    from farm.requests import BuildRequest

app = typer.Typer(
    name="farm",
    help="Build GenVarLoader caches and datasets once, atomically, through a shared queue.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: rich and markdown cost 70 ms of `farm --help`
)
build_app = typer.Typer(help="Submit a request and wait until its artifact is valid.")
submit_app = typer.Typer(help="Submit requests without waiting; prints one key a line.")
server_app = typer.Typer(
    help="The embedded Redis and worker (used when FARM_REDIS_URL is not set)."
)
app.add_typer(build_app, name="build")
app.add_typer(submit_app, name="submit", invoke_without_command=True)
app.add_typer(server_app, name="server")


def _print_version(asked: bool) -> None:
    """The package and the formats its artifacts are written in (loaded only when asked:
    the formats live with their writers, which ``farm --help`` must not load)."""
    if not asked:
        return
    import farm
    from farm.artifacts.dataset.writer import FORMAT_VERSION as DATASET_FORMAT
    from farm.artifacts.gvlfa import FORMAT_VERSION as CACHE_FORMAT

    terminal.line(
        f"gvl-farm {farm.__version__} (cache format {CACHE_FORMAT}, "
        f"dataset format {DATASET_FORMAT})"
    )
    raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and the cache and dataset format versions.",
        ),
    ] = False,
) -> None:
    pass


EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130
MAX_MANIFEST_LINE = 64 * 1024  # characters: a request with every sample of a large cohort
_BATCH = 1000  # keys a command reads in one round trip

DestOption = Annotated[
    Path | None, typer.Option("--dest", help="Where to publish (default: FASTA.gvlfa).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object a line.")]
TimeoutOption = Annotated[
    float | None, typer.Option("--timeout", help="Give up waiting after S seconds.")
]
InlineOption = Annotated[
    bool, typer.Option(help="Build in this process, through the same lease and registry.")
]
WorkerWaitOption = Annotated[
    float | None,
    typer.Option(
        "--worker-wait",
        min=0,
        help="With FARM_REDIS_URL: give up (exit 3) after S seconds with no live worker; "
        "the request stays queued (default: FARM_WORKER_WAIT_S, 600).",
    ),
]
KeysArgument = Annotated[
    list[str],
    typer.Argument(help="Keys printed by `farm submit`, or unique prefixes; `-`: read stdin."),
]


def _settings() -> Settings:
    from pydantic import ValidationError

    from farm.config import Settings
    from farm.requests import describe

    try:
        return Settings.from_env()
    except ValidationError as e:
        raise InputError(f"Invalid FARM_* setting: {describe(e)}.") from e


@contextmanager
def _farm(settings: Settings | None = None) -> Iterator[Farm]:
    from farm.client import Farm

    with Farm.connect(settings or _settings()) as farm:
        yield farm


def _light_registry() -> Registry:
    """The registry, found from FARM_REDIS_URL / FARM_STATE_DIR alone (no pydantic)."""
    from farm.embedded import url_from_env
    from farm.registry import Registry

    try:
        url = url_from_env()
    except ValueError as e:
        raise InputError(f"Invalid FARM_* setting: {e}.") from e
    return Registry.from_url(url)


def _keys(keys: Sequence[str]) -> list[str]:
    """Keys as typed, with ``-`` standing for the keys on stdin (one a line). A key is
    printable text: bytes that are not UTF-8 (a binary file piped in, kept by Python as lone
    surrogates that no Redis call can send) are one sentence."""
    out: list[str] = []
    for key in keys:
        if key != "-":
            if not key.isprintable():
                raise InputError(
                    f"The key {key!r} is not printable UTF-8 text; give the keys `farm submit` "
                    "printed, or unique prefixes of them."
                )
            out.append(key)
            continue
        for number, raw in enumerate(sys.stdin.buffer, 1):
            try:
                text = raw.decode("utf-8").strip()
                is_text = text.isprintable()
            except UnicodeDecodeError:
                is_text = False
            if not is_text:
                raise InputError(
                    f"Line {number} of standard input is not a key (not printable UTF-8 "
                    "text); pipe in the keys `farm submit` printed, one a line."
                )
            if text:
                out.append(text)
    return out


# --- build -----------------------------------------------------------------------------------


def _build(
    request: BuildRequest,
    *,
    timeout: float | None,
    inline: bool,
    worker_wait: float | None = None,
) -> None:
    """On the embedded default with no live worker, build here (its worker starts
    afterwards, for the next build): the caller never waits for a worker to boot."""
    from farm import embedded

    settings = _settings()
    with _farm(settings) as farm:
        cold = settings.embedded and not inline and not _queue_serves(farm, settings)
        if inline or cold:
            record = _build_here(farm, settings, request)
            if cold:
                embedded.ensure_worker(settings)
        else:
            limit = settings.worker_wait_s if worker_wait is None else worker_wait
            record = _build_queued(farm, settings, request, timeout, limit)
    _report_one(record)


def _queue_serves(farm: Farm, settings: Settings) -> bool:
    from farm import embedded

    live = farm.registry.live_workers(within_s=3 * settings.worker_heartbeat_s)
    return bool(live) and embedded.worker_serves(settings)


def _build_here(farm: Farm, settings: Settings, request: BuildRequest) -> ArtifactRecord:
    from farm import service

    ctx = service.Context(farm.registry, settings, service.inline_worker_name())
    try:
        return farm.build_here(request, ctx)
    except KeyboardInterrupt:
        terminal.say("Cancelled: the build was stopped and nothing was published.")
        raise typer.Exit(EXIT_INTERRUPTED) from None


class _NoWorkerInTime(Exception):
    """No live worker for as long as ``farm build`` waits for one."""


def _build_queued(
    farm: Farm,
    settings: Settings,
    request: BuildRequest,
    timeout: float | None,
    worker_wait_s: float,
) -> ArtifactRecord:
    import signal

    from farm.client import NoWorkerWarning

    submission = None
    try:
        # Ctrl-C waits until the submission is known (milliseconds), so it can be cancelled.
        # A handler, not a signal mask: the mask is per thread, and redis-py runs threads.
        pressed: list[int] = []
        previous = signal.signal(signal.SIGINT, lambda signum, _frame: pressed.append(signum))
        try:
            submission = farm.submit(request)  # says so if no worker will build it
        finally:
            signal.signal(signal.SIGINT, previous)
        if pressed:
            raise KeyboardInterrupt
        if submission.record.status.terminal:
            return submission.record
        key = submission.key
        # The embedded default starts its own worker; a shared farm may have none at all.
        watch = None if settings.embedded else _worker_watch(farm, settings, worker_wait_s)
        with terminal.build_status(submission.record.dest) as show, warnings.catch_warnings():
            warnings.simplefilter("ignore", NoWorkerWarning)  # said once, above
            if watch is not None and watch() and show is None:
                terminal.say(
                    f"Waiting up to {worker_wait_s:g} s for a worker (--worker-wait, "
                    "FARM_WORKER_WAIT_S)."
                )
            polled = _shower(farm, key, show, watch)
            (record,) = farm.wait([key], timeout_s=timeout, on_progress=polled)
    except KeyboardInterrupt:
        if submission is None:
            raise  # the submission itself failed to start
        # Ours alone on the embedded default: stop it. On a shared farm others may wait.
        if settings.embedded and submission.enqueued:
            raise typer.Exit(_cancel_on_interrupt(farm, submission.key)) from None
        terminal.say(f"Stopped waiting; the build goes on (`farm wait {submission.key}`).")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except _NoWorkerInTime:
        assert submission is not None
        terminal.error(
            f"No worker was live for {worker_wait_s:g} s, so {submission.record.dest} is still "
            f"queued (key {submission.key}): start one (`farm worker`), then "
            f"`farm wait {submission.key}`, or give --worker-wait more seconds."
        )
        raise typer.Exit(EXIT_TIMEOUT) from None
    assert record is not None
    return record


def _worker_watch(farm: Farm, settings: Settings, limit_s: float) -> Callable[[], str | None]:
    """A check, cheap to call often, of how long no worker has been live: a note for the
    live line while none is, and :class:`_NoWorkerInTime` once that lasts ``limit_s``."""
    within = 3 * settings.worker_heartbeat_s
    since: float | None = None
    checked = -1.0
    note: str | None = None

    def check() -> str | None:
        nonlocal since, checked, note
        now = time.monotonic()
        if checked >= 0 and now - checked < 1.0:
            return note
        checked = now
        if farm.registry.live_workers(within_s=within):
            since = note = None
            return None
        since = now if since is None else since
        if now - since >= limit_s:
            raise _NoWorkerInTime
        note = f"waiting for a worker, {now - since:.0f} s of {limit_s:g} s"
        return note

    return check


def _shower(
    farm: Farm,
    key: str,
    show: terminal.BuildShow | None,
    watch: Callable[[], str | None] | None,
) -> terminal.OnPoll | None:
    """Between polls, whether a worker is live, and the key's status and its builder's
    progress on the terminal."""
    if show is None and watch is None:
        return None
    last = 0.0

    def polled(_done: int, _total: int) -> None:
        nonlocal last
        note = watch() if watch is not None else None
        if show is not None and time.monotonic() - last >= 0.25:
            last = time.monotonic()
            ((row, figures),) = farm.registry.get_many_raw([key])
            if row is not None:
                show(row["status"], _with_known_total(row, figures), note)

    return polled


def _with_known_total(row: dict[str, Any], figures: dict | None) -> dict | None:
    """A gzipped FASTA streams with no known total; its ``.fai`` (bgzip + samtools faidx),
    when newer than the FASTA, gives the bases to come, so a person sees a percentage."""
    if not figures or figures.get("total") or figures.get("unit") != "bp":
        return figures
    fasta = (row.get("request") or {}).get("fasta")
    if not fasta:
        return figures
    index = Path(f"{fasta}.fai")
    try:
        if index.stat().st_mtime < Path(fasta).stat().st_mtime:
            return figures
        with index.open() as f:
            total = sum(int(line.split("\t")[1]) for line in f if line.strip())
    except (OSError, ValueError, IndexError):
        return figures
    return {**figures, "total": total} if total >= figures["done"] else figures


def _cancel_on_interrupt(farm: Farm, key: str) -> int:
    import time

    farm.cancel([key])
    deadline = time.monotonic() + 3.0
    record = farm.registry.get(key)
    while record is not None and not record.status.terminal and time.monotonic() < deadline:
        time.sleep(0.05)
        record = farm.registry.get(key)
    if record is not None and record.status == "valid":
        terminal.say(f"It had already finished: {record.dest}")
    elif record is not None and not record.status.terminal:
        terminal.say(f"Cancelling: the build stops at its next report (`farm status {key}`).")
    else:
        terminal.say("Cancelled: the build was stopped and nothing was published.")
    return EXIT_INTERRUPTED


def _report_one(record: ArtifactRecord) -> None:
    if record.status == "valid":
        terminal.line(record.dest)
        return
    if record.status.terminal:
        raise typer.Exit(_fail(record.error or f"{record.dest} is {record.status}."))
    terminal.say(f"Timed out: {record.dest} is still {record.status} (key {record.key}).")
    raise typer.Exit(EXIT_TIMEOUT)


def _fail(sentence: str) -> int:
    terminal.error(sentence)
    return EXIT_FAILED


@build_app.command("cache")
def build_cache(
    fasta: Annotated[Path, typer.Argument(help="FASTA file (plain, bgzipped or gzipped).")],
    dest: DestOption = None,
    timeout: TimeoutOption = None,
    inline: InlineOption = False,
    worker_wait: WorkerWaitOption = None,
) -> None:
    """Build (or reuse) the .gvlfa cache of FASTA and print where it is."""
    from farm.kinds import CacheRequest

    request = CacheRequest(fasta=fasta, dest=dest)
    _build(request, timeout=timeout, inline=inline, worker_wait=worker_wait)


VariantsOption = Annotated[
    Path | None,
    typer.Option(
        "--variants",
        help="bgzipped+indexed VCF/BCF, or PGEN with .pvar/.psam (none: a tracks-only dataset).",
    ),
]
RegionsOption = Annotated[
    Path,
    typer.Option("--regions", help="BED-like regions: .bed, .narrowPeak, .broadPeak, or .gz."),
]
TrackOption = Annotated[
    list[str] | None,
    typer.Option(
        "--track",
        help="NAME=FILE: a per-sample track; FILE has a line 'SAMPLE<TAB>bigWig' per sample.",
    ),
]
TrackTableOption = Annotated[
    list[str] | None,
    typer.Option(
        "--track-table",
        help="NAME=TABLE: a per-sample track from one table (.csv/.tsv/.parquet/.arrow) with "
        "columns sample_id, chrom, start, end, value.",
    ),
]
AnnotOption = Annotated[
    list[str] | None,
    typer.Option(
        "--annot", help="NAME=PATH: an annotation track, a bigWig or a BED-like table (BED5)."
    ),
]
DatasetDestOption = Annotated[Path, typer.Option("--dest", help="Dataset directory to publish.")]
SamplesOption = Annotated[
    str | None,
    typer.Option("--samples", help="Comma-separated sample names, or a file of one a line."),
]
JitterOption = Annotated[
    int, typer.Option("--max-jitter", min=0, max=MAX_JITTER, help="Widen regions by N bp.")
]
StrandOption = Annotated[
    int | None,
    typer.Option(
        "--strand-column",
        min=0,
        help="1-based BED column of the strand; 0: none (default: found from the BED).",
    ),
]


def _samples(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines()]
    elif "," not in value and ("/" in value or path.suffix in (".txt", ".tsv", ".list")):
        raise InputError(
            f"--samples {value} looks like a file, but there is no such file; give the file's "
            "path, or the sample names separated by commas."
        )
    else:
        names = [name.strip() for name in value.split(",")]
    names = [n for n in names if n]
    if not names:
        raise InputError(f"--samples {value} names no sample; give names or a file of names.")
    return tuple(names)


def _named(option: str, value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise InputError(f"{option} {value} is not NAME=PATH; give the track's name and its file.")
    return name, Path(path)


def _track_files(value: str) -> tuple[str, dict[str, Path]]:
    """``NAME=FILE``, FILE listing ``SAMPLE<TAB>PATH`` lines (paths relative to FILE)."""
    name, listing = _named("--track", value)
    try:
        lines = listing.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(
            f"--track {value}: cannot read {listing} ({e.__class__.__name__}); give a file of "
            "'SAMPLE<TAB>bigWig' lines."
        ) from e
    files: dict[str, Path] = {}
    for line_no, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != 2:
            raise InputError(
                f"{listing} line {line_no} is not 'SAMPLE<TAB>bigWig'; list one sample and "
                "its file a line."
            )
        sample, path = fields[0].strip(), Path(fields[1].strip())
        if sample in files:
            raise InputError(f"{listing} line {line_no} lists sample {sample} again; list it once.")
        files[sample] = path if path.is_absolute() else listing.parent / path
    if not files:
        raise InputError(f"{listing} lists no sample; give 'SAMPLE<TAB>bigWig' lines.")
    return name, files


def _dataset_request(
    variants: Path | None,
    regions: Path,
    dest: Path,
    samples: str | None,
    max_jitter: int,
    strand_column: int | None,
    tracks: list[str] | None = None,
    annots: list[str] | None = None,
    track_tables: list[str] | None = None,
) -> DatasetRequest:
    from pydantic import ValidationError

    from farm.kinds import DatasetRequest
    from farm.requests import describe

    per_sample: dict[str, dict[str, Path] | Path] = dict(_track_files(v) for v in tracks or [])
    for value in track_tables or []:
        name, table = _named("--track-table", value)
        if name in per_sample:
            raise InputError(f"Track {name} is given twice; give each track its own name.")
        per_sample[name] = table
    annotation = dict(_named("--annot", v) for v in annots or [])
    try:
        return DatasetRequest(
            variants=variants,
            regions=regions,
            dest=dest,
            samples=_samples(samples),
            max_jitter=max_jitter,
            strand_column=strand_column,
            tracks=per_sample or None,
            annot_tracks=annotation or None,
        )
    except ValidationError as e:
        raise InputError(f"Invalid dataset request: {describe(e)}.") from e


@build_app.command("dataset")
def build_dataset(
    regions: RegionsOption,
    dest: DatasetDestOption,
    variants: VariantsOption = None,
    samples: SamplesOption = None,
    max_jitter: JitterOption = 0,
    strand_column: StrandOption = None,
    track: TrackOption = None,
    track_table: TrackTableOption = None,
    annot: AnnotOption = None,
    timeout: TimeoutOption = None,
    inline: InlineOption = False,
    worker_wait: WorkerWaitOption = None,
) -> None:
    """Build (or reuse) a GenVarLoader dataset and print where it is."""
    request = _dataset_request(
        variants, regions, dest, samples, max_jitter, strand_column, track, annot, track_table
    )
    _build(request, timeout=timeout, inline=inline, worker_wait=worker_wait)


# --- submit ----------------------------------------------------------------------------------


@submit_app.callback()
def submit_manifest(
    ctx: typer.Context,
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", help="A batch: one JSON request a line, mixed kinds."),
    ] = None,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if manifest is None:
        raise InputError("Name a request (`farm submit cache FASTA`) or a --manifest FILE.")
    requests = list(_read_manifest(manifest))
    if not requests:
        raise InputError(f"Manifest {manifest} holds no request; write one JSON request a line.")
    with _farm() as farm, terminal.counter("submitting", len(requests)) as update:
        submissions = farm.submit_many(requests, on_progress=update)
    sys.stdout.writelines(f"{s.key}\n" for s in submissions)


def _read_manifest(path: Path) -> Iterator[BuildRequest]:
    from pydantic import ValidationError

    from farm.kinds import parse_request
    from farm.requests import describe

    for number, line in _manifest_lines(path):
        if not line.strip():
            continue
        if number > MAX_BATCH:
            raise InputError(
                f"Manifest {path} holds more than {MAX_BATCH:,} lines; split it into batches. "
                "Nothing was submitted."
            )
        try:
            yield parse_request(line)
        except ValidationError as e:
            raise InputError(
                f"Manifest {path} line {number}: {describe(e)}; nothing was submitted."
            ) from e


_GZIP_MAGIC = b"\x1f\x8b"  # gzip and bgzip (a series of gzip members) alike
_OTHER_COMPRESSION = {b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_MANIFEST_LINE_BYTES = 4 * MAX_MANIFEST_LINE + 2  # UTF-8 takes up to 4 bytes a character


def _manifest_lines(path: Path) -> Iterator[tuple[int, str]]:
    """A manifest's numbered lines, plain or gzip/bgzip-compressed, read as they are needed;
    anything else a user may hand over (another compression, binary, a line too long, a
    corrupt stream) is one sentence naming the file."""
    import gzip
    import zlib

    try:
        raw = open(path, "rb")  # noqa: SIM115 -- closed below, once the lines are read
    except OSError as e:
        raise InputError(f"Cannot read manifest {path} ({e.strerror}); check the path.") from e
    with raw:
        try:
            head = raw.peek(8)[:8]
        except OSError as e:
            raise InputError(f"Cannot read manifest {path} ({e.strerror}); check the path.") from e
        for magic, name in _OTHER_COMPRESSION.items():
            if head.startswith(magic):
                raise InputError(
                    f"Manifest {path} is {name}-compressed; give it plain or gzipped "
                    "(bgzip or gzip). Nothing was submitted."
                )
        stream = gzip.GzipFile(fileobj=raw) if head.startswith(_GZIP_MAGIC) else raw
        number = 0
        try:
            while line := stream.readline(_MANIFEST_LINE_BYTES):
                number += 1
                yield number, _manifest_line(path, number, line)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise InputError(
                f"Manifest {path} is a truncated or corrupt gzip file ({e}); compress it "
                "again or give it uncompressed. Nothing was submitted."
            ) from e


def _manifest_line(path: Path, number: int, raw: bytes) -> str:
    too_long = len(raw) == _MANIFEST_LINE_BYTES and not raw.endswith(b"\n")
    try:
        line = raw.decode("utf-8").rstrip("\r\n") if not too_long else ""
    except UnicodeDecodeError as e:
        raise InputError(
            f"Manifest {path} line {number} is not UTF-8 text (byte {e.start + 1}); a manifest "
            "holds one JSON request a line, plain or gzipped. Nothing was submitted."
        ) from None
    if too_long or len(line) > MAX_MANIFEST_LINE:
        length = f"{len(line):,} characters long" if line else "longer than that"
        raise InputError(
            f"Manifest {path} line {number} is {length}, over the limit of "
            f"{MAX_MANIFEST_LINE:,} characters; one request a line. Nothing was submitted."
        )
    return line


@submit_app.command("cache")
def submit_cache(
    fasta: Annotated[Path, typer.Argument(help="FASTA file.")],
    dest: DestOption = None,
) -> None:
    """Submit the cache of FASTA; print its key."""
    from farm.kinds import CacheRequest

    with _farm() as farm:
        terminal.line(farm.submit(CacheRequest(fasta=fasta, dest=dest)).key)


@submit_app.command("dataset")
def submit_dataset(
    regions: RegionsOption,
    dest: DatasetDestOption,
    variants: VariantsOption = None,
    samples: SamplesOption = None,
    max_jitter: JitterOption = 0,
    strand_column: StrandOption = None,
    track: TrackOption = None,
    track_table: TrackTableOption = None,
    annot: AnnotOption = None,
) -> None:
    """Submit a dataset build; print its key."""
    request = _dataset_request(
        variants, regions, dest, samples, max_jitter, strand_column, track, annot, track_table
    )
    with _farm() as farm:
        terminal.line(farm.submit(request).key)


# --- status / wait / ls ----------------------------------------------------------------------


def _full_keys(registry: Registry, keys: Sequence[str]) -> list[str]:
    """Whole keys for what the user typed: a unique prefix stands for its key; an ambiguous
    one is refused; one that matches nothing is kept (and reported unknown)."""
    full = []
    for key in _keys(keys):
        if len(key) >= 64 or not key:
            full.append(key)
            continue
        matches = registry.keys_with_prefix(key)
        if len(matches) > 1:
            raise InputError(
                f"Key prefix {key} matches more than one key ({matches[0]}, {matches[1]}...); "
                "give more of it."
            )
        full.append(matches[0] if matches else key)
    return full


def _counted(
    records: Iterable[ArtifactRecord], update: Callable[[int], None]
) -> Iterator[terminal.Row]:
    """Rows of ``records`` as they come, counted on the terminal's progress line."""
    for done, record in enumerate(records, 1):
        update(done)
        yield record.model_dump(mode="json")


@app.command()
def status(keys: KeysArgument, as_json: JsonOption = False) -> None:
    """Show the status of keys, with a building key's progress (one round trip a thousand
    keys, printed as they come); exit 1 if any is unknown."""
    registry = _light_registry()
    keys = _full_keys(registry, keys)
    unknown = False

    def rows() -> Iterator[terminal.Row]:
        nonlocal unknown
        for i in range(0, len(keys), _BATCH):
            chunk = keys[i : i + _BATCH]
            for key, (row, figures) in zip(chunk, registry.get_many_raw(chunk), strict=True):
                if row is None:
                    unknown = True
                    yield terminal.unknown_row(key)
                elif row["status"] == "building" and not as_json:
                    # For a person: is its builder alive (a lease), and how far along.
                    lease = registry.lease_remaining_s(key)
                    figures = _with_known_total(row, figures)
                    yield {**row, "progress": figures, terminal.LEASE_LEFT: lease}
                else:
                    yield {**row, "progress": figures} if figures else row

    terminal.print_rows(rows(), as_json=as_json)
    if unknown:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def wait(keys: KeysArgument, timeout: TimeoutOption = None) -> None:
    """Wait until every key is terminal; exit 0 only when all are valid."""
    with _farm() as farm:
        keys = _full_keys(farm.registry, keys)
        with terminal.counter("waiting", len(keys)) as update:
            try:
                farm.follow(keys, timeout_s=timeout, on_progress=lambda done, _total: update(done))
            except KeyboardInterrupt:
                terminal.say(
                    "Stopped waiting; the builds go on (`farm wait` again to follow them)."
                )
                raise typer.Exit(EXIT_INTERRUPTED) from None
        failed = timed_out = False
        for i in range(0, len(keys), _BATCH):
            chunk = keys[i : i + _BATCH]
            statuses = farm.registry.statuses(chunk)
            bad = [k for k, s in zip(chunk, statuses, strict=True) if s != "valid"]
            for key, r in zip(bad, farm.registry.get_many(bad), strict=True):
                if r is None:
                    terminal.say(f"{key}: unknown key")
                elif r.status.terminal:
                    terminal.say(f"{key}: {r.status}: {r.error or r.dest}")
                else:
                    terminal.say(f"{key}: still {r.status} (timed out): {r.dest}")
                failed = True
                timed_out = timed_out or (r is not None and not r.status.terminal)
    if failed:
        raise typer.Exit(EXIT_TIMEOUT if timed_out else EXIT_FAILED)


@app.command()
def cancel(keys: KeysArgument) -> None:
    """Cancel builds: a queued key fails now, a building one within a second; nothing is
    published. Exit 1 if any key is unknown."""
    with _farm() as farm:
        keys = _full_keys(farm.registry, keys)
        records = farm.cancel(keys)
    for key, record in zip(keys, records, strict=True):
        if record is None:
            terminal.say(f"{key}: unknown key")
        elif record.status.terminal:
            terminal.say(f"{key}: {record.status}")
        else:
            terminal.say(f"{key}: cancelling (it stops at its builder's next report)")
    if any(r is None for r in records):
        raise typer.Exit(EXIT_FAILED)


StatusFilter = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        help="Only records of this status: queued, building, valid, stale, invalid, failed "
        "(repeat, or separate with commas, for several).",
    ),
]
KindFilter = Annotated[str | None, typer.Option("--kind", help="Only this kind (cache, dataset).")]
DestFilter = Annotated[
    str | None,
    typer.Option(
        "--dest", help="Only destinations at or below this path (relative: to the current dir)."
    ),
]
OlderFilter = Annotated[
    str | None,
    typer.Option("--older-than", help="Only records last changed longer ago (30d, 12h, 90m)."),
]
NewerFilter = Annotated[
    str | None, typer.Option("--newer-than", help="Only records changed more recently.")
]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _age_s(option: str, value: str) -> float:
    number, unit = value[:-1], value[-1:].lower()
    if unit.isdigit():
        number, unit = value, "s"
    try:
        age = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        raise InputError(
            f"{option} {value} is not an age; give it as 30d, 12h, 90m or 45s."
        ) from None
    if age < 0:
        raise InputError(f"{option} {value} is negative; give a positive age.")
    return age


def _matcher(
    status: list[str] | None,
    kind: str | None,
    dest: str | None,
    older_than: str | None,
    newer_than: str | None,
) -> Callable[[dict[str, Any]], bool] | None:
    """A test on raw records for the filters given, or None when none is. A value that no
    record can have is refused: a typo must not look like an empty registry."""
    if not (status or kind or dest or older_than or newer_than):
        return None
    now = time.time()
    before = now - _age_s("--older-than", older_than) if older_than else None
    after = now - _age_s("--newer-than", newer_than) if newer_than else None
    statuses = _known_statuses(status or [])
    kind = _known_kind(kind) if kind else None
    prefix = os.path.realpath(os.path.expanduser(dest)).rstrip("/") + "/" if dest else None

    def matches(record: dict[str, Any]) -> bool:
        if statuses and record.get("status") not in statuses:
            return False
        if kind and record.get("kind") != kind:
            return False
        if prefix and not (str(record.get("dest")) + "/").startswith(prefix):
            return False
        changed = float(record.get("updated_at") or 0)
        return (before is None or changed < before) and (after is None or changed >= after)

    return matches


def _known_statuses(given: list[str]) -> set[str]:
    from farm.stored import STATUS_CODE

    wanted = {s.strip().lower() for value in given for s in value.split(",") if s.strip()}
    unknown = sorted(wanted - STATUS_CODE.keys())
    if unknown:
        raise InputError(_unknown_value("--status", unknown[0], "statuses", list(STATUS_CODE)))
    return wanted


def _known_kind(given: str) -> str:
    from farm.kinds import KINDS  # only when filtering by kind: it loads every builder

    kind = given.strip().lower()
    if kind not in KINDS:
        raise InputError(_unknown_value("--kind", given, "kinds", list(KINDS)))
    return kind


def _unknown_value(option: str, value: str, what: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(value.lower(), known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{option} {value} is not one of the {what}{hint}; the {what} are {', '.join(known)}."


@app.command("ls")
def list_artifacts(
    as_json: JsonOption = False,
    status: StatusFilter = None,
    kind: KindFilter = None,
    dest: DestFilter = None,
    older_than: OlderFilter = None,
    newer_than: NewerFilter = None,
) -> None:
    """List recorded artifacts and their validity, as they are read (any registry size)."""
    matches = _matcher(status, kind, dest, older_than, newer_than)
    rows = _light_registry().raw_records()
    terminal.print_rows(filter(matches, rows) if matches else rows, as_json=as_json)


@app.command()
def forget(
    keys: Annotated[
        list[str] | None,
        typer.Argument(help="Keys or unique prefixes; `-`: read stdin (else: the filters)."),
    ] = None,
    status: StatusFilter = None,
    kind: KindFilter = None,
    dest: DestFilter = None,
    older_than: OlderFilter = None,
    newer_than: NewerFilter = None,
    dry_run: Annotated[
        bool, typer.Option(help="Show what would be forgotten, and forget nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove records (never artifacts): the keys named, or every record the filters match.
    Keys queued or building are kept. The next request for a forgotten key builds or adopts
    its artifact again."""
    matches = _matcher(status, kind, dest, older_than, newer_than)
    if not keys and matches is None:
        raise InputError(
            "farm forget needs keys or a filter (--status, --kind, --dest, --older-than, "
            "--newer-than); nothing was forgotten."
        )
    registry = _light_registry()
    unknown: list[str] = []
    if keys:
        named = _full_keys(registry, keys)
        found = list(zip(named, registry.get_many_raw(named), strict=True))
        unknown = [key for key, (row, _) in found if row is None]
        chosen: Iterable[dict[str, Any]] = (row for _, (row, _) in found if row is not None)
    else:
        chosen = registry.raw_records()
    picked = filter(matches, chosen) if matches else chosen
    tally = {"gone": 0, "kept": 0}
    rows = _forgotten(registry, iter(picked), dry_run=dry_run, tally=tally)
    terminal.print_rows(rows, as_json=as_json)
    for key in unknown:
        terminal.say(f"{key}: unknown key")
    done = "Would forget" if dry_run else "Forgot"
    kept = f"; {tally['kept']:,} queued or building kept" if tally["kept"] else ""
    nothing = " (a dry run: nothing was forgotten)" if dry_run else ""
    plural = "" if tally["gone"] == 1 else "s"
    terminal.say(f"{done} {tally['gone']:,} record{plural}{kept}{nothing}.")
    if unknown:
        raise typer.Exit(EXIT_FAILED)


def _forgotten(
    registry: Registry,
    records: Iterator[dict[str, Any]],
    *,
    dry_run: bool,
    tally: dict[str, int],
    batch: int = 500,
) -> Iterator[dict[str, Any]]:
    """Forget ``records`` a batch at a time; yield each one that went (or would go), saying
    which in its ``outcome``. ``tally`` counts those gone and those kept (in flight)."""
    outcome = "would forget" if dry_run else "forgotten"
    while chunk := list(itertools.islice(records, batch)):
        settled = [r for r in chunk if r.get("status") not in ("queued", "building")]
        tally["kept"] += len(chunk) - len(settled)
        gone = (
            {r["key"] for r in settled}
            if dry_run
            else set(registry.forget(r["key"] for r in settled))
        )
        for r in settled:
            if r["key"] in gone:
                tally["gone"] += 1
                yield {**r, "outcome": outcome}


# --- maintenance -----------------------------------------------------------------------------


@app.command()
def verify(
    keys: Annotated[
        list[str] | None,
        typer.Argument(help="Keys to verify, or prefixes; `-`: read stdin (default: all)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-check recorded artifacts against their sources and bytes; exit 1 if any is not valid."""
    from farm import maintenance

    with _farm() as farm:
        full = _full_keys(farm.registry, keys) if keys else None
        statuses = farm.registry.statuses(full or [])
        unknown = [k for k, st in zip(full or [], statuses, strict=True) if st is None]
        total = len(full) if full else None  # all: counted as they stream
        invalid = 0
        with terminal.counter("verifying", total) as update:

            def verdicts() -> Iterator[ArtifactRecord]:
                nonlocal invalid
                for record in maintenance.verify(farm.registry, full):
                    invalid += record.status != "valid"
                    yield record

            terminal.print_rows(_counted(verdicts(), update), as_json=as_json)
    for key in unknown:
        terminal.say(f"{key}: unknown key")
    if unknown or invalid:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def reindex(
    root: Annotated[Path, typer.Argument(help="Directory to scan for artifacts.")],
    as_json: JsonOption = False,
) -> None:
    """Rebuild registry records from the artifacts on disk below ROOT."""
    from farm import maintenance

    if not root.is_dir():
        raise InputError(f"{root} is not a directory; name the directory to scan.")
    settings = _settings()
    with _farm(settings) as farm, terminal.counter("reindexing") as update:
        found = maintenance.reindex(farm.registry, root, allowed=settings.roots)
        terminal.print_rows(_counted(found, update), as_json=as_json)


@app.command("gc")
def collect_garbage(
    roots: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Directories to sweep (default: the allowed roots; on the embedded default, "
            "the current directory)."
        ),
    ] = None,
    grace: Annotated[
        float, typer.Option(help="Seconds before another host's leaseless dir is an orphan.")
    ] = 3600.0,
    dry_run: Annotated[bool, typer.Option(help="List orphans without removing them.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove staging and aside directories left by builders that died, and versions
    replaced behind a destination's link longer ago than FARM_VERSION_GRACE_S."""
    from farm import maintenance
    from farm.orphans import remove_orphans

    settings = _settings()
    done = "would remove" if dry_run else "removed"
    with _farm(settings) as farm, terminal.counter("sweeping") as update:
        found = maintenance.gc(
            farm.registry,
            roots or _gc_roots(settings),
            grace_s=grace,
            allowed=settings.roots,
            version_grace_s=settings.version_grace_s,
        )
        for count, orphan in enumerate(found, 1):
            if not dry_run:
                remove_orphans([orphan])
            update(count)
            if as_json:
                row = {"path": str(orphan.path), "action": done, "reason": orphan.reason}
                terminal.line(json.dumps(row))
            else:
                terminal.line(f"{done} {orphan.path} ({orphan.reason})")


def _gc_roots(settings: Settings) -> list[Path]:
    """What ``farm gc`` sweeps by default: the allowed roots, or the current directory when
    they are the whole filesystem (the embedded default), which no one means to walk."""
    from farm.env import EVERYWHERE

    if settings.roots == [Path(EVERYWHERE)]:
        return [Path.cwd()]
    return settings.roots


# --- processes -------------------------------------------------------------------------------


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    autoscale: Annotated[
        str | None, typer.Option(help="MAX,MIN worker processes (Celery --autoscale).")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    lifetime: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="Be gone by then (2h, 90m, 3600s; a walltime, a spot notice): stop taking keys "
            "and hand running builds back in time (FARM_WORKER_LIFETIME_S).",
        ),
    ] = None,
    lifetime_stagger: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="Take a random part of this off the lifetime, so a pool does not drain at "
            "once (FARM_WORKER_LIFETIME_STAGGER_S).",
        ),
    ] = None,
    max_builds: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Exit after N builds (a KEDA ScaledJob: 1) (FARM_WORKER_MAX_BUILDS).",
        ),
    ] = None,
    idle_exit: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="Exit after this long without a build to run (scale to zero) (FARM_IDLE_EXIT_S).",
        ),
    ] = None,
) -> None:
    """Run a Celery worker on the farm's queue (extra options go to Celery). Each gets a
    name of its own, farm-PID-XXXX@HOST, unless -n/--hostname names it. It exits 0 after a
    drain (--lifetime, --max-builds, --idle-exit, SIGTERM)."""
    from farm import embedded

    durations = {
        "FARM_WORKER_LIFETIME_S": ("--lifetime", lifetime),
        "FARM_WORKER_LIFETIME_STAGGER_S": ("--lifetime-stagger", lifetime_stagger),
        "FARM_IDLE_EXIT_S": ("--idle-exit", idle_exit),
    }
    for name, (option, value) in durations.items():
        if value is not None:
            os.environ[name] = repr(_age_s(option, value))  # passed on to Celery's process
    if max_builds is not None:
        os.environ["FARM_WORKER_MAX_BUILDS"] = str(max_builds)
    settings = _settings()  # a bad FARM_* setting is one sentence here, not a Celery traceback
    life = settings.worker_lifetime_s
    if life is not None and life <= settings.stop_grace_s + settings.worker_lifetime_stagger_s:
        raise InputError(
            f"--lifetime {life:g} s leaves no time to work: it must exceed FARM_STOP_GRACE_S "
            f"({settings.stop_grace_s:g} s) plus --lifetime-stagger "
            f"({settings.worker_lifetime_stagger_s:g} s)."
        )
    argv = [*embedded.worker_argv(), "--loglevel", loglevel]
    if autoscale:
        argv += ["--autoscale", autoscale]
    if not _names_itself(ctx.args):
        argv += ["-n", embedded.worker_name()]
    argv += list(ctx.args)
    os.execv(argv[0], argv)


@app.command()
def health(
    ready: Annotated[
        bool,
        typer.Option(
            "--ready", help="Readiness: also consuming from the broker, and Redis answers."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was found as JSON.")] = False,
) -> None:
    """Exit 0 while the workers of this machine under FARM_STATE_DIR run and their event loops
    beat (a liveness probe: no network call); 1 otherwise."""
    from farm import health as probe
    from farm.embedded import socket_url
    from farm.env import redis_location

    try:
        url, state_dir = redis_location()
    except ValueError as e:
        raise InputError(f"Invalid FARM_* setting: {e}.") from e
    if ready:
        verdict = probe.readiness(state_dir, url or socket_url(state_dir))
    else:
        verdict = probe.liveness(state_dir)
    if as_json:
        terminal.line(json.dumps(verdict.as_dict()))
    else:
        for w in verdict.workers:
            state = "consuming" if w.ready else "not consuming"
            terminal.line(
                f"{w.name} (pid {w.pid}): beat {w.beat_age_s:.1f} s ago "
                f"(stale after {w.stale_after_s:g} s), {state}"
            )
    if not verdict.ok:
        raise typer.Exit(_fail(f"Not {'ready' if ready else 'live'}: {verdict.why}."))
    if not as_json:
        terminal.say(f"{'Ready' if ready else 'Live'}: {verdict.why}.")


def _names_itself(args: Sequence[str]) -> bool:
    """Whether Celery's options name the worker (-n NAME, -nNAME, --hostname[=]NAME)."""
    return any(a == "-n" or a.startswith(("-n", "--hostname")) for a in args)


@app.command("workers")
def list_workers(as_json: JsonOption = False) -> None:
    """The live workers: name, host, pid, slots, the keys they build, heartbeat age, version.

    A worker drops off within a few heartbeats of dying (FARM_WORKER_HEARTBEAT_S x 3 + 1 s)."""
    rows = _light_registry().workers()
    if as_json:
        for row in rows:
            terminal.line(json.dumps(row, separators=(",", ":")))
        return
    table = [("NAME", "HOST", "PID", "SLOTS", "BUSY", "HEARTBEAT", "VERSION", "BUILDING")]
    for row in rows:
        busy = row.get("busy") or []
        table.append(
            (
                row["name"],
                str(row.get("host", "?")),
                str(row.get("pid", "?")),
                str(row.get("slots", "?")),
                str(len(busy)),
                f"{row['heartbeat_age_s']:.1f}s ago",
                str(row.get("version", "?")),
                ",".join(k[:16] for k in busy) or "-",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    for r in table:
        terminal.line("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]))
    busy_slots = sum(len(r.get("busy") or []) for r in rows)
    slots = sum(int(r.get("slots") or 0) for r in rows)
    terminal.say(f"{len(rows)} worker(s), {busy_slots} of {slots} slot(s) busy.")


@app.command("metrics")
def metrics(
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            metavar="HOST:PORT",
            help="Serve /metrics there instead of printing once (PORT alone: 127.0.0.1).",
        ),
    ] = None,
) -> None:
    """The farm's metrics in the Prometheus text format: keys queued and building, records by
    status, workers and slots, builds, durations, bytes published (see the README)."""
    from farm import metrics as farm_metrics

    registry = _light_registry()
    if listen is None:
        sys.stdout.write(farm_metrics.render(registry))
        return
    host, port = farm_metrics.parse_listen(listen)
    server = farm_metrics.serve(registry, host, port)
    terminal.say(
        f"Serving the farm's metrics at http://{farm_metrics.url_host(host)}:{port}/metrics"
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()


@server_app.command(
    "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def server_run(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="TCP port.")] = 6379,
    bind: Annotated[str, typer.Option(help="Addresses to listen on.")] = "127.0.0.1",
    data_dir: Annotated[
        Path, typer.Option("--dir", help="Where the append-only file goes.")
    ] = Path("."),
) -> None:
    """Run a Redis server in the foreground, with an append-only file, for a Procfile or a
    container: redis-server from PATH, else the one gvl-farm ships (extra options go to it)."""
    from farm import embedded

    binary = embedded.server_binary()
    argv = [binary, "--port", str(port), "--bind", *bind.split(), "--appendonly", "yes"]
    argv += ["--dir", str(data_dir), *ctx.args]
    os.execv(binary, argv)


@server_app.command("start")
def server_start() -> None:
    """Start the embedded Redis and worker if they are not running; print the Redis URL."""
    from farm import embedded

    settings = _settings()
    url = embedded.ensure_server(settings.state_dir)
    embedded.ensure_worker(settings)
    terminal.line(url)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the embedded worker (a running build is handed back), then the embedded Redis."""
    from farm import embedded

    settings = _settings()
    state = settings.state_dir
    worker = embedded.stop_worker(state, timeout_s=settings.stop_grace_s + 10.0)
    server = embedded.stop_server(state)
    stopped = [f"the embedded worker (pid {worker})"] if worker else []
    if server:
        stopped.append(f"the embedded Redis (pid {server}, {embedded.socket_url(state)})")
    if stopped:
        terminal.say(f"Stopped {' and '.join(stopped)}.")
    else:
        terminal.say(f"Nothing to stop: the embedded Redis and worker of {state} were not running.")


def _show_warning(
    message: Warning | str, category: type[Warning], *_: object, **__: object
) -> None:
    """Warnings the farm raises for API users are one line, yellow on a terminal."""
    terminal.say(f"warning: {message}", warning=True)


def _for_this_farm(error: FarmError) -> str:
    """The sentence for ``error``; on the embedded default, a lost Redis is the embedded one,
    not a FARM_REDIS_URL the user never set."""
    from farm.env import redis_location
    from farm.errors import BrokerError

    try:
        configured = redis_location()[0] is not None
    except ValueError:
        configured = True
    if not isinstance(error, BrokerError) or configured:
        return str(error)
    cause = f" ({error.__cause__})" if error.__cause__ else ""
    return (
        f"Lost the embedded Redis{cause}; run the command again (it starts the server anew), "
        "or `farm server stop` first if it keeps failing."
    )


def main(argv: Sequence[str] | None = None) -> None:
    warnings.showwarning = _show_warning
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as e:
        # typer turns a Ctrl-C in a command into exit 130, silently; ours say what stopped.
        if e.code == EXIT_INTERRUPTED and not terminal.said_anything():
            terminal.say("Interrupted.")
        raise
    except FarmError as e:
        sys.exit(_fail(_for_this_farm(e)))
    except KeyboardInterrupt:
        terminal.say("Interrupted.")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        pydantic = sys.modules.get("pydantic")  # only a loaded pydantic can have raised
        if pydantic is None or not isinstance(e, pydantic.ValidationError):
            raise
        from farm.requests import describe

        sys.exit(_fail(f"Invalid request: {describe(e)}."))


if __name__ == "__main__":
    main()
