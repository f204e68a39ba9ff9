"""A dataset's interval tracks, in genvarloader 0.43.1's struct-of-arrays layout (format 2.0).

Each track is a directory of four headerless arrays: ``starts.npy`` and ``ends.npy`` (int32),
``values.npy`` (float32) and ``offsets.npy`` (int64, one more than the cells). Cells are
region-major over the dataset's sorted, jittered (and deletion-extended) region windows:
``region * n_samples + sample`` for a per-sample track (``intervals/NAME/``), ``region`` for an
annotation track (``annot_intervals/NAME/``).

What a window holds, as genvarloader writes it: for bigWigs, every record with
``start < min(end, contig length)`` and ``end > max(start, 0)``, clipped to the window, in file
order; for an annotation table (BED-like, score in column 5), every row overlapping the window,
unclipped, by start. A track with no interval at all gets one padding entry that no offset
reaches, because genvarloader cannot map an empty file (its own writer leaves it empty and
then cannot open the dataset).

Regions are taken a chunk at a time, every sample's bigWig open at once, so memory is bounded
by one chunk's intervals whatever the track's size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from farm.artifacts.dataset.bigwig import BigWig, ragged_index
from farm.artifacts.dataset.rawfile import RawWriter
from farm.errors import InputError
from farm.progress import NO_PROGRESS, Progress

BIGWIG_MAGIC = (0x888FFC26).to_bytes(4, "little")
_MITO = ("M", "MT", "chrM", "chrMT")
_CHUNK = 256  # regions per pass over the samples' files
FILES = ("starts.npy", "ends.npy", "values.npy", "offsets.npy")


@dataclass(frozen=True)
class Windows:
    """The dataset's region windows in stored order: contig name as in the BED, start, end."""

    contigs: list[str]
    starts: NDArray[np.int64]
    ends: NDArray[np.int64]

    @property
    def n(self) -> int:
        return len(self.starts)


def file_contig(name: str, available: Mapping[str, int] | set[str]) -> str | None:
    """A file's name for a BED contig: as spelled, with "chr" added or removed, or another
    spelling of the mitochondrion (M, MT, chrM, chrMT), as genvarloader matches them."""
    if name in available:
        return name
    alias = name[3:] if name.startswith("chr") else f"chr{name}"
    if alias in available:
        return alias
    if name in _MITO:
        return next((m for m in _MITO if m in available), None)
    return None


def is_bigwig(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == BIGWIG_MAGIC
    except OSError:
        return False


def check_track_source(
    name: str, source: Mapping[str, Path] | Path, contigs: list[str], *, annotation: bool = False
) -> list[str]:
    """One sentence for a track file that is missing, unreadable, of mixed kinds, or a bigWig
    that lacks a BED contig (tables may lack contigs: those cells are empty, as in gvl.write).
    Returns the track's samples."""
    if isinstance(source, Path):  # one long-form table, samples in its sample_id column
        _exists(source, f"track {name!r}")
        samples = table_samples(source)
        if not samples:
            raise InputError(f"Interval table {source} of track {name!r} has no rows; fill it.")
        return samples
    bigwigs = {sample: is_bigwig(path) for sample, path in source.items()}
    if not annotation and len(set(bigwigs.values())) > 1:
        raise InputError(
            f"Track {name!r} mixes bigWigs and tables; give every sample the same kind of file."
        )
    for sample, path in sorted(source.items()):
        of = f"track {name!r}" + (f" (sample {sample})" if sample else "")
        _exists(path, of)
        if not bigwigs[sample]:
            read_table(path) if annotation else read_sample_tables(path, long_form=False)
            continue
        with BigWig(path) as bw:
            lacking = [c for c in contigs if file_contig(c, bw.chroms) is None]
        if lacking:
            raise InputError(
                f"bigWig {path} of {of} has no contig {lacking[0]} that the BED names; drop "
                "those regions or use a bigWig of the same genome."
            )
    return sorted(source)


def _exists(path: Path, of: str) -> None:
    if not path.is_file():
        raise InputError(f"File {path} of {of} is missing or not a file; check the path.")


def write_track(
    out_dir: Path,
    windows: Windows,
    source: Mapping[str, Path] | Path,
    samples: list[str],
    progress: Progress = NO_PROGRESS,
) -> dict[str, str]:
    """A per-sample track from bigWigs, per-sample tables or one long-form table."""
    if isinstance(source, Path):
        tables = read_sample_tables(source, long_form=True)
        return write_table_track(out_dir, windows, [tables[s] for s in samples], progress)
    paths = [source[s] for s in samples]
    if all(is_bigwig(p) for p in paths):
        return write_bigwig_track(out_dir, windows, paths, progress)
    tables = [read_sample_tables(p, long_form=False)[""] for p in paths]
    return write_table_track(out_dir, windows, tables, progress)


def write_annotation(
    out_dir: Path, windows: Windows, path: Path, progress: Progress = NO_PROGRESS
) -> dict[str, str]:
    """An annotation track from a bigWig or a BED5 table."""
    if is_bigwig(path):
        return write_bigwig_track(out_dir, windows, [path], progress)
    return write_table_track(out_dir, windows, [read_table(path)], progress)


def write_bigwig_track(
    out_dir: Path, windows: Windows, paths: list[Path], progress: Progress = NO_PROGRESS
) -> dict[str, str]:
    """Write one track from bigWigs (one per sample, in dataset order; one for an annotation
    track) into the new directory ``out_dir``; return each file's checksum by name."""
    out_dir.mkdir(parents=True)
    with ExitStack() as stack:
        files = [stack.enter_context(BigWig(p)) for p in paths]
        # Most of the time is zlib, which lets go of the GIL: read the files side by side.
        pool = stack.enter_context(ThreadPoolExecutor(min(len(files), os.cpu_count() or 1)))
        out = _Track(out_dir)
        try:
            for lo in range(0, windows.n, _CHUNK):
                hi = min(lo + _CHUNK, windows.n)
                per_file = list(
                    pool.map(
                        _window_intervals,
                        files,
                        paths,
                        [windows] * len(files),
                        [lo] * len(files),
                        [hi] * len(files),
                    )
                )
                out.add_chunk(per_file)
                progress.advance(hi - lo)
        finally:
            sums = out.close()
    return sums


def write_table_track(
    out_dir: Path,
    windows: Windows,
    tables: list[IntervalTable],
    progress: Progress = NO_PROGRESS,
) -> dict[str, str]:
    """Write one track from interval tables (one per sample, in dataset order; one for an
    annotation track) into the new directory ``out_dir``."""
    out_dir.mkdir(parents=True)
    out = _Track(out_dir)
    try:
        for lo in range(0, windows.n, _CHUNK):
            hi = min(lo + _CHUNK, windows.n)
            out.add_chunk([table.overlapping(windows, lo, hi) for table in tables])
            progress.advance(hi - lo)
    finally:
        sums = out.close()
    return sums


Intervals = tuple[NDArray[np.int64], NDArray[np.int32], NDArray[np.int32], NDArray[np.float32]]


def _window_intervals(bw: BigWig, path: Path, windows: Windows, lo: int, hi: int) -> Intervals:
    """(counts, starts, ends, values) of windows ``lo:hi`` from one bigWig, window by window."""
    parts: list[Intervals] = []
    i = lo
    while i < hi:  # runs of one contig (windows are sorted by contig)
        j = i + 1
        while j < hi and windows.contigs[j] == windows.contigs[i]:
            j += 1
        contig = file_contig(windows.contigs[i], bw.chroms)
        if contig is None:  # checked before the build; a file swapped since fails here
            raise InputError(
                f"bigWig {path} has no contig {windows.contigs[i]}; use a bigWig of the "
                "same genome."
            )
        parts.append(bw.intervals(contig, windows.starts[i:j], windows.ends[i:j]))
        i = j
    return _concat(parts)


def _concat(parts: list[Intervals]) -> Intervals:
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))  # type: ignore[return-value]


class _Track:
    """The four files of a track, filled a chunk of regions at a time."""

    def __init__(self, out_dir: Path) -> None:
        self._out = {name: RawWriter(out_dir / name) for name in FILES}
        self._total = 0
        self._out["offsets.npy"].write(np.zeros(1, np.int64))

    def add_chunk(self, per_file: list[Intervals]) -> None:
        """Interleave the files' intervals region-major: region r, file 0..S-1, region r+1..."""
        counts = np.stack([p[0] for p in per_file], axis=1)  # (regions, files)
        sizes = counts.sum(axis=0)
        base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        within = np.cumsum(counts, axis=0) - counts  # first index of each region in its file
        first = (within + base).ravel()
        flat = counts.ravel()
        take = ragged_index(first, flat)
        for name, k in (("starts.npy", 1), ("ends.npy", 2), ("values.npy", 3)):
            column = (
                np.concatenate([p[k] for p in per_file]) if len(per_file) > 1 else per_file[0][k]
            )
            self._out[name].write(column[take])
        self._out["offsets.npy"].write(self._total + np.cumsum(flat))
        self._total += int(flat.sum())

    def close(self) -> dict[str, str]:
        if self._total == 0:
            for name, dtype in (("starts.npy", np.int32), ("ends.npy", np.int32)):
                self._out[name].write(np.zeros(1, dtype))
            self._out["values.npy"].write(np.zeros(1, np.float32))
        return {name: writer.close() for name, writer in self._out.items()}


Rows = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]


@dataclass(frozen=True)
class IntervalTable:
    """One sample's (or an annotation's) intervals by contig, sorted by start; ties keep the
    file's order (genvarloader's sort does not promise any)."""

    path: Path
    by_contig: dict[str, Rows]

    def overlapping(self, windows: Windows, lo: int, hi: int) -> Intervals:
        """Rows overlapping each window, unclipped, as genvarloader writes tables."""
        counts = np.zeros(hi - lo, np.int64)
        starts: list[NDArray[np.int64]] = []
        ends: list[NDArray[np.int64]] = []
        values: list[NDArray[np.float32]] = []
        for k, i in enumerate(range(lo, hi)):
            contig = file_contig(windows.contigs[i], self.by_contig)
            if contig is None:  # a table without the contig: nothing there, as in gvl
                continue
            s, e, v = self.by_contig[contig]
            qs, qe = max(int(windows.starts[i]), 0), int(windows.ends[i])
            stop = int(np.searchsorted(s, qe, "left"))
            hit = np.flatnonzero(e[:stop] > qs)
            counts[k] = len(hit)
            starts.append(s[hit])
            ends.append(e[hit])
            values.append(v[hit])
        if not starts:
            return counts, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
        return (
            counts,
            np.concatenate(starts).astype(np.int32),
            np.concatenate(ends).astype(np.int32),
            np.concatenate(values),
        )


def _by_contig(
    path: Path, chrom: NDArray[np.object_], starts: NDArray[np.int64], ends: NDArray[np.int64],
    values: NDArray[np.float32],
) -> IntervalTable:  # fmt: skip
    by_contig = {}
    for contig in dict.fromkeys(chrom.tolist()):
        rows = np.flatnonzero(chrom == contig)
        order = rows[np.argsort(starts[rows], kind="stable")]
        by_contig[contig] = (starts[order], ends[order], values[order])
    return IntervalTable(path, by_contig)


def read_table(path: Path) -> IntervalTable:
    """An annotation table: chrom, chromStart, chromEnd, name, score (BED5+), plain or gzipped."""
    from farm.artifacts.dataset.regions import read_bed

    regions = read_bed(path, strand_column=0)
    names = regions.columns.column_names
    score = regions.columns.column("score") if "score" in names else None
    if score is None or not (score.type.equals("double") or score.type.equals("int64")):
        raise InputError(
            f"Annotation table {path} has no numeric score in column 5; give it BED5 rows "
            "(chrom, start, end, name, score) or pass a bigWig."
        )
    scores = score.to_numpy(zero_copy_only=False).astype(np.float32)
    chrom = np.asarray(regions.chrom, dtype=object)
    return _by_contig(path, chrom, regions.starts, regions.ends, scores)


SAMPLE_TABLE_COLUMNS = ("chrom", "start", "end", "value")


def read_sample_tables(path: Path, *, long_form: bool) -> dict[str, IntervalTable]:
    """Interval tables as ``gvl.Table`` reads them (.csv, .tsv/.txt, .parquet, .arrow/.ipc):
    one long-form file with a ``sample_id`` column, or one sample's file (key "")."""
    frame = _read_frame(path)
    wanted = (("sample_id",) if long_form else ()) + SAMPLE_TABLE_COLUMNS
    if missing := [c for c in wanted if c not in frame.column_names]:
        raise InputError(
            f"Interval table {path} has no column {missing[0]}; give it the columns "
            f"{', '.join(wanted)}."
        )
    try:
        chrom = np.asarray(frame.column("chrom").cast("string").to_pylist(), dtype=object)
        starts = frame.column("start").cast("int64").to_numpy()
        ends = frame.column("end").cast("int64").to_numpy()
        values = frame.column("value").cast("float64").to_numpy().astype(np.float32)
        samples = (
            np.asarray(frame.column("sample_id").cast("string").to_pylist(), dtype=object)
            if long_form
            else None
        )
    except (ValueError, TypeError, pa.ArrowException) as e:
        raise InputError(
            f"Interval table {path} has a value of the wrong type or a missing value ({e}); "
            "give integer start and end and a number as value on every row."
        ) from e
    if samples is None:
        return {"": _by_contig(path, chrom, starts, ends, values)}
    tables = {}
    for sample in sorted(set(samples.tolist())):
        rows = samples == sample
        tables[sample] = _by_contig(path, chrom[rows], starts[rows], ends[rows], values[rows])
    return tables


def table_samples(path: Path) -> list[str]:
    """The samples of a long-form table, reading its ``sample_id`` column only: checking a
    request should not read every interval (the build reads them, and checks the rest)."""
    if "sample_id" not in _read_frame(path, schema_only=True).column_names:
        raise InputError(
            f"Interval table {path} has no column sample_id; give it the columns sample_id, "
            f"{', '.join(SAMPLE_TABLE_COLUMNS)}."
        )
    column = _read_frame(path, columns=["sample_id"]).column("sample_id")
    return sorted({str(s) for s in column.to_pylist() if s is not None})


def _read_frame(
    path: Path, columns: list[str] | None = None, *, schema_only: bool = False
) -> pa.Table:
    """A table as ``gvl.Table`` reads it; ``columns``: only those; ``schema_only``: no rows."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            import pyarrow.csv as csv

            delimiter = "," if suffix == ".csv" else "\t"
            parse = csv.ParseOptions(delimiter=delimiter)
            if schema_only:
                with csv.open_csv(path, parse_options=parse) as reader:
                    return reader.schema.empty_table()
            return csv.read_csv(
                path,
                parse_options=parse,
                convert_options=csv.ConvertOptions(include_columns=columns),
            )
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            if schema_only:
                return pq.read_schema(path).empty_table()
            return pq.read_table(path, columns=columns)
        if suffix in (".arrow", ".ipc", ".feather"):
            import pyarrow.feather as feather

            if schema_only:
                return feather.read_table(path, columns=[], memory_map=True)
            return feather.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"Interval table {path} cannot be read ({e}); check its format.") from e
    raise InputError(
        f"Interval table {path} is not .csv, .tsv, .txt, .parquet or .arrow; pass one of those."
    )
