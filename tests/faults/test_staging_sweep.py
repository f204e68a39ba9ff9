"""A builder killed with SIGKILL leaves its staging directory; the workers remove it on their
own within the sweep interval, with no `farm gc`."""

from __future__ import annotations

import time

import pytest

from farm.kinds import CacheRequest
from farm.publish import STAGING_MARK
from tests.faults.harness import Cluster, Figures, books_balanced, settle, sweep_orphans

pytestmark = pytest.mark.faults

INTERVAL_S = 2.0


def test_a_killed_builders_staging_is_swept_by_the_workers(cluster: Cluster):
    figures = Figures("staging sweep after kill -9 mid-build")
    started = time.monotonic()
    doomed = cluster.worker(staging_sweep_interval_s=INTERVAL_S)
    fasta = cluster.genome()
    key = cluster.submit_paused(CacheRequest(fasta=fasta), "building", 60)
    figures.jobs = figures.rounds = 1
    cluster.marker("building", key)
    (staged,) = fasta.parent.glob(f"*{STAGING_MARK}*")
    survivor = cluster.worker(staging_sweep_interval_s=INTERVAL_S)
    doomed.kill()
    killed_at = time.monotonic()
    while staged.exists():
        # Within one interval of the survivor's first sweep; its first comes one interval
        # after it started, so allow two and a little.
        assert time.monotonic() - killed_at < 2 * INTERVAL_S + 3.0, "staging not swept"
        time.sleep(0.1)
    took = time.monotonic() - killed_at
    print(f"SWEEP staging of a killed builder removed {took:.1f} s after the kill")
    assert "staging sweep: removed" in survivor.log.read_text()
    (record,) = settle(cluster, [key], figures, timeout=60)
    assert record is not None and record.worker.startswith(survivor.name + "@")
    figures.duplicates = cluster.builds_beyond_one(1)
    sweep_orphans(cluster, figures)  # what `farm gc` would find now: nothing
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
    assert figures.cleaned == 0, "farm gc found what the workers should have swept"
    assert books_balanced(cluster.registry())
