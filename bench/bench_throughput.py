"""Tiny-build throughput: the farm against plain Celery running the same builder.

Many builds of a tiny genome (lambda phage, 48 kb), so what is measured is what surrounds
the builder: through the farm (``submit_many``, then ``wait``) and as plain Celery tasks
calling the same builder (``apply_async`` in a loop, then collecting the results). Both
workers run a prefork pool of the same size on the same private Redis, and the two take turns
(rounds alternate), so drift on the machine hits both. Prints each rate and their ratio.
Run: ``python bench/bench_throughput.py [--builds 2000] [--concurrency 2] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from celery.result import ResultSet

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench.bench_farm import LAMBDA, start_worker, stop  # noqa: E402
from farm import embedded  # noqa: E402
from farm.client import Farm  # noqa: E402
from farm.config import QUEUE, Settings  # noqa: E402
from farm.kinds import CacheRequest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--builds", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="farm-bench-throughput-"))
    state = work / "state"
    url = embedded.ensure_server(state)
    broker = embedded.celery_broker_url(url)
    env = dict(os.environ, FARM_REDIS_URL=url, FARM_ALLOWED_ROOTS=str(work))
    env.update(BASELINE_BROKER=broker, BASELINE_BACKEND=broker)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), env.get("PYTHONPATH", "")])
    os.environ.update(BASELINE_BROKER=broker, BASELINE_BACKEND=broker)
    from bench.celery_baseline import build

    fasta = work / LAMBDA.name
    shutil.copy(LAMBDA, fasta)
    settings = Settings(redis_url=url, allowed_roots=str(work), state_dir=state)
    farm_rates: list[float] = []
    celery_rates: list[float] = []
    try:
        with contextlib.ExitStack() as processes:
            for app, queue, log in (
                ("workers.app", QUEUE, "farm-worker.log"),
                ("bench.celery_baseline", "baseline", "celery-worker.log"),
            ):
                argv = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue]
                argv += ["--pool", "prefork", "--concurrency", str(args.concurrency)]
                argv += ["--loglevel", "INFO", "--without-mingle", "--without-gossip"]
                processes.callback(stop, start_worker(argv, env, work / log))
            with Farm.connect(settings) as farm:
                for round_ in range(args.rounds):
                    out = work / f"farm{round_}"
                    requests = [
                        CacheRequest(fasta=fasta, dest=out / f"{i}.gvlfa")
                        for i in range(args.builds)
                    ]
                    started = time.perf_counter()
                    keys = [s.key for s in farm.submit_many(requests)]
                    records = farm.wait(keys, timeout_s=600)
                    farm_rates.append(args.builds / (time.perf_counter() - started))
                    assert all(r is not None and r.status == "valid" for r in records)

                    out = work / f"celery{round_}"
                    started = time.perf_counter()
                    results = ResultSet(
                        [
                            build.apply_async((str(fasta), str(out / f"{i}.gvlfa")))
                            for i in range(args.builds)
                        ]
                    )
                    results.get(timeout=600)
                    celery_rates.append(args.builds / (time.perf_counter() - started))
        task_ms = {
            log: _mean_task_ms(work / log) for log in ("farm-worker.log", "celery-worker.log")
        }
    finally:
        embedded.stop_server(state)
        shutil.rmtree(work, ignore_errors=True)

    farm_rate, celery_rate = statistics.median(farm_rates), statistics.median(celery_rates)
    print(f"{args.builds:,} tiny builds, prefork concurrency {args.concurrency}, "
          f"median of {args.rounds} alternating rounds")  # fmt: skip
    print(f"{'through the farm':<34} {farm_rate:8,.0f} builds/s")
    print(f"{'plain Celery, same builder':<34} {celery_rate:8,.0f} builds/s")
    print(f"{'ratio (farm / plain Celery)':<34} {farm_rate / celery_rate:8.2f}x")
    each = ", ".join(f"{f / c:.2f}" for f, c in zip(farm_rates, celery_rates, strict=True))
    print(f"{'ratio in each round':<34} {each}")
    print(
        f"{'task body, as Celery logs it':<34} {task_ms['farm-worker.log']:8.2f} ms farm, "
        f"{task_ms['celery-worker.log']:.2f} ms plain"
    )


def _mean_task_ms(log: Path) -> float:
    """The mean time Celery says each task took (its "succeeded in" lines)."""
    took = [float(t) for t in re.findall(rb"succeeded in ([0-9.]+)s", log.read_bytes())]
    return 1000 * statistics.mean(took) if took else float("nan")


if __name__ == "__main__":
    main()
