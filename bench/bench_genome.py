"""Lab-scale cache benchmark: a GRCh38-size genome's .gvlfa, the farm against GenVarLoader and cp.

``python bench/bench_genome.py [--workdir DIR] [--inputs plain,bgzip] [--cold] [--scale 1.0]``

Generates (bench/genome_data.py) the 25 primary contigs of GRCh38 at their real lengths,
soft-masked, with N gaps, in 60-column lines, plain and bgzipped (with .fai and .gzi), under a
temporary directory that is removed at the end (or ``--workdir``, kept for the next run). Each
build runs once in a fresh process, timed whole (imports included): the farm's builder
(``ensure_cache``, which fsyncs the cache at publish), GenVarLoader 0.43.1's
(``_fasta_cache.build``, which does not fsync) and ``cp`` followed by ``sync FILE`` (the I/O
floor: read the FASTA, write it, wait for the disk). Every run starts with no dirty pages
(``sync``); ``--cold`` also drops the input from the page cache first (``posix_fadvise``
DONTNEED, which touches no other file), as for a genome just copied in from elsewhere.
Peak RSS is the process's own (``wait4``). The two caches are compared byte for byte.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.genome_data import write_genome  # noqa: E402

CHILD = r"""
import os, sys
os.environ["TQDM_DISABLE"] = "1"  # GenVarLoader's progress bar is not the work
from pathlib import Path
kind, fasta, dest = sys.argv[1:4]
if kind == "farm":
    from farm.artifacts.gvlfa import ensure_cache
    ensure_cache(Path(fasta), Path(dest))
else:
    from genvarloader import _fasta_cache
    _fasta_cache.build(fasta, dest)
"""


def evict(path: Path) -> None:
    """Drop ``path``'s clean pages from the page cache (its own, no one else's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run(argv: list[str], *, source: Path, cold: bool) -> tuple[float, int]:
    """Wall time and peak RSS of one fresh process, started with no dirty pages."""
    os.sync()
    if cold:
        evict(source)
    t = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:3]} failed")
    return wall, usage.ru_maxrss * 1024


def du(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else (path.stat().st_size)
    )


def _cell(row: tuple[float, int, int] | None) -> str:
    if row is None:
        return "-"
    s, rss, out = row
    return f"{s:.1f} s, {rss / 1e6:,.0f} MB RSS, {out / 1e9:.2f} GB"


def same_file(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="keep the generated genome here between runs")
    ap.add_argument("--inputs", default="plain,bgzip")
    ap.add_argument("--builders", default="cp,farm,gvl")
    ap.add_argument("--cold", action="store_true", help="drop the input from the page cache")
    ap.add_argument("--scale", type=float, default=1.0, help="contig lengths x this")
    args = ap.parse_args()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="genome-bench-")
        work = Path(tmp.name)
    else:
        work = args.workdir / f"genome-{args.scale:g}"
        work.mkdir(parents=True, exist_ok=True)
    try:
        files = {"plain": work / "genome.fa", "bgzip": work / "genome.fa.gz"}
        if not (work / "genome.fa.gz.gzi").exists():
            t = time.perf_counter()
            print("generating a GRCh38-size genome ...", flush=True)
            files = write_genome(work, scale=args.scale)
            print(f"  {time.perf_counter() - t:.0f} s", flush=True)
        table = []
        for kind in args.inputs.split(","):
            src = files[kind]
            rows: dict[str, tuple[float, int, int]] = {}
            for builder in args.builders.split(","):
                out = work / f"{builder}.out"
                shutil.rmtree(out, ignore_errors=True)
                out.unlink(missing_ok=True)
                if builder == "cp":
                    cmd = 'cp "$0" "$1" && sync "$1"'
                    argv = ["sh", "-c", cmd, str(src), str(out)]
                else:
                    argv = [sys.executable, "-c", CHILD, builder, str(src), str(out)]
                s, rss = run(argv, source=src, cold=args.cold)
                rows[builder] = (s, rss, du(out))
                print(f"  {kind} {builder}: {s:.1f} s, {rss / 1e6:.0f} MB", flush=True)
            farm, gvl = work / "farm.out", work / "gvl.out"
            equal = None
            if farm.exists() and gvl.exists():
                equal = same_file(farm / "sequence.bin", gvl / "sequence.bin")
            for p in work.glob("*.out"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            table.append((kind, src.stat().st_size, rows, equal))
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        state = "cold (dropped from the page cache)" if args.cold else "in the page cache"
        print(f"\n{os.cpu_count()} CPUs, load average {load}; input {state}")
        print("| input | cp + sync | gvl 0.43.1 | farm | farm / cp | gvl / farm | equal |")
        print("|---|---|---|---|---|---|---|")
        for kind, size, rows, equal in table:
            cells = {b: _cell(rows.get(b)) for b in ("cp", "gvl", "farm")}
            f, c, g = (rows.get(b, (float("nan"),))[0] for b in ("farm", "cp", "gvl"))
            print(
                f"| {kind} ({size / 1e9:.2f} GB) | {cells['cp']} | {cells['gvl']} | "
                f"{cells['farm']} | {f / c:.2f} | {g / f:.2f}x | {equal} |"
            )
        return 0 if all(e is not False for *_, e in table) else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
