"""Benchmark the farm's dataset builder against gvl.write: time and peak memory.

Run ``python bench/bench_dataset.py``. Every build runs in a fresh subprocess (so its peak RSS
is its own, imports included), three times; the median is reported. Workloads:
the chr20 VCF and the same data as PGEN with 2,000 overlapping 1 kb regions, and a synthetic
cohort of 2,000 samples x 20,000 phased SNVs with 2,000 regions.
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
import json, resource, sys, time
from pathlib import Path
t = time.perf_counter()
kind, variants, bed, out = sys.argv[1:5]
if kind == "farm":
    from farm.artifacts.dataset import DatasetParams, write_dataset
    Path(out).mkdir()
    write_dataset(DatasetParams(variants=Path(variants), regions=Path(bed)), Path(out))
else:
    import genvarloader as gvl
    gvl.write(out, bed, variants, overwrite=True)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": time.perf_counter() - t, "rss": rss}))
"""


def run(kind: str, variants: Path, bed: Path, work: Path) -> tuple[float, float]:
    times, rss = [], []
    for i in range(RUNS):
        out = work / f"{kind}-{i}.ds"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, kind, str(variants), str(bed), str(out)],
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
        rss.append(stats["rss"])
        shutil.rmtree(out, ignore_errors=True)
    return statistics.median(times), statistics.median(rss)


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
        workloads = [
            (
                "chr20 VCF, 2,000 x 1 kb",
                work / "1kgp_203samples_unphased.chr20_1000001-2000000.vcf.gz",
                bed,
            ),
            ("chr20 PGEN, 2,000 x 1 kb", work / "1kgp_203samples.chr20_1000001-2000000.pgen", bed),
            ("synthetic 2,000 x 20,000 VCF", syn, syn_bed),
        ]
        print(
            f"{'workload':32} {'farm s':>8} {'gvl s':>8} {'speedup':>8} "
            f"{'farm MiB':>9} {'gvl MiB':>9} {'mem ratio':>9}"
        )
        for name, variants, regions in workloads:
            ft, fm = run("farm", variants, regions, work)
            gt, gm = run("gvl", variants, regions, work)
            print(
                f"{name:32} {ft:8.2f} {gt:8.2f} {gt / ft:7.1f}x "
                f"{fm / 2**20:9.0f} {gm / 2**20:9.0f} {fm / gm:9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
