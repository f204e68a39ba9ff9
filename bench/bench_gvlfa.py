"""Benchmark the farm's .gvlfa build against GenVarLoader's own builder and against ``cp``.

Run: ``python bench/bench_gvlfa.py [--workdir DIR] [--size-mb 300] [--contigs 25]``.
The synthetic FASTA is kept in the work directory and reused by later runs. Every build reads
a warm page cache and each timing starts after ``sync``, so the figures compare CPU work on
the same I/O budget; ``cp`` of the same file is the I/O limit. Throughput is MB (10^6 bytes)
of input FASTA per second, median of ``--repeats`` runs. The farm's publish (fsync of the
cache and its directory, which waits for the disk) is timed separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

LINE = 60
_CHUNK_LINES = 1 << 16


def make_fasta(path: Path, *, size_mb: int, contigs: int, seed: int = 0) -> None:
    """Mixed-case ACGTN in 60-column lines, written a few MB at a time."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"ACGTacgtNnAC", np.uint8)
    per_contig = size_mb * 10**6 // contigs // (LINE + 1) * LINE
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        for i in range(contigs):
            f.write(f">chr{i + 1} synthetic contig {i + 1}\n".encode())
            left = per_contig + i * 7  # uneven lengths: short last lines
            while left:
                n = min(left, _CHUNK_LINES * LINE)
                seq = alphabet[rng.integers(0, len(alphabet), n)]
                pad = (-n) % LINE
                rows = np.concatenate([seq, np.zeros(pad, np.uint8)]).reshape(-1, LINE)
                body = np.concatenate([rows, np.full((len(rows), 1), 10, np.uint8)], axis=1)
                raw = body.tobytes()
                f.write(raw[: len(raw) - pad - 1] + b"\n" if pad else raw)
                left -= n
    tmp.rename(path)


def timed(run: Callable[[], object], reset: Callable[[], object], repeats: int) -> list[float]:
    times = []
    reset()
    run()  # untimed warm-up: first touches of fresh page-cache memory cost extra in a VM
    for _ in range(repeats):
        reset()
        os.sync()  # start each run with no dirty pages from the last one
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    reset()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gvlfa-bench")
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--contigs", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="farm build threads")
    args = parser.parse_args()

    os.environ.setdefault("TQDM_DISABLE", "1")  # GenVarLoader's progress bar is not the work
    import pysam
    from genvarloader import _fasta_cache as gvl_cache

    from farm.artifacts import gvlfa
    from farm.publish import Owner, fsync_tree

    if args.threads:
        gvlfa._build_threads = lambda: args.threads  # a bench knob, not an API
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    fasta = work / f"synthetic_{args.size_mb}mb_{args.contigs}c.fa"
    if not fasta.exists():
        print(f"writing {fasta} ...", flush=True)
        make_fasta(fasta, size_mb=args.size_mb, contigs=args.contigs)
    if not Path(str(fasta) + ".fai").exists():
        pysam.faidx(str(fasta))  # GenVarLoader's build needs it; index once, outside timing
    size = fasta.stat().st_size
    with open(fasta, "rb") as f:  # warm the page cache
        while f.read(16 << 20):
            pass

    out = work / "out"
    farm_dest = work / "farm.gvlfa"
    gvl_dest = work / "gvl.gvlfa"
    copy = work / "copy.fa"

    def reset() -> None:
        for p in (out, farm_dest, gvl_dest, copy):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for p in work.glob("*.lock"):
            p.unlink()

    def farm_build() -> None:
        out.mkdir()
        gvlfa.write_cache(fasta, out, farm_dest)

    def farm_scan() -> None:
        out.mkdir()
        real = gvlfa.read_fai
        gvlfa.read_fai = lambda _path: None  # as if never indexed: the layout is scanned
        try:
            gvlfa.write_cache(fasta, out, farm_dest)
        finally:
            gvlfa.read_fai = real

    def farm_stream() -> None:
        out.mkdir()
        real = gvlfa.read_fai, gvlfa.infer_layout
        # No layout, from the index or a scan: the streaming reader (gzip, ragged lines).
        gvlfa.read_fai = gvlfa.infer_layout = lambda _path: None
        try:
            gvlfa.write_cache(fasta, out, farm_dest)
        finally:
            gvlfa.read_fai, gvlfa.infer_layout = real

    def farm_ensure() -> None:
        gvlfa.ensure_cache(fasta, farm_dest, owner=Owner.current("bench"))

    results = {
        "farm write_cache": timed(farm_build, reset, args.repeats),
        "farm write_cache, no .fai": timed(farm_scan, reset, args.repeats),
        "farm write_cache, streaming": timed(farm_stream, reset, args.repeats),
        "farm ensure_cache (+fsync)": timed(farm_ensure, reset, args.repeats),
        "gvl 0.43.1 build": timed(lambda: gvl_cache.build(fasta, gvl_dest), reset, args.repeats),
        "cp": timed(lambda: subprocess.run(["cp", fasta, copy], check=True), reset, args.repeats),
    }
    # What durability adds to a publish: fsync of a just-built cache, all of its pages still
    # dirty (disk time, not CPU; the rows above leave it to the kernel's writeback).
    fsync_times = []
    for _ in range(args.repeats):
        reset()
        os.sync()
        farm_build()
        t0 = time.perf_counter()
        fsync_tree(out)
        fsync_times.append(time.perf_counter() - t0)
    # Same bytes, or the speed means nothing.
    reset()
    farm_build()
    gvl_cache.build(fasta, gvl_dest)
    same = _same_file(out / "sequence.bin", gvl_dest / "sequence.bin")
    reset()

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\ninput: {fasta.name}, {size / 1e6:.0f} MB, {args.contigs} contigs")
    print(f"{os.cpu_count()} CPUs, load average {load} (other work on the machine skews all rows)")
    mbps = {}
    for name, times in results.items():
        med = statistics.median(times)
        mbps[name] = size / 1e6 / med
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"{name:30s} {med:7.3f} s  {mbps[name]:8.0f} MB/s   (runs: {runs})")
    farm = mbps["farm write_cache"]
    print(f"\nfarm/gvl = {farm / mbps['gvl 0.43.1 build']:.2f}x   (goal >= 3)")
    print(f"farm/cp  = {farm / mbps['cp']:.2f}x   (goal >= 0.5, i.e. within 2x of cp)")
    fsync_s = statistics.median(fsync_times)
    print(f"fsync of the built cache at publish: {fsync_s:.2f} s (median; disk-bound)")
    print(f"sequence.bin identical to GenVarLoader's: {same}")
    return 0 if same else 1


def _same_file(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(8 << 20), fb.read(8 << 20)
            if x != y:
                return False
            if not x:
                return True


if __name__ == "__main__":
    sys.exit(main())
