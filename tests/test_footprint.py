"""What Redis holds per request: issue 11's budget, measured as Redis counts it (used_memory),
on a real server, through the real submission path."""

from __future__ import annotations

from pathlib import Path

from farm.client import Farm
from farm.config import QUEUE, Settings
from farm.kinds import CacheRequest
from farm.queue import Sender
from farm.records import Status
from farm.registry import Registry
from tests.test_registry import realistic

LAMBDA = "lambda_NC_001416.1.fa"


def _used(registry: Registry) -> int:
    return int(registry._r.info("memory")["used_memory"])


def test_a_queued_request_costs_at_most_1500_bytes_with_its_message(
    registry: Registry, farm_settings: Settings, redis_url: str, genomes: Path
):
    """One genome to many destinations, as a lab submits a cohort: record, bookkeeping of
    keys in flight and the Celery message in the queue."""
    n = 4_000
    farm = Farm(farm_settings, registry, Sender(farm_settings, redis_url))
    farm.warn_if_no_worker = lambda: True  # type: ignore[method-assign]  # none, on purpose
    fasta = genomes / LAMBDA
    before = _used(registry)
    submitted = farm.submit_many(
        [CacheRequest(fasta=fasta, dest=genomes / "builds" / f"g{i:07d}.gvlfa") for i in range(n)]
    )
    per_request = (_used(registry) - before) / n
    farm.close()
    assert all(s.enqueued for s in submitted) and registry._r.llen(QUEUE) == n
    assert per_request <= 1500, f"{per_request:.0f} B per queued request"


def test_a_valid_record_costs_at_most_600_bytes(registry: Registry):
    """As a worker leaves it (its grant started and finished): compressed record, destination
    index and the key's generation (the completions stream is bounded whatever the
    registry's size, so it is left out)."""
    n = 5_000
    before = _used(registry)
    for start in range(0, n, 500):
        registry.claim_many(
            [realistic(f"{i:064x}", Status.QUEUED, i) for i in range(start, start + 500)],
            send_grace_s=60,
        )
        for i in range(start, start + 500):
            key = f"{i:064x}"
            generation = registry.start(key, "celery@worker-1/0123abcd", 60).generation
            registry.finish(realistic(key, Status.VALID, i), "celery@worker-1/0123abcd", generation)
    registry._r.delete("farm:done")
    for name in registry._r.scan_iter(match="farm:progress:*", count=1000):
        registry._r.delete(name)  # a build's progress expires one lease TTL after its end
    per_record = (_used(registry) - before) / n
    assert per_record <= 600, f"{per_record:.0f} B per valid record"
