"""The front door's costs, side by side in one run: command start-up, and a one-off ``farm
build`` on the embedded default against ``--inline`` (the build alone, in the command's own
process).

Run: ``python bench/bench_frontdoor.py [--repeats 7] [--size-mb 100]``. Everything runs in a
temporary state directory with its own embedded Redis and worker, stopped at the end. Each
build goes to a new destination, so every one is a real build, not a reuse. Figures are
medians of wall-clock seconds of the whole command, as a pipeline step pays them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gvlfa import make_fasta

FARM = [sys.executable, "-m", "farm.entry"]


def timed(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [*FARM, *args], env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    return time.perf_counter() - started


def median(env: dict[str, str], repeats: int, make_args) -> float:
    return statistics.median(timed(env, *make_args(i)) for i in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size-mb", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp:
        work = Path(tmp)
        fasta = work / "genome.fa"
        make_fasta(fasta, size_mb=args.size_mb, contigs=4)
        env = {
            **os.environ,
            "FARM_STATE_DIR": str(work / "state"),
            "FARM_ALLOWED_ROOTS": str(work),
        }
        env.pop("FARM_REDIS_URL", None)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        try:
            subprocess.run([*FARM, "server", "start"], env=env, check=True, capture_output=True)
            key = subprocess.run(
                [*FARM, "submit", "cache", str(fasta), "--dest", str(work / "warm.gvlfa")],
                env=env, check=True, capture_output=True, text=True,
            ).stdout.strip()  # fmt: skip
            subprocess.run([*FARM, "wait", key], env=env, check=True, capture_output=True)
            r = args.repeats
            help_s = median(env, r, lambda _i: ["--help"])
            status_s = median(env, r, lambda _i: ["status", key])
            inline_s = median(
                env,
                r,
                lambda i: ["build", "cache", str(fasta), "--dest", str(work / f"i{i}.gvlfa"),
                           "--inline"],
            )  # fmt: skip
            queued_s = median(
                env,
                r,
                lambda i: ["build", "cache", str(fasta), "--dest", str(work / f"q{i}.gvlfa")],
            )
        finally:
            subprocess.run([*FARM, "server", "stop"], env=env, capture_output=True)
    print(f"farm --help                      {help_s * 1000:7.0f} ms")
    print(f"farm status KEY                  {status_s * 1000:7.0f} ms")
    print(f"farm build cache --inline        {inline_s * 1000:7.0f} ms  ({args.size_mb} MB FASTA)")
    print(f"farm build cache (embedded)      {queued_s * 1000:7.0f} ms")
    print(
        f"one-off build through the embedded worker: +{(queued_s - inline_s) * 1000:.0f} ms "
        f"over --inline ({queued_s / inline_s:.2f}x)"
    )


if __name__ == "__main__":
    main()
