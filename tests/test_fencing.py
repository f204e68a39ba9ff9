"""What an artifact records of the grant that built it, and how the farm uses it: a late
builder's publish is found by ``farm verify`` and repaired by the watchdog, and reindex seeds
the generations a Redis that lost its counters would hand out again. A real Redis, real
builds, no broker (the watchdog's sends are stood in for)."""

from __future__ import annotations

import time
from pathlib import Path

from farm import kinds, maintenance, service
from farm.artifacts import gvlfa
from farm.config import Settings
from farm.kinds import CacheRequest
from farm.publish import Fence, Owner
from farm.records import ArtifactRecord, Status
from farm.registry import Registry
from farm.requests import prepare, request_key
from farm.watchdog import Watchdog
from tests.test_watchdog import FakeBroker

LAMBDA = "lambda_NC_001416.1.fa"


def _built(genomes: Path, registry: Registry, settings: Settings) -> ArtifactRecord:
    request = prepare(CacheRequest(fasta=genomes / LAMBDA), settings.roots)
    key, sources = request_key(request)
    registry.claim_many([service.queued_record(request, key, sources)], send_grace_s=60)
    record = service.ensure(key, service.Context(registry, settings, "w1"))
    assert record is not None and record.status is Status.VALID
    return record


def _late_publish(record: ArtifactRecord, generation: int) -> None:
    """What a builder frozen inside the unfenceable gap leaves: its own artifact, published."""
    fence = Fence(
        record.key,
        generation,
        may_publish=lambda: None,
        still_granted=lambda: True,
        lock_wait_s=1.0,
    )
    gvlfa.ensure_cache(
        Path(record.request["fasta"]),
        Path(record.dest),
        owner=Owner.current(record.key, fence=fence),
        force=True,
    )


def test_an_artifact_records_the_grant_that_built_it(
    genomes: Path, registry: Registry, farm_settings: Settings
):
    record = _built(genomes, registry, farm_settings)
    assert record.generation == registry.generation(record.key) >= 1
    token = kinds.fence_of(Path(record.dest))
    assert token is not None and (token.key, token.generation) == (record.key, record.generation)
    (verdict,) = maintenance.verify(registry, [record.key])
    assert verdict.status is Status.VALID


def test_verify_and_the_watchdog_find_a_late_builders_publish(
    genomes: Path, registry: Registry, farm_settings: Settings
):
    record = _built(genomes, registry, farm_settings)
    _late_publish(record, record.generation - 1 if record.generation > 1 else 0)
    (verdict,) = maintenance.verify(registry, [record.key])
    assert verdict.status is Status.INVALID and "late builder" in verdict.error
    assert verdict.rebuild

    # The watchdog, told of the late publish, rebuilds the key that should be there.
    registry.put(record)  # valid again, as it was when the late builder landed
    broker = FakeBroker()
    dog = Watchdog(registry, farm_settings, send=broker.send, broker_ids=broker.ids, name="w")
    registry.watch_publish(record.key, 0, time.time())
    report = dog.sweep()
    assert report.repaired == [record.dest] and broker.sent == [record.key]
    queued = registry.get(record.key)
    assert queued is not None and queued.status is Status.QUEUED and queued.rebuild
    rebuilt = service.ensure(record.key, service.Context(registry, farm_settings, "w2"))
    assert rebuilt is not None and rebuilt.status is Status.VALID and rebuilt.action == "rebuilt"
    token = kinds.fence_of(Path(record.dest))
    assert token is not None and token.generation == rebuilt.generation > record.generation
    assert registry.publish_watches(time.time() + 3600) == []


def test_a_consistent_destination_is_left_alone(
    genomes: Path, registry: Registry, farm_settings: Settings
):
    record = _built(genomes, registry, farm_settings)
    broker = FakeBroker()
    dog = Watchdog(registry, farm_settings, send=broker.send, broker_ids=broker.ids, name="w")
    registry.watch_publish(record.key, record.generation, time.time())
    assert dog.sweep().repaired == [] and broker.sent == []
    assert registry.publish_watches(time.time() + 3600) == []


def test_reindex_seeds_generations_above_what_artifacts_record(
    genomes: Path, registry: Registry, farm_settings: Settings, redis_url: str
):
    record = _built(genomes, registry, farm_settings)
    _late_publish(record, 41)  # an artifact from a grant this Redis never saw
    fresh = Registry.from_url(redis_url, prefix="lost:")  # a Redis that lost everything
    (found,) = maintenance.reindex(fresh, genomes, allowed=farm_settings.roots)
    assert found.key == record.key and found.generation == 41
    assert fresh.generation(record.key) == 41
    fresh.put(found.evolve(status=Status.INVALID, rebuild=True))
    request = prepare(CacheRequest(fasta=genomes / LAMBDA), farm_settings.roots)
    fresh.claim_many(
        [service.queued_record(request, record.key, request_key(request)[1])], send_grace_s=60
    )
    rebuilt = service.ensure(record.key, service.Context(fresh, farm_settings, "w3"))
    assert rebuilt is not None and rebuilt.generation == 42
