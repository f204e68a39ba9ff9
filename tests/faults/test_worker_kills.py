"""Workers killed with SIGKILL, the pool child or the main process, at every build phase."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from farm.artifacts import gvlfa
from farm.artifacts.base import State
from farm.kinds import CacheRequest
from tests.faults.harness import (
    Cluster,
    Figures,
    PartialWatch,
    books_balanced,
    kill_pid,
    settle,
    sweep_orphans,
)

pytestmark = pytest.mark.faults

PHASES = ("received", "building", "published")


def test_sigkill_of_pool_child_and_main_process_at_every_phase(cluster: Cluster):
    """One key per round; its first builder is killed at the phase; a replacement worker (and
    the survivor) must finish it with no client action."""
    figures = Figures("sigkill at every build phase")
    started = time.monotonic()
    cluster.worker()
    fasta = cluster.genome()
    dests = [fasta.parent / f"{phase}-{target}.gvlfa" for phase in PHASES for target in "cm"]
    with PartialWatch(dests) as watch:
        for dest in dests:
            phase, target = dest.stem.split("-")
            key = cluster.submit_paused(CacheRequest(fasta=fasta, dest=dest), phase, 30)
            figures.jobs += 1
            figures.rounds += 1
            pid = int(cluster.marker(phase, key).name.split(".")[1])
            victim = cluster.worker_of(pid)
            kill_pid(pid if target == "c" else victim.proc.pid)
            if target == "m":
                victim.proc.wait()
                cluster.worker()  # the autoscaler replaces it
            settle(cluster, [key], figures, timeout=60)
    figures.partials = watch.seen_partial
    figures.duplicates = cluster.builds_beyond_one(len(dests))
    sweep_orphans(cluster, figures)
    figures.worker_exits = sum(1 for w in cluster.workers if w.proc.poll() is not None) - sum(
        1 for d in dests if d.stem.endswith("-m")
    )
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
    assert all(gvlfa.classify(d, deep=True).state is State.FRESH for d in dests)
    assert books_balanced(cluster.registry())


def test_main_processes_killed_at_random_during_a_batch(cluster: Cluster):
    figures = Figures("main process SIGKILLed mid-batch")
    started = time.monotonic()
    rng = random.Random(7)
    for _ in range(2):
        cluster.worker(concurrency=2, test_build_seconds=0.3)
    fasta = cluster.genome()
    dests = [fasta.parent / "batch" / f"{i}.gvlfa" for i in range(40)]
    farm = cluster.farm()
    with PartialWatch(dests) as watch:
        keys = [s.key for s in farm.submit_many([CacheRequest(fasta=fasta, dest=d) for d in dests])]
        figures.jobs = len(keys)
        for _ in range(3):
            time.sleep(rng.uniform(0.5, 1.5))
            live = [w for w in cluster.workers if w.proc.poll() is None]
            victim = rng.choice(live)
            os.kill(victim.proc.pid, signal.SIGKILL)  # the main process only
            victim.proc.wait()
            figures.rounds += 1
            cluster.worker(concurrency=2, test_build_seconds=0.3)
        settle(cluster, keys, figures, timeout=120)
    figures.partials = watch.seen_partial
    figures.duplicates = cluster.builds_beyond_one(len(keys))
    sweep_orphans(cluster, figures)
    figures.worker_exits = sum(1 for w in cluster.workers if w.proc.poll() is not None) - 3
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
    assert books_balanced(cluster.registry())
