"""Benchmark the farm's dataset builder against gvl.write: time and peak memory.

Run ``python bench/bench_dataset.py``. Every build runs in a fresh subprocess (so its peak RSS
is its own, imports included), three times; the median is reported, for the whole process (as
a pipeline step pays it) and for the build call alone, its libraries loaded ("call", as in a
running worker). Workloads: the chr20 VCF and the
same data as PGEN with 2,000 overlapping 1 kb regions, a synthetic cohort of 2,000 samples x
20,000 phased SNVs with 2,000 regions, and a tracks-only dataset of 200 x 5 kb regions over 50
samples' bigWigs (about one interval per 50 bp).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pysam

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "grch37_chr20"
RUNS = 3

CHILD = r"""
import json, sys, time
from pathlib import Path
kind, variants, bed, out, tracks = sys.argv[1:6]
variants = None if variants == "-" else variants
tracks = json.loads(tracks)
if kind == "farm":
    import pyarrow as pa
    from farm.artifacts.dataset import DatasetParams, write_dataset
    pa.array([0])  # pyarrow loads pandas at its first array; genvarloader's import did already
    t = time.perf_counter()
    Path(out).mkdir()
    params = DatasetParams(
        variants=variants, regions=Path(bed), tracks={"signal": tracks} if tracks else None
    )
    write_dataset(params, Path(out))
else:
    import genvarloader as gvl
    t = time.perf_counter()
    track = gvl.BigWigs("signal", tracks) if tracks else None
    gvl.write(out, bed, variants, tracks=track, overwrite=True)
# VmHWM: ru_maxrss would include the high-water mark of the bench that forked this process.
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
print(json.dumps({"seconds": time.perf_counter() - t, "rss": rss}))
"""


def run(
    kind: str, variants: Path | None, bed: Path, work: Path, tracks: dict[str, str] | None = None
) -> tuple[float, float, float]:
    """Median wall time of the whole process, of the build call alone, and peak RSS."""
    times, calls, rss = [], [], []
    for i in range(RUNS):
        out = work / f"{kind}-{i}.ds"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        argv = [kind, str(variants or "-"), str(bed), str(out), json.dumps(tracks or {})]
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, *argv],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"{kind} build failed:\n{proc.stderr[-3000:]}")
        stats = json.loads(proc.stdout.strip().splitlines()[-1])
        times.append(wall)
        calls.append(stats["seconds"])
        rss.append(stats["rss"])
        shutil.rmtree(out, ignore_errors=True)
    return statistics.median(times), statistics.median(calls), statistics.median(rss)


def bigwigs(work: Path, n: int, length: int = 5_000_000, seed: int = 0) -> dict[str, str]:
    """``n`` samples' coverage over contig 1, about one interval per 50 bp, gaps and zeros."""
    import pyBigWig

    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        widths = rng.integers(10, 90, length // 40)
        starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
        keep = (starts + widths < length) & (rng.random(len(widths)) > 0.2)
        path = work / f"S{i:05d}.bw"
        bw = pyBigWig.open(str(path), "w")
        bw.addHeader([("1", length)], maxZooms=0)
        s = starts[keep]
        bw.addEntries(["1"] * len(s), s.tolist(), ends=(s + widths[keep]).tolist(),
                      values=rng.gamma(2.0, 3.0, len(s)).tolist())  # fmt: skip
        bw.close()
        out[f"S{i:05d}"] = str(path)
    return out


def tiles(path: Path, n: int, start: int, step: int, width: int, contig: str = "20") -> Path:
    with open(path, "w") as f:
        for i in range(n):
            s = start + i * step
            f.write(f"{contig}\t{s}\t{s + width}\n")
    return path


def synthetic_vcf(path: Path, n_samples: int, n_vars: int, seed: int = 0) -> Path:
    """Phased biallelic SNVs every 100 bp on contig 1, bgzipped and tabix-indexed via pysam."""
    rng = np.random.default_rng(seed)
    lut = np.array(["0|0", "0|1", "1|0", "1|1"])
    bases = "ACGT"
    with open(path, "w") as f:
        f.write("##fileformat=VCFv4.2\n##contig=<ID=1,length=3000000>\n")
        f.write('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')
        names = "\t".join(f"S{i:05d}" for i in range(n_samples))
        f.write(f"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t{names}\n")
        for v in range(n_vars):
            af = rng.uniform(0.01, 0.5)
            codes = (rng.random(n_samples) < af) * 1 + (rng.random(n_samples) < af) * 2
            ref = bases[v % 4]
            alt = bases[(v + 1) % 4]
            gts = "\t".join(lut[codes])
            f.write(f"1\t{1000 + v * 100}\t.\t{ref}\t{alt}\t.\tPASS\t.\tGT\t{gts}\n")
    return Path(pysam.tabix_index(str(path), preset="vcf", force=True))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for p in [*DATA.iterdir(), *(DATA / "plink2").iterdir()]:
            if p.is_file():
                shutil.copy2(p, work / p.name)
        bed = tiles(work / "overlap2000.bed", 2000, 1_000_000, 500, 1000)
        print("generating the synthetic cohort ...", flush=True)
        syn = synthetic_vcf(work / "synthetic.vcf", 2000, 20_000)
        syn_bed = tiles(work / "synthetic.bed", 2000, 1000, 1000, 1000, contig="1")
        print("generating 50 bigWigs ...", flush=True)
        signal = bigwigs(work, 50)
        track_bed = tiles(work / "tracks.bed", 200, 10_000, 24_000, 5_000, contig="1")
        workloads: list[tuple[str, Path | None, Path, dict[str, str] | None]] = [
            (
                "chr20 VCF, 2,000 x 1 kb",
                work / "1kgp_203samples_unphased.chr20_1000001-2000000.vcf.gz",
                bed,
                None,
            ),
            (
                "chr20 PGEN, 2,000 x 1 kb",
                work / "1kgp_203samples.chr20_1000001-2000000.pgen",
                bed,
                None,
            ),
            ("synthetic 2,000 x 20,000 VCF", syn, syn_bed, None),
            ("bigWig tracks, 200 x 50 samples", None, track_bed, signal),
        ]
        print(
            f"{'workload':32} {'farm s':>8} {'gvl s':>8} {'speedup':>8} {'call':>13} "
            f"{'farm MiB':>9} {'gvl MiB':>9} {'mem ratio':>9}"
        )
        for name, variants, regions, tracks in workloads:
            ft, fc, fm = run("farm", variants, regions, work, tracks)
            gt, gc, gm = run("gvl", variants, regions, work, tracks)
            print(
                f"{name:32} {ft:8.2f} {gt:8.2f} {gt / ft:7.1f}x {gc / fc:6.1f}x alone "
                f"{fm / 2**20:9.0f} {gm / 2**20:9.0f} {fm / gm:9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
