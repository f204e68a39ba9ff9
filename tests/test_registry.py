"""The registry's contract, on a real Redis server."""

from __future__ import annotations

import time

from farm.fingerprint import Fingerprint
from farm.registry import ArtifactRecord, Registry, Status

FP = Fingerprint(n_bytes_hashed=4, digest="ab" * 64, size_bytes=4)


def record(key: str, status: Status = Status.QUEUED, dest: str = "/d/x.gvlfa") -> ArtifactRecord:
    now = time.time()
    return ArtifactRecord(
        key=key,
        kind="cache",
        dest=dest,
        request={"kind": "cache", "fasta": "/d/x", "dest": dest},
        sources={"fasta": FP},
        status=status,
        created_at=now,
        updated_at=now,
    )


def claim(registry: Registry, rec: ArtifactRecord, *, present: bool = True, after: float = 60):
    return registry.claim_many([rec], dest_present=[present], requeue_after=after)[0]


def test_only_the_first_claim_of_a_key_enqueues(registry: Registry):
    recs = [record("k1")] * 50
    claims = registry.claim_many(recs, dest_present=[True] * 50, requeue_after=60)
    assert [c.enqueue for c in claims] == [True] + [False] * 49
    assert registry.get("k1").status is Status.QUEUED


def test_a_valid_record_is_answered_unless_its_artifact_vanished(registry: Registry):
    registry.put(record("k", Status.VALID))
    assert not claim(registry, record("k")).enqueue
    assert claim(registry, record("k"), present=False).enqueue


def test_failed_stale_and_invalid_records_are_rebuilt_on_resubmission(registry: Registry):
    for status in (Status.FAILED, Status.STALE, Status.INVALID):
        registry.put(record("k", status))
        assert claim(registry, record("k")).enqueue


def test_a_building_record_whose_lease_is_gone_is_taken_over(registry: Registry):
    registry.put(record("k", Status.BUILDING))
    assert registry.acquire_lease("k", "holder", 0.2)
    assert not claim(registry, record("k")).enqueue
    time.sleep(0.3)
    assert claim(registry, record("k")).enqueue


def test_a_queued_record_is_requeued_only_after_requeue_after(registry: Registry):
    registry.put(record("k").evolve(updated_at=time.time() - 10))
    assert not claim(registry, record("k"), after=60).enqueue
    assert claim(registry, record("k"), after=5).enqueue


def test_leases_are_exclusive_renewable_and_released_only_by_their_holder(registry: Registry):
    assert registry.acquire_lease("k", "a", 0.5)
    assert not registry.acquire_lease("k", "b", 0.5)
    assert not registry.renew_lease("k", "b", 5)
    assert registry.renew_lease("k", "a", 5)
    registry.release_lease("k", "b")
    assert registry.lease_holder("k") == "a"
    assert registry.live_lease_with_prefix("k")
    registry.release_lease("k", "a")
    assert registry.lease_holder("k") is None
    assert not registry.live_lease_with_prefix("k")


def test_records_do_not_expire_and_batches_read_in_one_call(registry: Registry):
    for i in range(5):
        registry.put(record(f"k{i}", Status.VALID, dest=f"/d/{i}"))
    assert registry._r.ttl("farm:rec:k0") == -1
    got = registry.get_many(["k0", "missing", "k4"])
    assert [r and r.key for r in got] == ["k0", None, "k4"]
    assert registry.keys() == [f"k{i}" for i in range(5)]


def test_a_new_valid_key_for_a_destination_supersedes_the_old_one(registry: Registry):
    registry.put(record("old", Status.VALID))
    registry.put(record("new", Status.VALID))
    old = registry.get("old")
    assert old.status is Status.STALE
    assert "new" in old.error
    assert registry.key_for_dest("/d/x.gvlfa") == "new"


def test_attempts_count_until_cleared(registry: Registry):
    assert [registry.count_attempt("k") for _ in range(3)] == [1, 2, 3]
    registry.clear_attempts("k")
    assert registry.count_attempt("k") == 1


def test_workers_are_live_while_they_heartbeat(registry: Registry):
    registry.worker_seen("w1")
    assert registry.live_workers(within_s=5) == ["w1"]
    registry.worker_gone("w1")
    assert registry.live_workers(within_s=5) == []


def test_a_lease_runs_out_within_its_ttl_unless_renewed(registry: Registry):
    assert registry.lease_remaining_s("k") == 0
    assert registry.acquire_lease("k", "a", 2.0)
    assert 0 < registry.lease_remaining_s("k") <= 2.0
    assert registry.renew_lease("k", "a", 30.0)
    assert 2.0 < registry.lease_remaining_s("k") <= 30.0
