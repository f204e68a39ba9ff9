"""Duplicate deliveries: many submitters, forged duplicate messages, redeliveries of builds
longer than the visibility timeout. Each key is built once, and a duplicate frees its worker
slot at once instead of waiting for the holder."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from farm.config import Settings
from farm.kinds import CacheRequest
from farm.queue import Sender
from tests.faults.harness import Cluster, Figures, books_balanced, settle, sweep_orphans

pytestmark = pytest.mark.faults


def _submit_many_times(args: tuple[str, str, list[str], int]) -> tuple[set[str], int]:
    from farm.client import Farm
    from farm.registry import Registry

    settings_json, url, dests, times = args
    settings = Settings.model_validate_json(settings_json)
    fasta = dests[0].rsplit("/", 1)[0] + "/lambda_NC_001416.1.fa"
    with Farm(settings, Registry.from_url(url), Sender(settings, url)) as farm:
        requests = [CacheRequest(fasta=fasta, dest=d) for d in dests] * times
        submissions = farm.submit_many(requests)
        return {s.key for s in submissions}, sum(s.enqueued for s in submissions)


def test_a_duplicate_storm_builds_each_key_once_and_holds_no_slot(cluster: Cluster):
    """6 clients x 25 submissions of 3 requests and 39 forged duplicate messages, while the
    3 builds run for 6 s on 2 workers of 2 slots: a small build submitted in the middle of the
    storm still gets the fourth slot, because duplicates free theirs at once."""
    figures = Figures("duplicate storm (6 clients, forged duplicates)")
    started = time.monotonic()
    for _ in range(2):
        cluster.worker(concurrency=2)
    fasta = cluster.genome()
    dests = [str(fasta.parent / f"storm{i}.gvlfa") for i in range(3)]
    settings = cluster.settings()
    for d in dests:
        cluster.plan_pause(CacheRequest(fasta=fasta, dest=d), "building", 6)
    args = (settings.model_dump_json(), cluster.url, dests, 25)
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        results = pool.map(_submit_many_times, [args] * 6)
    keys = sorted(set().union(*(k for k, _ in results)))
    assert len(keys) == len(dests)
    assert sum(n for _, n in results) == len(keys), "one message per key, whoever submits"
    figures.jobs = len(keys)
    # Forged duplicates straight to the queue, as a redelivery storm would leave them.
    records = cluster.registry().get_many(keys)
    sender = Sender(settings, cluster.url)
    sender.send([r.key for r in records if r is not None] * 13)
    sender.close()
    figures.rounds = 1
    # With 3 slots busy building and duplicates in the queue, the fourth slot must serve this.
    small = cluster.farm().submit(CacheRequest(fasta=fasta, dest=fasta.parent / "small.gvlfa"))
    small_started = time.monotonic()
    settle(cluster, [small.key], figures, timeout=60)
    small_waited = time.monotonic() - small_started
    settle(cluster, keys, figures, timeout=60)
    # Submitted again once valid, by as many clients: answered from the registry, never queued.
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        again = pool.map(_submit_many_times, [args] * 6)
    assert sum(n for _, n in again) == 0, "a valid record never turns back into queued"
    figures.duplicates = cluster.publishes() - len(keys) - 1
    sweep_orphans(cluster, figures)
    figures.notes.append(f"small build done {small_waited:.1f} s after submission")
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
    assert books_balanced(cluster.registry())


def test_a_build_longer_than_the_visibility_timeout_runs_once(cluster: Cluster):
    figures = Figures("build longer than the visibility timeout")
    started = time.monotonic()
    for _ in range(3):
        cluster.worker(visibility_timeout_s=1.0)
    fasta = cluster.genome()
    key = cluster.submit_paused(CacheRequest(fasta=fasta), "building", 6)
    figures.jobs = figures.rounds = 1
    settle(cluster, [key], figures, timeout=60)
    redeliveries = cluster.log_count(f"farm.build[{key}] received") - 1
    figures.notes.append(f"{redeliveries} redeliveries, each dropped at once")
    figures.duplicates = cluster.log_count("BUILD-START") - 1
    sweep_orphans(cluster, figures)
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
    assert redeliveries >= 1, "the broker did redeliver the running build's message"
