"""The ``farm`` command: submit, wait on and inspect builds; run workers; keep the registry true.

Every failure a user can fix ends in one sentence on stderr and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from farm import embedded, maintenance, service
from farm.client import NO_WORKER, Farm, NoWorkerWarning
from farm.config import QUEUE, Settings
from farm.errors import BrokerError, FarmError, InputError
from farm.publish import remove_orphans
from farm.registry import ArtifactRecord, Status
from farm.requests import (
    MAX_BATCH,
    MAX_JITTER,
    BuildRequest,
    CacheRequest,
    DatasetRequest,
    describe,
    parse_request,
)

app = typer.Typer(
    name="farm",
    help="Build GenVarLoader caches and datasets once, atomically, through a shared queue.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
build_app = typer.Typer(help="Submit a request and wait until its artifact is valid.")
submit_app = typer.Typer(help="Submit requests without waiting; prints one key a line.")
server_app = typer.Typer(help="The embedded Redis (used when FARM_REDIS_URL is not set).")
app.add_typer(build_app, name="build")
app.add_typer(submit_app, name="submit", invoke_without_command=True)
app.add_typer(server_app, name="server")

# Piped output is not folded at 80 columns: paths stay whole for the next program.
out = Console(width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True, soft_wrap=True, highlight=False)  # one sentence, one line

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130
MAX_MANIFEST_LINE = 64 * 1024  # characters: a request with every sample of a large cohort

DestOption = Annotated[
    Path | None, typer.Option("--dest", help="Where to publish (default: FASTA.gvlfa).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object a line.")]
TimeoutOption = Annotated[
    float | None, typer.Option("--timeout", help="Give up waiting after S seconds.")
]


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        raise InputError(f"Invalid FARM_* setting: {describe(e)}.") from e


@contextmanager
def _farm() -> Iterator[Farm]:
    with Farm.connect(_settings()) as farm:
        yield farm


# --- build -----------------------------------------------------------------------------------


def _build(request: BuildRequest, *, timeout: float | None, inline: bool) -> None:
    settings = _settings()
    with Farm.connect(settings) as farm:
        if inline:
            ctx = service.Context(farm.registry, settings, service.inline_worker_name())
            try:
                record = farm.build_here(request, ctx)
            except KeyboardInterrupt:
                err.print("Cancelled: the build was stopped and nothing was published.")
                raise typer.Exit(EXIT_INTERRUPTED) from None
        else:
            with warnings.catch_warnings():
                # farm build copes with no worker itself (a transient one, or a warning)
                warnings.simplefilter("ignore", NoWorkerWarning)
                submission = farm.submit(request)
            record = submission.record
            if not record.status.terminal:
                record = _follow(farm, settings, submission.key, timeout) or record
    _report_one(record)


def _follow(
    farm: Farm, settings: Settings, key: str, timeout: float | None
) -> ArtifactRecord | None:
    with _worker_if_none(farm, settings) as worker, warnings.catch_warnings():
        warnings.simplefilter("ignore", NoWorkerWarning)  # said once, above
        try:
            (record,) = farm.wait(
                [key], timeout_s=timeout, on_progress=lambda _done, _total: worker.check()
            )
        except KeyboardInterrupt:
            if worker.transient:
                worker.cancel(key)
                err.print("Cancelled: the build was stopped and nothing was published.")
            else:
                err.print(f"Stopped waiting; the build goes on (`farm wait {key}`).")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    return record


class _TransientWorker:
    """A worker started for one build on the embedded default, stopped when it is done."""

    transient = True

    def __init__(self, farm: Farm, settings: Settings) -> None:
        self.farm = farm
        self.log_path = settings.state_dir / f"transient-worker-{os.getpid()}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # No grace: when this command stops it, a build still running is handed back at once.
        env = {**os.environ, "FARM_STOP_GRACE_S": "0"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*_celery_worker_argv(), "--pool", "solo", "-n", f"transient-{os.getpid()}@%h"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches this command, which decides
            )

    def check(self) -> None:
        """Raise if the worker died, so a broken worker cannot leave the build waiting."""
        if self.proc.poll() is not None:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            raise BrokerError(
                f"The worker started for this build exited with code {self.proc.returncode} "
                f"({lines[-1] if lines else 'no output'}); see {self.log_path}."
            )

    def cancel(self, key: str) -> None:
        """Stop the build (its staging is removed) and record that it was cancelled, so no
        later worker builds what the user stopped."""
        self.stop()
        service.cancel(self.farm.registry, key, "the user stopped `farm build`")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.returncode in (0, -signal.SIGTERM):
            self.log_path.unlink(missing_ok=True)  # kept only when there is something to read


class _NoTransientWorker:
    """A worker is already running, or is the user's to start: nothing to stop or cancel."""

    transient = False

    def check(self) -> None:
        pass


@contextmanager
def _worker_if_none(
    farm: Farm, settings: Settings
) -> Iterator[_TransientWorker | _NoTransientWorker]:
    """On the embedded default, a build with no worker around starts one for its duration."""
    if farm.registry.live_workers(within_s=3 * settings.worker_heartbeat_s):
        yield _NoTransientWorker()
        return
    if not settings.embedded:
        err.print(f"[yellow]{NO_WORKER} Waiting.[/]")
        yield _NoTransientWorker()
        return
    worker = _TransientWorker(farm, settings)
    try:
        yield worker
    finally:
        worker.stop()


def _report_one(record: ArtifactRecord) -> None:
    if record.status is Status.VALID:
        out.print(record.dest, highlight=False, soft_wrap=True)
        return
    if record.status.terminal:
        raise typer.Exit(_fail(record.error or f"{record.dest} is {record.status}."))
    err.print(f"Timed out: {record.dest} is still {record.status} (key {record.key}).")
    raise typer.Exit(EXIT_TIMEOUT)


def _fail(sentence: str) -> int:
    err.print(f"[red]error:[/] {sentence}", highlight=False, soft_wrap=True)
    return EXIT_FAILED


@build_app.command("cache")
def build_cache(
    fasta: Annotated[Path, typer.Argument(help="FASTA file (plain, bgzipped or gzipped).")],
    dest: DestOption = None,
    timeout: TimeoutOption = None,
    inline: Annotated[
        bool, typer.Option(help="Build in this process, through the same lease and registry.")
    ] = False,
) -> None:
    """Build (or reuse) the .gvlfa cache of FASTA and print where it is."""
    _build(CacheRequest(fasta=fasta, dest=dest), timeout=timeout, inline=inline)


VariantsOption = Annotated[
    Path, typer.Option("--variants", help="bgzipped+indexed VCF/BCF, or PGEN with .pvar/.psam.")
]
RegionsOption = Annotated[Path, typer.Option("--regions", help="BED of regions.")]
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


def _dataset_request(
    variants: Path,
    regions: Path,
    dest: Path,
    samples: str | None,
    max_jitter: int,
    strand_column: int | None,
) -> DatasetRequest:
    try:
        return DatasetRequest(
            variants=variants,
            regions=regions,
            dest=dest,
            samples=_samples(samples),
            max_jitter=max_jitter,
            strand_column=strand_column,
        )
    except ValidationError as e:
        raise InputError(f"Invalid dataset request: {describe(e)}.") from e


@build_app.command("dataset")
def build_dataset(
    variants: VariantsOption,
    regions: RegionsOption,
    dest: DatasetDestOption,
    samples: SamplesOption = None,
    max_jitter: JitterOption = 0,
    strand_column: StrandOption = None,
    timeout: TimeoutOption = None,
    inline: Annotated[
        bool, typer.Option(help="Build in this process, through the same lease and registry.")
    ] = False,
) -> None:
    """Build (or reuse) a GenVarLoader dataset and print where it is."""
    request = _dataset_request(variants, regions, dest, samples, max_jitter, strand_column)
    _build(request, timeout=timeout, inline=inline)


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
    with _farm() as farm:
        submissions = farm.submit_many(requests)
    for s in submissions:
        print(s.key)


def _read_manifest(path: Path) -> Iterator[BuildRequest]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise InputError(f"Cannot read manifest {path} ({e.strerror}); check the path.") from e
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(line) > MAX_MANIFEST_LINE:
            raise InputError(
                f"Manifest {path} line {number} is {len(line):,} characters long, over the "
                f"limit of {MAX_MANIFEST_LINE:,}; one request a line. Nothing was submitted."
            )
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


@submit_app.command("cache")
def submit_cache(
    fasta: Annotated[Path, typer.Argument(help="FASTA file.")],
    dest: DestOption = None,
) -> None:
    """Submit the cache of FASTA; print its key."""
    with _farm() as farm:
        print(farm.submit(CacheRequest(fasta=fasta, dest=dest)).key)


@submit_app.command("dataset")
def submit_dataset(
    variants: VariantsOption,
    regions: RegionsOption,
    dest: DatasetDestOption,
    samples: SamplesOption = None,
    max_jitter: JitterOption = 0,
    strand_column: StrandOption = None,
) -> None:
    """Submit a dataset build; print its key."""
    request = _dataset_request(variants, regions, dest, samples, max_jitter, strand_column)
    with _farm() as farm:
        print(farm.submit(request).key)


# --- status / wait / ls ----------------------------------------------------------------------


def _record_json(key: str, record: ArtifactRecord | None) -> dict:
    if record is None:
        return {"key": key, "kind": None, "status": "unknown", "dest": None}
    data = record.model_dump(mode="json")
    if record.error is None:
        data.pop("error")
    return data


def _full_keys(farm: Farm, keys: Sequence[str]) -> list[str]:
    """Whole keys for what the user typed: a unique prefix stands for its key; an ambiguous
    one is refused; one that matches nothing is kept (and reported unknown)."""
    full = []
    for key in keys:
        if len(key) >= 64 or not key:
            full.append(key)
            continue
        matches = farm.registry.keys_with_prefix(key)
        if len(matches) > 1:
            raise InputError(
                f"Key prefix {key} matches more than one key ({matches[0]}, {matches[1]}...); "
                "give more of it."
            )
        full.append(matches[0] if matches else key)
    return full


@app.command()
def status(
    keys: Annotated[list[str], typer.Argument(help="Keys printed by `farm submit` (or prefixes).")],
    as_json: JsonOption = False,
) -> None:
    """Show the status of keys (one round trip for all of them); exit 1 if any is unknown."""
    with _farm() as farm:
        keys = _full_keys(farm, keys)
        records = farm.status(keys)
    if as_json:
        for key, record in zip(keys, records, strict=True):
            print(json.dumps(_record_json(key, record)))
    else:
        _print_table(keys, records)
    if any(r is None for r in records):
        raise typer.Exit(EXIT_FAILED)


def _print_table(keys: Sequence[str], records: Sequence[ArtifactRecord | None]) -> None:
    """Keys cut to 16 characters for a person at a terminal (any unique prefix works as a
    key); whole when piped, for the next program."""
    width = 16 if out.is_terminal else None
    table = Table("key", "kind", "status", box=None, pad_edge=False)
    table.add_column("dest", overflow="fold")
    table.add_column("detail", overflow="fold")
    colors = {Status.VALID: "green", Status.FAILED: "red", Status.INVALID: "red"}
    for key, r in zip(keys, records, strict=True):
        if r is None:
            table.add_row(key[:width], "-", "unknown", "-", "no such key")
            continue
        color = colors.get(r.status, "yellow")
        detail = r.error or (f"{r.size_bytes:,} B" if r.size_bytes is not None else "")
        table.add_row(r.key[:width], r.kind, f"[{color}]{r.status}[/]", r.dest, detail)
    out.print(table, soft_wrap=True)


@app.command()
def wait(
    keys: Annotated[list[str], typer.Argument(help="Keys printed by `farm submit`.")],
    timeout: TimeoutOption = None,
) -> None:
    """Wait until every key is terminal; exit 0 only when all are valid."""
    with _farm() as farm, _progress(len(keys)) as update:
        keys = _full_keys(farm, keys)
        try:
            records = farm.wait(keys, timeout_s=timeout, on_progress=update)
        except KeyboardInterrupt:
            err.print("Stopped waiting; the builds go on (`farm wait` again to follow them).")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    bad = [(k, r) for k, r in zip(keys, records, strict=True) if r is None or r.status != "valid"]
    for key, r in bad:
        if r is None:
            err.print(f"{key}: unknown key")
        elif r.status.terminal:
            err.print(f"{key}: {r.status}: {r.error or r.dest}", highlight=False, soft_wrap=True)
        else:
            err.print(f"{key}: still {r.status} (timed out): {r.dest}", highlight=False)
    if bad:
        timed_out = any(r is not None and not r.status.terminal for _, r in bad)
        raise typer.Exit(EXIT_TIMEOUT if timed_out else EXIT_FAILED)


@contextmanager
def _progress(total: int) -> Iterator:
    if total < 2 or not err.is_terminal:
        yield None
        return
    columns = (TextColumn("waiting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("wait", total=total)
        yield lambda done, _total: progress.update(task, completed=done)


def _print_records(records: Sequence[ArtifactRecord], *, as_json: bool) -> None:
    if as_json:
        for r in records:
            print(json.dumps(_record_json(r.key, r)))
    else:
        _print_table([r.key for r in records], records)


@app.command("ls")
def list_artifacts(as_json: JsonOption = False) -> None:
    """List recorded artifacts and their validity."""
    with _farm() as farm:
        records = list(farm.registry.records())
    _print_records(records, as_json=as_json)


# --- maintenance -----------------------------------------------------------------------------


@app.command()
def verify(
    keys: Annotated[list[str] | None, typer.Argument(help="Keys to verify (default: all).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-check recorded artifacts against their sources and bytes; exit 1 if any is not valid."""
    with _farm() as farm:
        full = _full_keys(farm, keys) if keys else None
        unknown = [k for k, r in zip(full or [], farm.status(full or []), strict=True) if not r]
        checked = maintenance.verify(farm.registry, full)
    _print_records(checked, as_json=as_json)
    for key in unknown:
        err.print(f"{key}: unknown key")
    if unknown or any(r.status is not Status.VALID for r in checked):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def reindex(
    root: Annotated[Path, typer.Argument(help="Directory to scan for artifacts.")],
    as_json: JsonOption = False,
) -> None:
    """Rebuild registry records from the artifacts on disk below ROOT."""
    if not root.is_dir():
        raise InputError(f"{root} is not a directory; name the directory to scan.")
    with _farm() as farm:
        records = maintenance.reindex(farm.registry, root)
    _print_records(records, as_json=as_json)


@app.command("gc")
def collect_garbage(
    roots: Annotated[
        list[Path] | None, typer.Argument(help="Directories to sweep (default: allowed roots).")
    ] = None,
    grace: Annotated[
        float, typer.Option(help="Seconds before another host's leaseless dir is an orphan.")
    ] = 3600.0,
    dry_run: Annotated[bool, typer.Option(help="List orphans without removing them.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove staging and aside directories left by builders that died."""
    settings = _settings()
    with Farm.connect(settings) as farm:
        orphans = maintenance.gc(
            farm.registry, roots or settings.roots, grace_s=grace, allowed=settings.roots
        )
    if not dry_run:
        remove_orphans(orphans)
    done = "would remove" if dry_run else "removed"
    for o in orphans:
        if as_json:
            print(json.dumps({"path": str(o.path), "action": done, "reason": o.reason}))
        else:
            print(f"{done} {o.path} ({o.reason})")


# --- processes -------------------------------------------------------------------------------


def _celery_worker_argv() -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", QUEUE]


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    autoscale: Annotated[
        str | None, typer.Option(help="MAX,MIN worker processes (Celery --autoscale).")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run a Celery worker on the farm's queue (extra options go to Celery)."""
    _settings()  # a bad FARM_* setting is one sentence here, not a traceback from Celery
    argv = [*_celery_worker_argv(), "--loglevel", loglevel]
    if autoscale:
        argv += ["--autoscale", autoscale]
    argv += list(ctx.args)
    os.execv(argv[0], argv)


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
    binary = embedded.server_binary()
    argv = [binary, "--port", str(port), "--bind", *bind.split(), "--appendonly", "yes"]
    argv += ["--dir", str(data_dir), *ctx.args]
    os.execv(binary, argv)


@server_app.command("start")
def server_start() -> None:
    """Start the embedded Redis if it is not running; print its URL."""
    print(embedded.ensure_server(_settings().state_dir))


@server_app.command("stop")
def server_stop() -> None:
    """Stop the embedded Redis."""
    if not embedded.stop_server(_settings().state_dir):
        err.print("The embedded Redis was not running.")


def _show_warning(
    message: Warning | str, category: type[Warning], *_: object, **__: object
) -> None:
    """Warnings the farm raises for API users are one yellow line on a terminal."""
    err.print(f"[yellow]{message}[/]")


def main(argv: Sequence[str] | None = None) -> None:
    warnings.showwarning = _show_warning
    try:
        app(args=argv, standalone_mode=True)
    except FarmError as e:
        sys.exit(_fail(str(e)))
    except ValidationError as e:  # a request built from the command line's values
        sys.exit(_fail(f"Invalid request: {describe(e)}."))
    except KeyboardInterrupt:
        err.print("Interrupted.")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
