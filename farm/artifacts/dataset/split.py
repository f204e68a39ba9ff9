"""Regions split across the cores: contiguous runs of the sorted regions, one per process.

Each process after the first is forked once the variant table is in memory (so it shares
the sites, copy-on-write) and writes its runs' variant indices and offsets (counted from 0)
to files of its own; the parent writes the first run straight into the dataset's files, then
appends the others' in order, each offset raised by the variants before it. The result is
byte for byte what one process writes. A process reads only the records of its own windows,
so two of them read no record twice except where their runs' windows meet.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from farm.artifacts.dataset.rawfile import RawWriter
from farm.progress import Progress

# Below this many regions a second process costs more than it saves (fork, merge).
MIN_REGIONS_PER_PART = 64
_COPY = 1 << 20  # entries a merge step reads at a time (8 MB of offsets, and a shifted copy)

# (contig index, table rows) runs, in table order
Runs = list[tuple[int, NDArray[np.intp]]]
# writes the runs' calls to (indices, offsets) from ``total``, reporting each region done to
# the progress given; returns the new total
WriteRuns = Callable[[Runs, RawWriter, RawWriter, int, Progress], int]

_job: tuple[WriteRuns, NDArray[np.int64]] | None = None  # set in the parent before forking
_done: Any = None  # regions done by each forked part (shared memory), set before forking
_POLL_S = 1.0  # how often a parent with nothing of its own left reports the others' regions


class _Counted(Progress):
    """A forked part's progress: regions done, counted in shared memory for the parent,
    which is the only process that reports (it owns the connection to Redis)."""

    def __init__(self, slot: int) -> None:
        self._slot = slot

    def advance(self, n: int) -> None:
        _done[self._slot] += n  # one writer per slot; an aligned int64 store is whole


class _WithParts(Progress):
    """The parent's progress: its own regions, plus the regions the parts counted since the
    last report, so the figure moves while the parts work, not only when they are merged."""

    def __init__(self, progress: Progress, done: Any) -> None:
        self._progress = progress
        self._done = done
        self._seen = [0] * len(done)

    def advance(self, n: int) -> None:
        self._progress.advance(n + self.catch_up())

    def catch_up(self) -> int:
        new = 0
        for slot in range(len(self._seen)):
            now = self._done[slot]
            new += now - self._seen[slot]
            self._seen[slot] = now
        return new

    def settle(self, slot: int, regions: int) -> None:
        """A part is merged: report what of its ``regions`` was not reported yet."""
        self.advance(0)
        self._progress.advance(regions - self._seen[slot])
        self._seen[slot] = regions


def split_runs(runs: Runs, parts: int) -> list[Runs]:
    """``runs`` cut into ``parts`` pieces of about equal numbers of regions, in order."""
    if not runs:
        return []
    cs = np.concatenate([np.full(len(rows), c, np.intp) for c, rows in runs])
    rs = np.concatenate([rows for _, rows in runs])
    out: list[Runs] = []
    for a, b in itertools.pairwise(np.linspace(0, len(cs), parts + 1).astype(int).tolist()):
        c, r = cs[a:b], rs[a:b]
        cuts = [0, *(np.flatnonzero(c[1:] != c[:-1]) + 1).tolist(), len(c)]
        piece = [(int(c[i]), r[i:j]) for i, j in itertools.pairwise(cuts) if j > i]
        if piece:
            out.append(piece)
    return out


def write_split(
    runs: Runs,
    write: WriteRuns,
    table_rows: NDArray[np.int64],
    idx_out: RawWriter,
    off_out: RawWriter,
    workers: int,
    scratch: Path,
    progress: Progress,
) -> int:
    """Write every run's calls into ``idx_out``/``off_out`` on up to ``workers`` processes;
    region ends that deletions extend are written back into ``table_rows``. Returns the
    number of variant indices written.

    Only this process reports progress (a report may go to Redis over a connection that a
    forked process must not touch): its own regions one by one, and the regions the other
    processes count in shared memory, at each of its own and every second while it waits."""
    n = sum(len(rows) for _, rows in runs)
    parts = split_runs(runs, max(1, min(workers, n // MIN_REGIONS_PER_PART)))
    if len(parts) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return write(runs, idx_out, off_out, 0, progress)
    global _job, _done
    ctx = multiprocessing.get_context("fork")
    return_free_memory()  # else each process keeps the allocators' free pages as its own
    _job = (write, table_rows)
    _done = ctx.RawArray("q", len(parts))
    report = _WithParts(progress, _done)
    try:
        with (
            tempfile.TemporaryDirectory(dir=scratch) as tmp,
            ProcessPoolExecutor(len(parts) - 1, mp_context=ctx) as pool,
        ):
            files = [(Path(tmp) / f"{k}.idx", Path(tmp) / f"{k}.off") for k in range(len(parts))]
            try:
                futures = [
                    pool.submit(_part, p, slot, *f)
                    for slot, (p, f) in enumerate(zip(parts[1:], files[1:], strict=True), 1)
                ]
            except (AssertionError, OSError):
                # a daemonic process (a pool worker) may not start children: one process
                return write(runs, idx_out, off_out, 0, progress)
            total = write(parts[0], idx_out, off_out, 0, report)
            for slot, (part, future, (idx_f, off_f)) in enumerate(
                zip(parts[1:], futures, files[1:], strict=True), 1
            ):
                _report_while_waiting(future, report)
                ends, n_idx = future.result()
                rows = np.concatenate([r for _, r in part])
                table_rows[rows, 2] = ends
                _append(idx_f, np.int32, idx_out, 0)
                _append(off_f, np.int64, off_out, total)
                total += n_idx
                report.settle(slot, len(rows))
            return total
    finally:
        _job = _done = None


def return_free_memory() -> None:
    """Give the allocators' free pages back to the system before forking. Reading the
    variant table leaves about 100 MB of them at a million records (glibc's heap behind
    numpy's temporaries, Arrow's pool behind the parsed text): counted in every process's
    memory, and copied into a forked one as soon as either allocates there."""
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # musl has no malloc_trim
            ctypes.CDLL(None).malloc_trim(0)


def _report_while_waiting(future: Future, report: _WithParts) -> None:
    while not future.done():
        wait([future], timeout=_POLL_S, return_when=FIRST_COMPLETED)
        report.advance(0)


def _part(runs: Runs, slot: int, idx_f: Path, off_f: Path) -> tuple[NDArray[np.int64], int]:
    assert _job is not None
    write, table_rows = _job
    idx_out, off_out = RawWriter(idx_f), RawWriter(off_f)
    try:
        n_idx = write(runs, idx_out, off_out, 0, _Counted(slot))
    finally:
        idx_out.close()
        off_out.close()
    rows = np.concatenate([r for _, r in runs])
    return table_rows[rows, 2].copy(), n_idx


def _append(path: Path, dtype: type, out: RawWriter, shift: int) -> None:
    """Copy a part's file into ``out`` a chunk at a time (read, not mapped: mapped pages
    would count in this process's RSS), each entry raised by ``shift``."""
    item = np.dtype(dtype).itemsize
    with open(path, "rb") as f:
        while len(chunk := np.fromfile(f, dtype, _COPY)):
            out.write(chunk + shift if shift else chunk)
    assert os.path.getsize(path) % item == 0
