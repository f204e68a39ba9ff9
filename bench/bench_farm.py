"""The farm's own costs, side by side with plain Celery on the same private Redis.

Measures in one run: batch submission throughput (vs ``apply_async`` in a loop), status-poll
latency (one key, a batch of 1,000), the round trip of a request whose artifact is already
valid, and the overhead of a build through the farm over calling the builder directly on a
tiny genome (vs a plain Celery no-op round trip). Run: ``python bench/bench_farm.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from farm import embedded, service
from farm.artifacts import gvlfa
from farm.client import Farm
from farm.config import QUEUE, Settings
from farm.kinds import CacheRequest
from farm.queue import BrokerInspector
from farm.watchdog import Watchdog

PROJECT = Path(__file__).resolve().parents[1]
LAMBDA = PROJECT / "data" / "genomes" / "lambda_NC_001416.1.fa"


def median_ms(fn: Callable[[], object], n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def start_worker(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=PROJECT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while b"ready." not in log.read_bytes():
        if time.monotonic() > deadline or proc.poll() is not None:
            stop(proc)
            raise SystemExit(f"worker did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen) -> None:
    """Stop a worker and its pool by process group; SIGKILL if it will not go."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=5000, help="requests in the batch")
    parser.add_argument("--builds", type=int, default=30, help="builds timed for overhead")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    state = work / "state"
    url = embedded.ensure_server(state)
    env = dict(os.environ, FARM_REDIS_URL=url, FARM_ALLOWED_ROOTS=str(work))
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), env.get("PYTHONPATH", "")])
    broker = embedded.celery_broker_url(url)
    env.update(BASELINE_BROKER=broker, BASELINE_BACKEND=broker)
    shutil.copy(LAMBDA, work / LAMBDA.name)
    fasta = work / LAMBDA.name
    rows: list[tuple[str, str, str]] = []
    try:
        settings = Settings(redis_url=url, allowed_roots=str(work), state_dir=state)
        with Farm.connect(settings) as farm:
            # 1. batch submission (no worker running: only the submission path is timed)
            requests = [
                CacheRequest(fasta=fasta, dest=work / "batch" / f"{i}.gvlfa")
                for i in range(args.batch)
            ]
            t = time.perf_counter()
            subs = farm.submit_many(requests)
            farm_rate = args.batch / (time.perf_counter() - t)

            os.environ.update(BASELINE_BROKER=broker, BASELINE_BACKEND=broker)
            sys.path.insert(0, str(PROJECT))
            from bench.celery_baseline import noop

            t = time.perf_counter()
            for _ in range(args.batch):
                noop.apply_async()
            celery_rate = args.batch / (time.perf_counter() - t)

            # The watchdog: a sweep with nothing due, and a reconciliation of the whole batch in
            # flight against the broker's messages (it finds every one, so sends nothing).
            watched = settings.model_copy(update={"lease_ttl_s": 0.001})
            inspector = BrokerInspector(url)
            watchdog = Watchdog(
                farm.registry,
                watched,
                send=lambda messages: sum(1 for _ in messages),
                broker_ids=inspector.message_ids,
                name="bench",
            )
            t = time.perf_counter()
            report = watchdog.reconcile()
            reconcile_ms = (time.perf_counter() - t) * 1000
            assert report.sent == [], report.sent[:3]
            idle_sweep = median_ms(watchdog.sweep, 200)
            inspector.close()
            # Drop both backlogs: only the sending was being timed.
            redis.Redis.from_url(url).delete("baseline", QUEUE)
            rows.append(
                (
                    f"watchdog reconciliation, {args.batch:,} in flight",
                    f"{reconcile_ms:.1f} ms",
                    f"{reconcile_ms / args.batch * 1000:.1f} us per key in flight",
                )
            )
            rows.append(
                (
                    "watchdog sweep, nothing due",
                    f"{idle_sweep:.3f} ms",
                    "median of 200, each second",
                )
            )
            rows.append(
                (
                    "batch submission",
                    f"{farm_rate:,.0f} req/s",
                    f"apply_async loop {celery_rate:,.0f}/s; ratio {farm_rate / celery_rate:.2f}x",
                )
            )

            # 2. status polls
            keys = [s.key for s in subs]
            one = median_ms(lambda: farm.status(keys[:1]), 2000)
            thousand = median_ms(lambda: farm.status(keys[:1000]), 50)
            rows.append(("status poll, 1 key", f"{one:.3f} ms", "median of 2,000"))
            rows.append(
                (
                    "status poll, 1,000 keys",
                    f"{thousand:.2f} ms",
                    f"{thousand / 1000 * 1000:.1f} us per key, one round trip",
                )
            )

            # 3. a request whose artifact is already valid: no worker involved
            valid = CacheRequest(fasta=fasta)
            gvlfa.ensure_cache(fasta)
            farm.build_here(valid, service.Context(farm.registry, settings, "bench"))
            already = median_ms(lambda: farm.submit(valid), 2000)
            rows.append(
                ("already-valid request", f"{already:.3f} ms", "median of 2,000; goal < 2 ms")
            )

            farm.registry.forget(keys)

        # 4. overhead of a build through the farm over the bare builder (tiny genome)
        def direct(i: int = 0) -> None:
            gvlfa.ensure_cache(fasta, work / "direct" / f"{time.perf_counter_ns()}.gvlfa")

        (work / "direct").mkdir()
        bare = median_ms(direct, args.builds)
        with contextlib.ExitStack() as processes:
            for app, queue, pool, log in (
                ("workers.app", QUEUE, "prefork", "worker.log"),
                ("bench.celery_baseline", "baseline", "solo", "noop.log"),
            ):
                argv = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue]
                argv += ["--pool", pool, "--concurrency", "1", "--loglevel", "INFO"]
                argv += ["--without-mingle", "--without-gossip"]
                processes.callback(stop, start_worker(argv, env, work / log))
            with Farm.connect(settings) as farm:

                def through_farm() -> None:
                    dest = work / "farm" / f"{time.perf_counter_ns()}.gvlfa"
                    sub = farm.submit(CacheRequest(fasta=fasta, dest=dest))
                    (record,) = farm.wait([sub.key], timeout_s=60)
                    assert record is not None and record.status == "valid", record

                through_farm()  # warm the worker
                farmed = median_ms(through_farm, args.builds)
            noop.apply_async().get(timeout=30)
            roundtrip = median_ms(lambda: noop.apply_async().get(timeout=30), 200)
        rows.append(
            ("build, bare builder", f"{bare:.2f} ms", f"median of {args.builds}, lambda 48 kb")
        )
        rows.append(
            (
                "build through the farm",
                f"{farmed:.2f} ms",
                f"overhead {farmed - bare:.2f} ms; goal < 10 ms",
            )
        )
        rows.append(("plain Celery no-op round trip", f"{roundtrip:.2f} ms", "median of 200"))
    finally:
        embedded.stop_server(state)
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>14}  notes")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>14}  {note}")


if __name__ == "__main__":
    main()
