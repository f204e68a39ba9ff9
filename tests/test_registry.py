"""The registry's contract, on a real Redis server."""

from __future__ import annotations

import time

from farm.fingerprint import Fingerprint
from farm.records import ArtifactRecord, Status
from farm.registry import Registry

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


def claim(registry: Registry, rec: ArtifactRecord, grace: float = 60.0):
    return registry.claim_many([rec], send_grace_s=grace)[0]


def test_only_the_first_claim_of_a_key_enqueues(registry: Registry):
    claims = registry.claim_many([record("k1")] * 50, send_grace_s=60)
    assert [c.enqueue for c in claims] == [True] + [False] * 49
    assert registry.get("k1").status is Status.QUEUED


def test_a_valid_record_is_answered_and_only_a_compare_and_set_takes_it_back(
    registry: Registry,
):
    registry.put(record("k", Status.VALID))
    answered = claim(registry, record("k"))
    assert not answered.enqueue and answered.record.status is Status.VALID
    # The client found the artifact gone: it takes the key only if the record is unchanged.
    assert registry.replace_if_unchanged([(answered.raw, record("k"))], send_grace_s=60) == [True]
    assert registry.get("k").status is Status.QUEUED


def test_a_valid_record_rewritten_after_it_was_read_is_not_taken_back(registry: Registry):
    """The race that turned valid records back to queued: a publish between the client's
    read and its take wins."""
    registry.put(record("k", Status.QUEUED))
    seen = claim(registry, record("k"))
    registry.put(record("k", Status.VALID))  # a worker publishes in between
    assert registry.replace_if_unchanged([(seen.raw, record("k"))], send_grace_s=60) == [False]
    assert registry.get("k").status is Status.VALID


def test_failed_records_are_rebuilt_and_invalid_or_stale_ones_never_reused(registry: Registry):
    registry.put(record("k", Status.FAILED))
    taken = claim(registry, record("k"))
    assert taken.enqueue and not taken.record.rebuild
    for status in (Status.STALE, Status.INVALID):
        registry.put(record("k", status))
        taken = claim(registry, record("k"))
        assert taken.enqueue and taken.record.rebuild
        assert registry.get("k").rebuild, "the worker must rebuild, not reuse what is there"


def test_a_key_in_flight_is_followed_not_requeued_by_a_client(registry: Registry):
    registry.put(record("k", Status.BUILDING).evolve(updated_at=time.time() - 3600))
    assert not claim(registry, record("k")).enqueue
    registry.put(record("k", Status.QUEUED).evolve(updated_at=time.time() - 3600))
    assert not claim(registry, record("k")).enqueue


def test_a_claim_is_due_until_its_message_is_confirmed_sent(registry: Registry):
    claim(registry, record("k"), grace=0.0)
    assert registry.due_keys(time.time()) == ["k"]
    registry.confirm_sent(["k"])
    assert registry.due_keys(time.time()) == []
    assert registry.inflight_keys(time.time(), 0, 10) == ["k"]


def test_a_lease_makes_its_key_due_when_it_would_run_out(registry: Registry):
    claim(registry, record("k"))
    registry.confirm_sent(["k"])
    assert registry.acquire_lease("k", "a", 0.2)
    registry.confirm_sent(["k"])  # a late confirmation must not drop the builder's deadline
    assert registry.due_keys(time.time()) == []
    assert registry.due_keys(time.time() + 0.3) == ["k"]


def test_a_builder_that_lost_its_lease_never_overwrites_another_verdict(registry: Registry):
    registry.put(record("k", Status.VALID))
    late = record("k", Status.FAILED).evolve(error="boom")
    assert registry.finish(late, "zombie").status is Status.VALID
    registry.put(record("k", Status.BUILDING))
    assert registry.acquire_lease("k", "b", 5)
    assert registry.finish(late, "zombie").status is Status.BUILDING  # b still builds
    done = record("k", Status.VALID)
    assert registry.finish(done, "b") == done
    assert registry.lease_holder("k") is None
    assert registry.inflight_keys(time.time(), 0, 10) == []


def test_a_handed_back_key_is_queued_due_now_and_its_attempt_not_counted(registry: Registry):
    building = record("k", Status.BUILDING)
    registry.put(building)
    assert registry.acquire_lease("k", "a", 30)
    assert registry.count_attempt("k") == 1
    assert not registry.hand_back(building, "b")
    assert registry.hand_back(building, "a")
    assert registry.get("k").status is Status.QUEUED
    assert registry.lease_holder("k") is None
    assert registry.due_keys(time.time()) == ["k"]
    assert registry.count_attempt("k") == 1


def test_terminal_records_leave_the_bookkeeping_of_keys_in_flight(registry: Registry):
    claim(registry, record("k"), grace=0.0)
    registry.put(record("k", Status.FAILED))
    assert registry.due_keys(time.time()) == []
    assert registry.inflight_keys(time.time(), 0, 10) == []


def test_the_record_serializes_rebuild_first(registry: Registry):
    """The claim script relies on it to flag a rebuild without decoding JSON in Lua."""
    assert record("k").model_dump_json().startswith('{"rebuild":false,')


def test_leases_are_exclusive_renewable_and_released_only_by_their_holder(registry: Registry):
    assert registry.acquire_lease("k", "a", 0.5)
    assert registry.acquire_lease("k", "a", 0.5), "a retried acquire by the holder succeeds"
    assert not registry.acquire_lease("k", "b", 0.5)
    assert not registry.renew_lease("k", "b", 5)
    assert registry.renew_lease("k", "a", 5)
    registry.release_lease("k", "b")
    assert registry.lease_holder("k") == "a"
    assert registry.live_lease_for_job("k")
    registry.release_lease("k", "a")
    assert registry.lease_holder("k") is None
    assert not registry.live_lease_for_job("k")


def test_records_do_not_expire_and_batches_read_in_one_call(registry: Registry):
    for i in range(5):
        registry.put(record(f"k{i}", Status.VALID, dest=f"/d/{i}"))
    assert registry._r.ttl("farm:rec:k0") == -1
    got = registry.get_many(["k0", "missing", "k4"])
    assert [r and r.key for r in got] == ["k0", None, "k4"]
    assert _all_keys(registry) == [f"k{i}" for i in range(5)]


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


def test_a_lease_that_ran_out_unclaimed_is_taken_back_by_its_holder(registry: Registry):
    assert registry.acquire_lease("k", "a", 0.1)
    time.sleep(0.2)
    assert registry.renew_lease("k", "a", 5.0)
    assert registry.lease_holder("k") == "a"
    assert registry.acquire_lease("j", "a", 0.1)
    time.sleep(0.2)
    assert registry.acquire_lease("j", "b", 5.0)
    assert not registry.renew_lease("j", "a", 5.0), "taken by another meanwhile: lost"


def test_silent_workers_are_reaped_once(registry: Registry):
    registry.worker_seen("w1")
    registry._r.zadd("farm:workers", {"w2": time.time() - 60})
    assert registry.reap_silent_workers(10) == ["w2"]
    assert registry.reap_silent_workers(10) == []
    assert registry.live_workers(within_s=5) == ["w1"]


def _all_keys(registry: Registry) -> list[str]:
    return sorted(key for batch in registry.key_batches() for key in batch)


def test_keys_stream_in_batches_and_records_as_json(registry: Registry):
    for i in range(2_500):
        registry.put(record(f"k{i:05d}", Status.VALID, dest=f"/d/{i}"))
    batches = list(registry.key_batches(batch=200))
    assert len(batches) > 1 and max(len(b) for b in batches) < 1_000
    assert len({k for b in batches for k in b}) == 2_500
    raw = list(registry.raw_records(batch=300))
    assert sorted(r["key"] for r in raw) == [f"k{i:05d}" for i in range(2_500)]
    assert {r["status"] for r in raw} == {"valid"}


def test_forget_keeps_keys_in_flight_and_the_index_of_another_key(registry: Registry):
    registry.put(record("done", Status.VALID, dest="/d/a"))
    registry.put(record("busy", Status.BUILDING, dest="/d/b"))
    registry.put(record("old", Status.VALID, dest="/d/c"))
    registry.put(record("new", Status.VALID, dest="/d/c"))  # the index of /d/c names "new"
    registry.report_progress("done", {"done": 1}, ttl_s=60)
    assert registry.key_for_dest("/d/a") == "done"
    assert sorted(registry.forget(["done", "busy", "old", "missing"])) == ["done", "old"]
    assert registry.get("done") is None and registry.progress_of(["done"]) == [None]
    assert registry.key_for_dest("/d/a") is None
    assert registry.get("busy") is not None
    assert registry.key_for_dest("/d/c") == "new"  # "old" went, the index still names "new"
    assert _all_keys(registry) == ["busy", "new"]
    assert registry.forget(["busy"], in_flight=True) == ["busy"]


def test_the_job_tag_of_a_lease_lives_and_dies_with_it(registry: Registry):
    """gc asks about a staging dir by its owner tag (a key's first 24 characters) in one
    lookup: the tag is set with the lease, renewed with it, and gone with it whichever way
    the lease ends (finish, hand back, expiry)."""
    key = "f" * 64
    job = key[:24]
    rec = record(key, Status.BUILDING)
    registry.put(rec)
    assert registry.acquire_lease(key, "w1", 5)
    assert registry.live_lease_for_job(job) and not registry.live_lease_for_job("e" * 24)
    registry.finish(rec.evolve(status=Status.VALID), "w1")
    assert not registry.live_lease_for_job(job)

    registry.put(rec)
    assert registry.acquire_lease(key, "w2", 5)
    assert registry.hand_back(rec, "w2")
    assert not registry.live_lease_for_job(job)

    assert registry.acquire_lease(key, "w3", 0.2)
    assert registry.renew_lease(key, "w3", 0.3)
    assert registry.live_lease_for_job(job)
    time.sleep(0.45)
    assert not registry.live_lease_for_job(job)
