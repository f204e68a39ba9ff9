"""Losing the broker mid-build: the artifact survives, the registry recovers from disk."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from farm import maintenance
from farm.artifacts import gvlfa
from farm.artifacts.base import State
from farm.client import Farm
from farm.config import Settings
from farm.kinds import CacheRequest
from farm.queue import Sender
from farm.records import Status
from farm.registry import Registry
from tests.faults.harness import RedisProcess
from tests.support.processes import Worker, farm_env, redis_server

LAMBDA = "lambda_NC_001416.1.fa"

pytestmark = pytest.mark.slow


def test_a_broker_lost_mid_build_loses_no_artifact(genomes: Path, tmp_path: Path):
    """Redis dies mid-build and comes back from its append-only file: the build goes on and
    publishes once the registry can fence its publish again (never without it: a builder that
    cannot ask whether its grant is still the newest does not publish)."""
    server = RedisProcess(tmp_path / "own-redis", aof=True)
    url = server.url
    try:
        env = farm_env(url, tmp_path, lease_ttl_s=2, test_build_seconds=4)
        (tmp_path / "logs").mkdir()
        worker = Worker(env, "w0", tmp_path / "logs", app="tests.support.slow_app")
        try:
            worker.wait_ready()
            settings = Settings(redis_url=url, allowed_roots=str(tmp_path), lease_ttl_s=2)
            registry = Registry.from_url(url)
            request = CacheRequest(fasta=genomes / LAMBDA)
            with Farm(settings, registry, Sender(settings, url)) as farm:
                key = farm.submit(request).key
                deadline = time.monotonic() + 30
                while (r := registry.get(key)) is None or r.status is not Status.BUILDING:
                    assert time.monotonic() < deadline, "the build never started"
                    time.sleep(0.05)
                time.sleep(1.0)  # the start is in the append-only file (fsynced every second)
                server.restart(down_s=3.0)
                dest = gvlfa.default_dest(genomes / LAMBDA)
                (record,) = farm.wait([key], timeout_s=60)
                assert record is not None and record.status is Status.VALID, record
                assert dest.exists()
        finally:
            worker.kill()
    finally:
        server.stop()
    assert gvlfa.classify(dest, deep=True).state is State.FRESH
    assert not list(genomes.glob("*.farmtmp.*"))

    # A new, empty Redis: the registry is gone, the artifact is not. Reindex finds it under
    # the same key, and a resubmission is answered at once, with no worker.
    with redis_server(tmp_path / "new-redis") as url:
        registry = Registry.from_url(url)
        settings = Settings(redis_url=url, allowed_roots=str(tmp_path))
        (record,) = maintenance.reindex(registry, genomes, allowed=settings.roots)
        assert record.key == key and record.status is Status.VALID
        with Farm(settings, registry, Sender(settings, url)) as farm:
            again = farm.submit(request)
        assert again.key == key and not again.enqueued
        assert again.record.status is Status.VALID
