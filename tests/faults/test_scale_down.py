"""SIGTERM, as autoscalers, ``docker stop`` and honcho send it: stop taking work, finish
within the grace period or hand the key back at once, and leave nothing ``building``."""

from __future__ import annotations

import os
import signal
import time

import pytest

from farm.kinds import CacheRequest
from farm.records import Status
from tests.faults.harness import Cluster, Figures, books_balanced, settle, sweep_orphans

pytestmark = pytest.mark.faults


@pytest.mark.parametrize(
    "target",
    ["main", "group", "solo"],
    ids=["sigterm-main-process", "sigterm-process-group", "sigterm-solo-pool"],
)
def test_a_stopped_worker_hands_a_long_build_back_at_once(cluster: Cluster, target: str):
    """A 30 s build, a 1 s grace: the key goes to the other worker in seconds, not after the
    build or the lease. The solo pool (builds in the main process, as `farm build`'s transient
    worker runs) must also stop taking work."""
    figures = Figures(f"SIGTERM scale-down ({target}) during a long build")
    started = time.monotonic()
    stopping = cluster.worker(pool="solo" if target == "solo" else "prefork")
    fasta = cluster.genome()
    key = cluster.submit_paused(CacheRequest(fasta=fasta), "building", 30)
    figures.jobs = figures.rounds = 1
    cluster.marker("building", key)
    survivor = cluster.worker()
    if target in ("main", "solo"):
        stopping.proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(stopping.proc.pid, signal.SIGTERM)  # honcho and terminals signal the group
    stopping.proc.wait(30)
    (after,) = cluster.registry().shown([key])
    # Nothing stays building by the stopped worker: handed back, and maybe already taken on.
    assert not (after.status is Status.BUILDING and after.worker.startswith(stopping.name + "@"))
    assert "key handed back" in stopping.log.read_text()
    (record,) = settle(cluster, [key], figures, timeout=60)
    assert record.worker.startswith(survivor.name + "@")
    figures.worker_exits = int(stopping.proc.returncode not in (0, -signal.SIGTERM))
    figures.duplicates = max(0, cluster.publishes() - 1)
    sweep_orphans(cluster, figures)
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
    assert figures.cleaned == 0, "the stopped build removed its own staging directory"
    assert books_balanced(cluster.registry())


def test_a_build_that_ends_within_the_grace_is_finished_not_handed_back(cluster: Cluster):
    figures = Figures("SIGTERM scale-down during a build shorter than the grace")
    started = time.monotonic()
    stopping = cluster.worker(stop_grace_s=20)
    fasta = cluster.genome()
    key = cluster.submit_paused(CacheRequest(fasta=fasta), "building", 2)
    figures.jobs = figures.rounds = 1
    cluster.marker("building", key)
    stopping.proc.send_signal(signal.SIGTERM)
    stopping.proc.wait(30)
    (record,) = settle(cluster, [key], figures, timeout=10)
    assert record.worker.startswith(stopping.name + "@")
    figures.duplicates = max(0, cluster.publishes() - 1)
    sweep_orphans(cluster, figures)
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
