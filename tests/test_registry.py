"""The registry's contract, on a real Redis server."""

from __future__ import annotations

import time

from farm.fingerprint import Fingerprint
from farm.records import ArtifactRecord, Status
from farm.registry import Registry, Start

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


def lease(registry: Registry, key: str, holder: str, ttl_s: float) -> int:
    """Take the lease on ``key`` as a builder does, claiming the key first if need be; the
    grant's generation (0: not leased)."""
    if registry.get(key) is None:
        claim(registry, record(key))
    return registry.start(key, holder, ttl_s).generation


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
    assert lease(registry, "k", "a", 0.2)
    registry.confirm_sent(["k"])  # a late confirmation must not drop the builder's deadline
    assert registry.due_keys(time.time()) == []
    assert registry.due_keys(time.time() + 0.3) == ["k"]


def test_a_builder_that_lost_its_lease_never_overwrites_another_verdict(registry: Registry):
    registry.put(record("k", Status.VALID))
    late = record("k", Status.FAILED).evolve(error="boom")
    assert registry.finish(late, "zombie").status is Status.VALID
    registry.put(record("k", Status.BUILDING))
    gen = lease(registry, "k", "b", 5)
    assert gen
    assert registry.finish(late, "zombie", gen).status is Status.BUILDING  # b still builds
    done = record("k", Status.VALID)
    assert registry.finish(done, "b", gen) == done
    assert registry.lease_holder("k") is None
    assert registry.inflight_keys(time.time(), 0, 10) == []


def test_a_handed_back_key_is_queued_due_now_and_its_attempt_not_counted(registry: Registry):
    building = record("k", Status.BUILDING)
    registry.put(building)
    started = registry.start("k", "a", 30)
    assert started.attempt == 1
    assert not registry.hand_back(building, "b", started.generation)
    assert registry.hand_back(building, "a", started.generation)
    assert registry.get("k").status is Status.QUEUED
    assert registry.lease_holder("k") is None
    assert registry.due_keys(time.time()) == ["k"]
    assert registry.start("k", "c", 30).attempt == 1, "the interrupted attempt was not counted"


def test_terminal_records_leave_the_bookkeeping_of_keys_in_flight(registry: Registry):
    claim(registry, record("k"), grace=0.0)
    registry.put(record("k", Status.FAILED))
    assert registry.due_keys(time.time()) == []
    assert registry.inflight_keys(time.time(), 0, 10) == []


def test_a_builder_starts_only_keys_in_flight_and_one_holder_at_a_time(registry: Registry):
    assert registry.start("unknown", "a", 5) == Start(False, None, 0, 0)
    registry.put(record("done", Status.VALID))
    started = registry.start("done", "a", 5)
    assert not started.leased and started.record.status is Status.VALID
    assert registry.lease_holder("done") is None
    claim(registry, record("k"))
    first = registry.start("k", "a", 5)
    assert first.leased and first.attempt == 1 and first.record.status is Status.BUILDING
    assert registry.get("k").status is Status.BUILDING
    ((_, progress),) = registry.get_many_raw(["k"])
    assert progress["worker"] == "a"  # who builds, in the progress (the record is not rewritten)
    assert registry.start("k", "a", 5).leased, "a retried start by the holder succeeds"
    assert not registry.start("k", "b", 5).leased
    assert registry.lease_holder("k") == "a"


def test_leases_are_exclusive_renewable_and_released_only_by_their_holder(registry: Registry):
    gen = lease(registry, "k", "a", 0.5)
    assert gen
    assert not lease(registry, "k", "b", 0.5)
    assert not registry.renew_lease("k", "b", gen, 5)
    assert registry.renew_lease("k", "a", gen, 5)
    registry.release_lease("k", "b")
    assert registry.lease_holder("k") == "a"
    assert registry.live_lease_for_job("k")
    registry.release_lease("k", "a")
    assert registry.lease_holder("k") is None
    assert not registry.live_lease_for_job("k")


def test_records_do_not_expire_by_default_and_batches_read_in_one_call(registry: Registry):
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


def test_attempts_count_until_the_key_finishes(registry: Registry):
    claim(registry, record("k"))
    assert [registry.start("k", "a", 5).attempt for _ in range(3)] == [1, 2, 3]
    registry.finish(record("k", Status.FAILED), "a", registry.generation("k"))
    claim(registry, record("k"))
    assert registry.start("k", "a", 5).attempt == 1


def test_workers_are_live_while_they_heartbeat(registry: Registry):
    registry.worker_seen("w1")
    assert registry.live_workers(within_s=5) == ["w1"]
    registry.worker_gone("w1")
    assert registry.live_workers(within_s=5) == []


def test_a_lease_runs_out_within_its_ttl_unless_renewed(registry: Registry):
    assert registry.lease_remaining_s("k") == 0
    gen = lease(registry, "k", "a", 2.0)
    assert gen
    assert 0 < registry.lease_remaining_s("k") <= 2.0
    assert registry.renew_lease("k", "a", gen, 30.0)
    assert 2.0 < registry.lease_remaining_s("k") <= 30.0


def test_a_lease_that_ran_out_unclaimed_is_taken_back_by_its_holder(registry: Registry):
    gen = lease(registry, "k", "a", 0.1)
    time.sleep(0.2)
    assert registry.renew_lease("k", "a", gen, 5.0)
    assert registry.lease_holder("k") == "a"
    gen_a = lease(registry, "j", "a", 0.1)
    time.sleep(0.2)
    gen_b = lease(registry, "j", "b", 5.0)
    assert gen_b == gen_a + 1
    assert not registry.renew_lease("j", "a", gen_a, 5.0), "taken by another meanwhile: lost"
    assert registry.lease_holder("j") == "b"


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
    registry._r.set("farm:progress:done", "{}")
    assert registry.key_for_dest("/d/a") == "done"
    assert sorted(registry.forget(["done", "busy", "old", "missing"])) == ["done", "old"]
    assert registry.get("done") is None and registry.get_many_raw(["done"]) == [(None, None)]
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
    gen = lease(registry, key, "w1", 5)
    assert registry.live_lease_for_job(job) and not registry.live_lease_for_job("e" * 24)
    registry.finish(rec.evolve(status=Status.VALID), "w1", gen)
    assert not registry.live_lease_for_job(job)

    registry.put(rec)
    gen = lease(registry, key, "w2", 5)
    assert registry.hand_back(rec, "w2", gen)
    assert not registry.live_lease_for_job(job)

    gen = lease(registry, key, "w3", 0.2)
    assert registry.renew_lease(key, "w3", gen, 0.3)
    assert registry.live_lease_for_job(job)
    time.sleep(0.45)
    assert not registry.live_lease_for_job(job)


def realistic(key: str, status: Status = Status.VALID, n: int = 0) -> ArtifactRecord:
    """A valid cache record as a worker writes it, with a lab's long paths."""
    fasta = f"/scratch/lab/references/GRCh38/GRCh38.primary_assembly.genome.{n:07d}.fa"
    now = time.time()
    return ArtifactRecord(
        key=key,
        kind="cache",
        dest=f"{fasta}.gvlfa",
        request={"kind": "cache", "fasta": fasta, "dest": f"{fasta}.gvlfa"},
        sources={"fasta": Fingerprint(n_bytes_hashed=1 << 20, digest=f"{n:0128x}", size_bytes=n)},
        status=status,
        created_at=now,
        updated_at=now,
        started_at=now,
        finished_at=now,
        build_seconds=12.345678,
        size_bytes=3_100_000_000,
        checksum=f"crc32x4MiB:{n:064x}",
        worker=f"celery@node{n % 97}.cluster.lab.org",
        action="built",
    )


def test_a_record_is_stored_small_and_read_back_whole(registry: Registry):
    rec = realistic("e" * 64, n=7)
    registry.put(rec)
    raw = registry._r.get("farm:rec:" + "e" * 64)
    assert raw[:3] == b"v-1", "status, rebuild flag and format lead, for the Lua scripts"
    assert len(raw) < 0.5 * len(rec.model_dump_json())
    assert registry.get("e" * 64) == rec
    assert registry.get_many_raw(["e" * 64])[0][0] == rec.model_dump(mode="json")
    assert registry.statuses(["e" * 64, "nope"]) == ["valid", None]


def test_a_record_in_the_older_plain_json_form_is_still_read_and_claimed(registry: Registry):
    registry._r.set("farm:rec:k", record("k", Status.STALE).model_dump_json())
    assert registry.get("k").status is Status.STALE
    taken = claim(registry, record("k"))
    assert taken.enqueue and taken.record.rebuild


def test_unusable_records_expire_when_asked_and_the_index_names_only_valid_ones(
    registry: Registry,
):
    expiring = Registry(registry._r, forget_unusable_after_s=0.3)
    expiring.put(record("ok", Status.VALID, dest="/d/ok"))
    expiring.put(record("gone", Status.VALID, dest="/d/gone"))
    assert expiring.key_for_dest("/d/gone") == "gone"
    expiring.put(record("gone", Status.STALE, dest="/d/gone"))  # its source changed
    assert expiring.key_for_dest("/d/gone") is None
    claim(expiring, record("bad", dest="/d/bad"))
    expiring.finish(record("bad", Status.FAILED, dest="/d/bad"), holder="")
    assert registry._r.ttl("farm:rec:ok") == -1
    assert 0 < registry._r.pttl("farm:rec:bad") <= 300
    claim(expiring, record("bad", dest="/d/bad"))  # submitted again: in flight, kept
    assert registry._r.ttl("farm:rec:bad") == -1
    time.sleep(0.4)
    assert _all_keys(registry) == ["bad", "ok"]
    assert registry.key_for_dest("/d/ok") == "ok"


def test_completions_announce_each_key_that_turns_terminal(registry: Registry):
    registry.put(record("before", Status.VALID, dest="/d/before"))
    cursor = registry.completion_cursor()
    assert registry.completions(cursor, block_s=0.01) == []
    for key in ("a", "b"):
        claim(registry, record(key, dest=f"/d/{key}"))
    registry.finish(record("a", Status.VALID, dest="/d/a"), holder="")
    registry.put(record("b", Status.FAILED, dest="/d/b"))
    done = registry.completions(cursor, block_s=0.01)
    assert [key for _, key in done] == ["a", "b"]
    assert registry.completions(done[-1][0], block_s=0.01) == []
    assert not registry.completions_lost_after(cursor)
    registry._r.xtrim("farm:done", maxlen=1, approximate=False)  # trimmed before it read them
    assert registry.completions_lost_after(cursor)


# -- fencing ---------------------------------------------------------------------------------
def test_a_takeover_fences_every_word_of_the_builder_it_replaced(registry: Registry):
    """A builder frozen or cut off past its lease comes back after another took its key over:
    nothing it sends (renew, progress, publish, finish, hand back) is taken any more."""
    claim(registry, record("k"))
    gen_a = registry.start("k", "a", 0.1).generation
    time.sleep(0.15)  # a's lease runs out while it is frozen
    gen_b = registry.start("k", "b", 5).generation
    assert gen_b == gen_a + 1
    assert not registry.renew_lease("k", "a", gen_a, 5)
    assert registry.lease_holder("k") == "b", "a late renewal never recreates a lease"
    assert registry.report_progress("k", "a", gen_a, {"done": 1}, 5) == (False, None)
    assert not registry.may_publish("k", "a", gen_a, "/d/x.gvlfa", watch_s=5).allowed
    assert not registry.still_granted("k", "a", gen_a)
    building = record("k", Status.BUILDING)
    assert not registry.hand_back(building, "a", gen_a)
    late = record("k", Status.VALID).evolve(worker="a")
    assert registry.finish(late, "a", gen_a).status is Status.BUILDING
    assert registry.may_publish("k", "b", gen_b, "/d/x.gvlfa", watch_s=5).allowed
    verdict = record("k", Status.FAILED).evolve(error="source changed", worker="b")
    assert registry.finish(verdict, "b", gen_b) == verdict
    # Replayed after the heal, in any order: the verdict stands and no lease comes back.
    assert not registry.renew_lease("k", "a", gen_a, 5)
    assert not registry.renew_lease("k", "b", gen_b, 5), "a finished grant is spent"
    assert registry.finish(late, "a", gen_a).error == "source changed"
    assert registry.finish(record("k", Status.VALID), "b", gen_b).error == "source changed"
    assert registry.lease_holder("k") is None and not registry.hand_back(building, "b", gen_b)


def test_a_lease_run_out_with_nobody_granted_since_is_still_its_builders(registry: Registry):
    """A Redis outage longer than the TTL: no new grant, so the builder takes its lease back
    and finishes; the generation is what fences, not the lease."""
    claim(registry, record("k"))
    gen = registry.start("k", "a", 0.1).generation
    time.sleep(0.15)
    assert registry.may_publish("k", "a", gen, "/d/x.gvlfa", watch_s=5).allowed
    assert registry.renew_lease("k", "a", gen, 5) and registry.lease_holder("k") == "a"
    done = record("k", Status.VALID)
    assert registry.finish(done, "a", gen) == done


def test_an_older_request_never_takes_a_destination_from_a_newer_one(registry: Registry):
    dest = "/d/shared.gvlfa"
    claim(registry, record("k1", dest=dest))
    gen1 = registry.start("k1", "a", 5).generation
    claim(registry, record("k2", dest=dest))  # the source changed: a newer request
    gen2 = registry.start("k2", "b", 5).generation
    refused = registry.may_publish("k1", "a", gen1, dest, watch_s=5)
    assert not refused.allowed and refused.newer_key == "k2"
    assert registry.may_publish("k2", "b", gen2, dest, watch_s=5).allowed
    registry.finish(record("k2", Status.VALID, dest=dest), "b", gen2)
    assert registry.may_publish("k1", "a", gen1, dest, watch_s=5).newer_key == "k2"
    # Asked for again, k1 is the newest request: it may publish.
    registry.finish(record("k1", Status.FAILED, dest=dest), "a", gen1)
    assert claim(registry, record("k1", dest=dest)).enqueue
    gen1 = registry.start("k1", "c", 5).generation
    assert registry.may_publish("k1", "c", gen1, dest, watch_s=5).allowed


def test_generations_only_grow_and_outlive_their_records(registry: Registry):
    claim(registry, record("k"))
    gen = registry.start("k", "a", 5).generation
    registry.finish(record("k", Status.VALID), "a", gen)
    assert registry.forget(["k"]) == ["k"]
    assert registry.generation("k") == gen, "forgetting a record keeps its counter"
    claim(registry, record("k"))
    assert registry.start("k", "b", 5).generation == gen + 1


def test_generations_are_seeded_from_what_artifacts_record(registry: Registry):
    """A Redis that lost its counters must not hand out a number an artifact already has."""
    assert registry.raise_generation("k", 7) == 7
    assert registry.raise_generation("k", 3) == 7, "never lowered"
    claim(registry, record("k"))
    gen = registry.start("k", "a", 5).generation
    assert gen == 8
    assert registry.raise_generation("k", 20) == 8, "a live grant is not moved under its holder"
    assert registry.seed_generation("k", "a", gen, 11) == 12
    assert registry.generation("k") == 12
    assert registry.seed_generation("k", "a", gen, 30) == 0, "the old number is no grant"
    assert registry.renew_lease("k", "a", 12, 5)


def test_a_grant_allowed_to_publish_is_watched_until_it_finishes(registry: Registry):
    claim(registry, record("k"))
    gen = registry.start("k", "a", 5).generation
    assert registry.may_publish("k", "a", gen, "/d/x.gvlfa", watch_s=0).allowed
    assert registry.publish_watches(time.time()) == [("k", gen)]
    registry.finish(record("k", Status.VALID), "a", gen)
    assert registry.publish_watches(time.time() + 3600) == []
