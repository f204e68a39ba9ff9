"""The broker (Redis) SIGKILLed and restarted mid-batch, with and without persistence."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from farm.kinds import CacheRequest
from tests.faults.harness import (
    Cluster,
    Figures,
    PartialWatch,
    books_balanced,
    settle,
    sweep_orphans,
)

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("aof", [True, False], ids=["aof", "no-persistence"])
def test_redis_killed_and_restarted_mid_batch(tmp_path: Path, aof: bool):
    cluster = Cluster(tmp_path, aof=aof)
    name = "with append-only file" if aof else "without persistence"
    figures = Figures(f"Redis SIGKILLed and restarted mid-batch, {name}")
    started = time.monotonic()
    rng = random.Random(11)
    try:
        for _ in range(2):
            cluster.worker(concurrency=2, test_build_seconds=0.3)
        fasta = cluster.genome()
        dests = [fasta.parent / "batch" / f"{i}.gvlfa" for i in range(40)]
        requests = [CacheRequest(fasta=fasta, dest=d) for d in dests]
        with PartialWatch(dests) as watch:
            keys = [s.key for s in cluster.farm().submit_many(requests)]
            figures.jobs = len(keys)
            for _ in range(2):
                time.sleep(rng.uniform(0.5, 1.5))
                cluster.redis.restart(down_s=1.0)
                figures.rounds += 1
            # With an append-only file the farm heals alone; without one, the records went with
            # the server and only the client that submitted them can submit them again.
            settle(cluster, keys, figures, timeout=120, client_heals=not aof)
        if not aof:
            figures.notes.append("records lost with the server were resubmitted by the client")
        figures.partials = watch.seen_partial
        figures.duplicates = cluster.builds_beyond_one(len(keys))
        figures.worker_exits = sum(1 for w in cluster.workers if w.proc.poll() is not None)
        sweep_orphans(cluster, figures)
        figures.seconds = time.monotonic() - started
        figures.report()
        figures.assert_healed()
        assert books_balanced(cluster.registry())
        # Consumption resumed: a request submitted now is built.
        (late,) = cluster.farm().submit_many(
            [CacheRequest(fasta=fasta, dest=fasta.parent / "late.gvlfa")]
        )
        assert settle(cluster, [late.key], Figures("late"), timeout=60)[0].status == "valid"
    finally:
        cluster.close()


def test_redis_down_longer_than_the_lease_during_a_build_starts_no_second_build(
    cluster: Cluster,
):
    """Every lease expires while Redis is away; the builders take theirs back when it returns
    instead of the watchdog calling them dead and starting the same builds again."""
    figures = Figures("Redis down for 3 lease periods during builds")
    started = time.monotonic()
    for _ in range(3):  # the third is idle: it would take any key wrongly requeued
        cluster.worker()
    fasta = cluster.genome()
    requests = [CacheRequest(fasta=fasta, dest=fasta.parent / f"long{i}.gvlfa") for i in range(2)]
    keys = [cluster.plan_pause(r, "building", 8) for r in requests]
    cluster.farm().submit_many(requests)
    figures.jobs = len(keys)
    for key in keys:
        cluster.marker("building", key)
    cluster.redis.restart(down_s=3 * cluster.settings().lease_ttl_s)
    figures.rounds = 1
    settle(cluster, keys, figures, timeout=60)
    figures.duplicates = cluster.log_count("BUILD-START") - len(keys)
    figures.worker_exits = sum(1 for w in cluster.workers if w.proc.poll() is not None)
    sweep_orphans(cluster, figures)
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()


def test_redis_restarted_while_workers_hold_a_build_and_a_free_slot(cluster: Cluster):
    """The case in which kombu 5.7.0 made worker main processes exit (AttributeError in
    ``_connparams``; see workers/broker_fixes.py): a worker with an unacknowledged build and
    a BRPOP in flight when Redis dies. No worker may exit, and consumption resumes."""
    figures = Figures("Redis restarted under workers with a build and a free slot each")
    started = time.monotonic()
    workers = [cluster.worker(concurrency=2, test_build_seconds=2) for _ in range(2)]
    fasta = cluster.genome()
    farm = cluster.farm()
    keys: list[str] = []

    def submit() -> None:
        dest = fasta.parent / "out" / f"{len(keys)}.gvlfa"
        keys.append(farm.submit(CacheRequest(fasta=fasta, dest=dest)).key)

    for _ in range(4):
        for _ in workers:  # one build each, started before the next is sent
            before = cluster.log_count("BUILD-START")
            submit()
            deadline = time.monotonic() + 15
            while cluster.log_count("BUILD-START") == before:
                assert time.monotonic() < deadline, "no build started"
                dead = [w.log.read_text()[-2000:] for w in workers if w.proc.poll() is not None]
                assert not dead, "a worker main process exited:\n" + "\n".join(dead)
                time.sleep(0.02)
        time.sleep(0.2)  # mid-build
        cluster.redis.restart(down_s=0.5)
        figures.rounds += 1
        time.sleep(1.0)  # the workers notice, tear down, reconnect
    submit()  # after the last restart: consumption must resume
    figures.jobs = len(keys)
    settle(cluster, keys, figures, timeout=90)
    figures.worker_exits = sum(1 for w in workers if w.proc.poll() is not None)
    figures.duplicates = cluster.builds_beyond_one(len(keys))
    sweep_orphans(cluster, figures)
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
