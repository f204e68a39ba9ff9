"""Lab-scale dataset benchmark: the farm's builder against gvl.write on a 1000 Genomes-size cohort.

``python bench/bench_cohort.py [--variants N] [--workdir DIR] [--sets 1k,10k,100kb]``

Generates (bench/cohort_data.py) 2,504 samples x N variants (default 1,000,000) as VCF.gz with
its index and as PGEN, and region sets of 1,000 and 10,000 regions of 1 kb and 1,000 of 100 kb,
under a temporary directory (or ``--workdir``, kept for the next run). Each build runs once in a
fresh process and is timed whole (imports included). Memory is the peak of the process
tree's PSS, sampled every 250 ms (pages that a fork shares count once); beside it the peak RSS
(the kernel's VmHWM, plus the largest child's when the build forks: shared pages count
twice). Size is the output's bytes on disk (a hard-linked file counted in full). The farm
(``write_dataset`` inline) and gvl.write run side by side, then the ratios. gvl.write keeps an
index beside its input after its first run; that first run is timed on its own ("gvl index",
a one-region build) so the rows compare like with like. Every pair of datasets is checked
equal (regions, offsets and variant indices).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cohort_data import region_set, write_cohort  # noqa: E402

CHILD = r"""
import json, sys, time
from pathlib import Path
kind, variants, bed, out = sys.argv[1:5]
if kind == "farm":
    from farm.artifacts.dataset import DatasetParams, write_dataset
    Path(out).mkdir()
    write_dataset(DatasetParams(variants=variants, regions=Path(bed)), Path(out))
else:
    import genvarloader as gvl
    gvl.write(out, bed, variants, overwrite=True)
import resource
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
# a build split across processes: add the largest child's peak (pages shared at the fork
# count twice, so this overstates the memory used)
rss += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rss": rss}))
"""

SETS = {"1k": (1_000, 1_000), "10k": (10_000, 1_000), "100kb": (1_000, 100_000)}


def du(path: Path) -> int:
    """Bytes of the files under ``path`` (a hard-linked file counted, as a copy would be)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _pss(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("Pss:")) * 1024
        except (OSError, StopIteration):
            pass
    return total


def build(kind: str, variants: Path, bed: Path, out: Path) -> dict[str, float]:
    """Run one build in a fresh process: wall time, peak RSS (see the module doc), the peak
    of the process tree's PSS sampled every 250 ms (pages shared between processes counted
    once), and the output's size."""
    shutil.rmtree(out, ignore_errors=True)
    # output to files, not pipes: a build that logs more than a pipe holds would block
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        t = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, kind, str(variants), str(bed), str(out)],
            stdout=so,
            stderr=se,
            text=True,
            cwd=REPO,
        )
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _pss(_tree(proc.pid)))
            time.sleep(0.25)  # reading smaps_rollup costs CPU: every 50 ms took a quarter core
        wall = time.perf_counter() - t
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read(), se.read()
    if proc.returncode != 0:
        raise SystemExit(f"{kind} build failed:\n{stderr[-3000:]}")
    rss = json.loads(stdout.strip().splitlines()[-1])["rss"]
    return {"s": wall, "rss": rss, "pss": peak, "size": du(out)}


def same(a: Path, b: Path) -> bool:
    if not np.array_equal(np.load(a / "regions.npy"), np.load(b / "regions.npy")):
        return False
    for rel in ("genotypes/offsets.npy", "genotypes/variant_idxs.npy"):
        if (a / rel).read_bytes() != (b / rel).read_bytes():
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, help="keep the inputs here between runs")
    ap.add_argument("--sets", default="1k,10k,100kb")
    ap.add_argument("--inputs", default="vcf,pgen")
    ap.add_argument(
        "--builders",
        default="farm,gvl",
        help="which to run; with --workdir, results of earlier runs fill in the others",
    )
    args = ap.parse_args()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory()
        work = Path(tmp.name)
    else:
        work = args.workdir / f"cohort-{args.variants}"
        work.mkdir(parents=True, exist_ok=True)
    try:
        files = {"vcf": work / "cohort.vcf.gz", "pgen": work / "cohort.pgen"}
        if not (work / "cohort.vcf.gz.tbi").exists():
            t = time.perf_counter()
            print(f"generating 2,504 samples x {args.variants:,} variants ...", flush=True)
            files = write_cohort(work, args.variants)
            print(f"  {time.perf_counter() - t:.0f} s", flush=True)
            (work / "results.jsonl").unlink(missing_ok=True)
        beds = {
            name: region_set(work / f"{name}.bed", args.variants, n, width, seed=i)
            for i, (name, (n, width)) in enumerate(SETS.items())
            if name in args.sets.split(",")
        }
        one = region_set(work / "one.bed", args.variants, 1, 1_000, seed=99)
        # "none": only print the table of earlier runs' results
        builders = [b for b in args.builders.split(",") if b in ("farm", "gvl")]
        log = work / "results.jsonl"
        done: dict[tuple[str, str, str], dict] = {}
        if log.exists():
            for ln in log.read_text().splitlines():
                r = json.loads(ln)
                done[(r["kind"], r["set"], r["builder"])] = r
        for kind in args.inputs.split(","):
            src = files[kind]
            print(f"{kind}: {src.stat().st_size / 1e6:,.0f} MB", flush=True)
            if "gvl" in builders:
                g = build("gvl", src, one, work / "gvl-index.ds")
                print(f"  gvl index (first run, one region): {g['s']:.1f} s", flush=True)
            for name, bed in beds.items():
                for builder in builders:
                    out = work / f"{builder}-{kind}-{name}.ds"
                    r = build(builder, src, bed, out)
                    r |= {"kind": kind, "set": name, "builder": builder}
                    done[(kind, name, builder)] = r
                    with open(log, "a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(f"  {builder} {name}: {r['s']:.1f} s", flush=True)
                a, b = (work / f"{x}-{kind}-{name}.ds" for x in ("farm", "gvl"))
                if a.exists() and b.exists():
                    done[(kind, name, "farm")]["equal"] = same(a, b)
                    with open(log, "a") as f:
                        f.write(json.dumps(done[(kind, name, "farm")]) + "\n")
                    shutil.rmtree(a)  # the farm's is rebuilt on the next run anyway
        print()
        print("memory: peak PSS of the process tree (peak RSS, a fork's child added), MB")
        print("| input | gvl.write s / mem / MB | farm s / mem / MB | speed-up | mem | size |")
        print("|---|---|---|---|---|---|")
        for kind in args.inputs.split(","):
            for name in beds:
                print(line(f"{kind.upper()} {name}", done.get((kind, name, "farm")),
                           done.get((kind, name, "gvl"))))  # fmt: skip
    finally:
        if tmp is not None:
            tmp.cleanup()


def line(name: str, f: dict | None, g: dict | None) -> str:
    def mem(r: dict) -> float:
        return r.get("pss") or r["rss"]

    def cell(r: dict | None) -> str:
        if r is None:
            return "-"
        return f"{r['s']:.1f} / {mem(r) / 1e6:.0f} ({r['rss'] / 1e6:.0f}) / {r['size'] / 1e6:.1f}"

    if f is None or g is None:
        return f"| {name} | {cell(g)} | {cell(f)} | | | |"
    eq = {True: "", False: " (ARRAYS DIFFER)", None: " (not compared)"}[f.get("equal")]
    return (
        f"| {name} | {cell(g)} | {cell(f)} | {g['s'] / f['s']:.2f}x{eq} | "
        f"{mem(f) / mem(g):.2f} | {f['size'] / g['size']:.2f} |"
    )


if __name__ == "__main__":
    main()
