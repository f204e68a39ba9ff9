"""Benchmark the farm's numpy bigWig reader against pyBigWig for a dataset's track reads.

Run: ``python bench/bench_bigwig.py [--files 50] [--windows 200] [--repeats 5]``.
Makes ``--files`` bigWigs over one 5 Mb contig (about one record per 50 bp, random values)
with pyBigWig in a temporary directory, then reads ``--windows`` windows of 5 kb from every
file: once with ``BigWig.intervals`` (one call per file), once with pyBigWig's
``intervals(chrom, start, end)`` per window turned into numpy arrays and clipped to the window.
Both sides open and close every file inside the timing; the outputs are asserted equal. Times
are the median of ``--repeats`` runs on a warm page cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyBigWig

from farm.artifacts.dataset.bigwig import BigWig

CHROM = "chr1"
LENGTH = 5_000_000
WIDTH = 5_000

Result = list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def make_files(root: Path, count: int, seed: int = 0) -> list[Path]:
    """Sorted, non-overlapping records: gaps of 20-80 bp, each record filling part of one."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        gaps = rng.integers(20, 81, LENGTH // 50 + 1000)
        starts = np.cumsum(gaps) - gaps[0]
        starts = starts[starts < LENGTH - 100]
        ends = starts + rng.integers(1, gaps[1 : len(starts) + 1] + 1)  # up to the next start
        values = rng.normal(size=len(starts)).astype(np.float32)
        path = root / f"sample{i:03d}.bw"
        with pyBigWig.open(str(path), "w") as bw:
            bw.addHeader([(CHROM, LENGTH)])
            bw.addEntries(
                [CHROM] * len(starts), starts.tolist(), ends=ends.tolist(), values=values.tolist()
            )
        paths.append(path)
    return paths


def farm_read(paths: list[Path], starts: np.ndarray, ends: np.ndarray) -> Result:
    out = []
    for path in paths:
        with BigWig(path) as bw:
            out.append(bw.intervals(CHROM, starts, ends))
    return out


def farm_read_threaded(
    paths: list[Path], starts: np.ndarray, ends: np.ndarray, pool: ThreadPoolExecutor
) -> Result:
    """One file per task: zlib releases the GIL, so decompression runs in parallel."""

    def one(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        with BigWig(path) as bw:
            return bw.intervals(CHROM, starts, ends)

    return list(pool.map(one, paths))


def pybigwig_read(paths: list[Path], starts: np.ndarray, ends: np.ndarray) -> Result:
    out = []
    for path in paths:
        counts, s_parts, e_parts, v_parts = [], [], [], []
        with pyBigWig.open(str(path)) as bw:
            for qs, qe in zip(starts.tolist(), ends.tolist(), strict=True):
                got = np.array(bw.intervals(CHROM, qs, qe) or (), np.float64).reshape(-1, 3)
                counts.append(len(got))
                s_parts.append(np.maximum(got[:, 0], qs))
                e_parts.append(np.minimum(got[:, 1], qe))
                v_parts.append(got[:, 2])
        out.append(
            (
                np.array(counts, np.int64),
                np.concatenate(s_parts).astype(np.int32),
                np.concatenate(e_parts).astype(np.int32),
                np.concatenate(v_parts).astype(np.float32),
            )
        )
    return out


def median_time(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: page cache and first-touch allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    rng = np.random.default_rng(1)
    starts = rng.integers(0, LENGTH - WIDTH, args.windows).astype(np.int64)
    ends = starts + WIDTH
    with tempfile.TemporaryDirectory(prefix="bench_bigwig.") as tmp:
        t0 = time.perf_counter()
        paths = make_files(Path(tmp), args.files)
        size = sum(p.stat().st_size for p in paths) / 1e6
        print(f"wrote {args.files} bigWigs ({size:.1f} MB) in {time.perf_counter() - t0:.1f} s")

        mine, ref = farm_read(paths, starts, ends), pybigwig_read(paths, starts, ends)
        for a, b in zip(mine, ref, strict=True):
            for x, y in zip(a, b, strict=True):
                assert x.dtype == y.dtype and np.array_equal(x, y)
        n = sum(int(c.sum()) for c, *_ in mine)
        print(f"{args.files} files x {args.windows} windows of {WIDTH} bp: {n:,} intervals")

        t_farm = median_time(lambda: farm_read(paths, starts, ends), args.repeats)
        t_ref = median_time(lambda: pybigwig_read(paths, starts, ends), args.repeats)
        threads = os.cpu_count() or 1
        with ThreadPoolExecutor(threads) as pool:
            assert all(
                np.array_equal(x, y)
                for a, b in zip(farm_read_threaded(paths, starts, ends, pool), mine, strict=True)
                for x, y in zip(a, b, strict=True)
            )
            t_pool = median_time(
                lambda: farm_read_threaded(paths, starts, ends, pool), args.repeats
            )
    for label, t in (
        ("BigWig.intervals", t_farm),
        (f"BigWig.intervals, {threads} threads", t_pool),
        ("pyBigWig + numpy clip", t_ref),
    ):
        print(f"{label:32} {t * 1e3:8.1f} ms  {t / n * 1e9:6.1f} ns/interval")
    print(f"speed-up {t_ref / t_farm:.1f}x (one thread), {t_ref / t_pool:.1f}x ({threads} threads)")


if __name__ == "__main__":
    main()
