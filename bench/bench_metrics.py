"""A scrape of ``farm metrics`` against a large registry: it must not grow with the records.

Run ``python bench/bench_metrics.py [--records 1000000] [--in-flight 100000]``. A private
Redis (no persistence) is filled directly, by pipelined writes of realistic stored records
(a cohort's dataset records, of the size the registry stores them), with the in-flight set,
the counts the registry's scripts would have kept, a year of build statistics and 50 live
workers; the keys being built sit at the old end of the in-flight set, the worst place for
the oldest-queued look-up. Then it times scrapes (the whole Prometheus text, as
``farm metrics`` renders it), counts the Redis commands one scrape runs, checks the counts
against the fill, and times the recount ``farm reindex`` ends with.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from farm import embedded, metrics, stored, tally
from farm.records import ArtifactRecord, Status
from farm.registry import Registry

PIPELINE = 10_000
BUILDING = 200  # keys being built: a farm of 50 workers with 4 slots each


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """The embedded server, in a directory of the benchmark's own."""
    try:
        yield embedded.ensure_server(workdir)
    finally:
        embedded.stop_server(workdir)


def template(status: Status, i: int) -> bytes:
    """A dataset record as a lab's cohort submits them, stored as the registry stores it."""
    now = time.time()
    root = "/shared/genomics/cohorts/1kgp/phase3"
    fp = {"algorithm": "blake2b", "n_bytes_hashed": 1048576, "size_bytes": 340_000_000 + i}
    record = ArtifactRecord(
        key=f"{i:064x}",
        kind="dataset",
        dest=f"{root}/datasets/chr{i % 22 + 1}.exons_{i}.gvl",
        request={
            "kind": "dataset",
            "variants": f"{root}/ALL.chr{i % 22 + 1}.phase3.vcf.gz",
            "regions": f"{root}/regions/exons_{i}.bed",
            "dest": f"{root}/datasets/chr{i % 22 + 1}.exons_{i}.gvl",
            "max_jitter": 128,
        },
        sources={
            "variants": {**fp, "digest": f"{i:0128x}"},
            "regions": {**fp, "digest": f"{i + 1:0128x}", "size_bytes": 90_000},
        },
        status=status,
        created_at=now,
        updated_at=now,
        started_at=None if status is Status.QUEUED else now - 60,
        finished_at=now if status.terminal else None,
        build_seconds=60.0 if status is Status.VALID else None,
        size_bytes=75_300_000 if status is Status.VALID else None,
        checksum=f"sha256:{i:064x}" if status is Status.VALID else None,
        worker=f"farm-{i % 9000}-ab12@node{i % 97}.cluster.lab.org",
        action="built" if status is Status.VALID else None,
        error="the variant file changed under the build." if status is Status.FAILED else None,
    )
    return stored.encode(record.model_dump(mode="json"))


def fill(registry: Registry, records: int, in_flight: int) -> dict[str, int]:
    """Write ``records`` records (``in_flight`` of them queued or building) as the registry's
    scripts would have left them, counts included; returns the counts."""
    r = registry._r
    terminal = records - in_flight
    plan = [
        (Status.BUILDING, BUILDING),
        (Status.QUEUED, in_flight - BUILDING),
        (Status.VALID, terminal - terminal // 20),
        (Status.FAILED, terminal // 40),
        (Status.STALE, terminal // 80),
        (Status.INVALID, terminal // 20 - terminal // 40 - terminal // 80),
    ]
    templates = {status: [template(status, i) for i in range(16)] for status, _ in plan}
    counts = {s: 0 for s in tally.STATUSES}
    n = 0
    claimed = time.time() - 86_400
    pipe = r.pipeline(transaction=False)
    for status, how_many in plan:
        for _ in range(how_many):
            key = f"{n:064x}"
            pipe.set(f"farm:rec:{key}", templates[status][n % 16])
            if not status.terminal:
                # Oldest first: the keys being built, then those waiting, a second apart.
                pipe.zadd("farm:inflight", {key: claimed + n})
            n += 1
            if n % PIPELINE == 0:
                pipe.execute()
        counts[str(status)] = how_many
    pipe.hset("farm:counts", mapping={**counts, "recounted_at": time.time()})
    stats: dict[str, float] = {}
    for kind in ("cache", "dataset"):
        for outcome in ("built", "rebuilt", "reused", "failed", "cancelled", "handed_back"):
            stats[f"builds|{kind}|{outcome}"] = 10_000
        for bound in (*tally.DURATION_BUCKETS, tally.INF):
            stats[f"duration_bucket|{kind}|{tally.duration_bucket(float(bound))}"] = 1_000
        stats[f"duration_sum|{kind}"] = 123_456_789.5
        stats[f"published_bytes|{kind}"] = 10**15
    stats["takeovers"] = 42
    pipe.hset("farm:stats", mapping=stats)
    pipe.execute()
    for w in range(50):
        busy = [f"{k:064x}" for k in range(w * 4, w * 4 + 4)]
        info = {"host": f"node{w}", "pid": 1, "slots": 4, "busy": busy, "version": "0.1.0"}
        registry.worker_seen(f"farm-1-{w:04x}@node{w}", info, ttl_s=600)
    return counts


def scrape_commands(registry: Registry) -> int:
    registry._r.config_resetstat()
    metrics.render(registry)
    stats = registry._r.info("commandstats")
    return sum(v["calls"] for name, v in stats.items() if name != "cmdstat_config")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--in-flight", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp,
        private_redis(Path(tmp)) as url,
    ):
        registry = Registry.from_url(url)
        started = time.perf_counter()
        counts = fill(registry, args.records, args.in_flight)
        fill_s = time.perf_counter() - started
        memory = int(registry._r.info("memory")["used_memory"]) / 2**20
        print(
            f"filled {args.records:,} records ({args.in_flight:,} in flight) in {fill_s:.1f} s; "
            f"Redis holds {memory:,.0f} MiB"
        )
        text = metrics.render(registry)  # scripts loaded, connection open
        assert registry.snapshot().records == counts
        assert f'gvlfarm_keys{{status="queued"}} {float(counts["queued"])}' in text
        times = []
        for _ in range(args.scrapes):
            t = time.perf_counter()
            metrics.render(registry)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        p95 = times[int(len(times) * 0.95) - 1]
        print(
            f"scrape (whole Prometheus text): median {statistics.median(times):.2f} ms, "
            f"p95 {p95:.2f} ms, max {times[-1]:.2f} ms over {args.scrapes}; "
            f"{scrape_commands(registry)} Redis commands each (scripts' inner calls included)"
        )
        t = time.perf_counter()
        recounted = registry.recount()
        recount_s = time.perf_counter() - t
        assert recounted == counts, (recounted, counts)
        print(f"recount of {args.records:,} records (the end of `farm reindex`): {recount_s:.1f} s")


if __name__ == "__main__":
    main()
