"""The watchdog's decisions, on a real Redis: what it sends, and what it leaves alone.

The broker is stood in for by two plain functions (what was sent, which ids the broker
holds): these tests are about the farm's own logic. The real broker and real workers are
exercised in tests/faults/.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest

from farm import stored
from farm.config import Settings
from farm.fingerprint import Fingerprint
from farm.records import ArtifactRecord, Status
from farm.registry import Registry
from farm.watchdog import Watchdog

FP = Fingerprint(n_bytes_hashed=4, digest="ab" * 64, size_bytes=4)


def record(key: str, status: Status = Status.QUEUED) -> ArtifactRecord:
    now = time.time()
    return ArtifactRecord(
        key=key,
        kind="cache",
        dest=f"/d/{key}.gvlfa",
        request={"kind": "cache", "fasta": "/d/x.fa", "dest": f"/d/{key}.gvlfa"},
        sources={"fasta": FP},
        status=status,
        created_at=now,
        updated_at=now,
    )


class FakeBroker:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.held: set[str] = set()

    def send(self, keys: Iterable[str]) -> int:
        keys = list(keys)
        self.sent.extend(keys)
        self.held.update(keys)
        return len(keys)

    def ids(self) -> set[str]:
        return set(self.held)


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def watchdog(registry: Registry, broker: FakeBroker) -> Watchdog:
    settings = Settings(redis_url="unix:///unused", lease_ttl_s=0.2, reconcile_interval_s=3600)
    dog = Watchdog(registry, settings, send=broker.send, broker_ids=broker.ids, name="w1")
    dog.sweep()  # the first sweep reconciles once; start each test from a quiet state
    return dog


def test_nothing_due_costs_nothing_and_sends_nothing(watchdog: Watchdog, broker: FakeBroker):
    report = watchdog.sweep()
    assert report.sent == [] and not report.reconciled


def test_a_claim_whose_sender_died_is_sent_after_the_grace(
    registry: Registry, watchdog: Watchdog, broker: FakeBroker
):
    registry.claim_many([record("k")], send_grace_s=0.2)  # ... and the client dies
    assert watchdog.sweep().sent == []
    time.sleep(0.25)
    assert watchdog.sweep().sent == ["k"]
    assert watchdog.sweep().sent == [], "sent once, then confirmed"


def test_a_build_whose_lease_ran_out_is_requeued_and_sent(
    registry: Registry, watchdog: Watchdog, broker: FakeBroker
):
    registry.claim_many([record("k")], send_grace_s=0.2)
    registry.confirm_sent(["k"])
    assert registry.start("k", "builder", 0.2).leased
    registry.put(registry.get("k").evolve(status=Status.BUILDING, worker="w9"))
    time.sleep(0.1)
    assert watchdog.sweep().sent == [], "the lease is alive: leave it"
    time.sleep(0.2)  # the builder died: nobody renews
    assert watchdog.sweep().sent == ["k"]
    requeued = registry.get("k")
    assert requeued.status is Status.QUEUED and requeued.action == "requeued"


def test_a_renewed_lease_keeps_the_key_off_the_watchdogs_hands(
    registry: Registry, watchdog: Watchdog, broker: FakeBroker
):
    registry.claim_many([record("k")], send_grace_s=0.2)
    registry.confirm_sent(["k"])
    gen = registry.start("k", "builder", 0.2).generation
    for _ in range(5):
        time.sleep(0.1)
        assert registry.renew_lease("k", "builder", gen, 0.2)
        assert watchdog.sweep().sent == []


def test_a_lost_message_is_found_by_reconciliation_after_a_worker_falls_silent(
    registry: Registry, watchdog: Watchdog, broker: FakeBroker
):
    registry.claim_many([record("lost"), record("held")], send_grace_s=0.0)
    registry.confirm_sent(["lost", "held"])
    broker.held = {"held"}
    time.sleep(0.25)  # older than the grace
    assert watchdog.sweep().sent == [], "no sign of loss: no scan of the broker"
    registry._r.zadd("farm:workers", {"w7": time.time() - 600})  # a worker fell silent
    report = watchdog.sweep()
    assert report.reconciled and report.sent == ["lost"]


def test_a_redis_restart_triggers_a_reconciliation(
    registry: Registry, watchdog: Watchdog, broker: FakeBroker, monkeypatch
):
    registry.claim_many([record("lost")], send_grace_s=0.0)
    registry.confirm_sent(["lost"])
    time.sleep(0.25)
    monkeypatch.setattr(registry, "server_run_id", lambda: "another-server")
    report = watchdog.sweep()
    assert report.reconciled and report.sent == ["lost"]


def test_terminal_keys_leave_the_books_and_are_never_sent(
    registry: Registry, watchdog: Watchdog, broker: FakeBroker
):
    registry.claim_many([record("k")], send_grace_s=0.0)
    time.sleep(0.05)
    # Finished meanwhile, by a path that did not clean the books (an older farm, say).
    registry._r.set("farm:rec:k", stored.encode(record("k", Status.VALID).model_dump(mode="json")))
    assert watchdog.sweep().sent == []
    assert registry.inflight_keys(time.time(), 0, 10) == []
    assert registry.due_keys(time.time() + 60) == []


def test_only_one_watchdog_sweeps_at_a_time(registry: Registry, broker: FakeBroker):
    settings = Settings(redis_url="unix:///unused", lease_ttl_s=0.2)
    a, b = (
        Watchdog(registry, settings, send=broker.send, broker_ids=broker.ids, name=n)
        for n in ("a", "b")
    )
    assert registry.try_lock("watchdog", "a", 5)
    assert not b.sweep().reconciled, "b waits while a holds the lock"
    registry.unlock("watchdog", "a")
    assert a.sweep().reconciled


def test_after_a_redis_restart_builders_get_a_lease_period_to_renew(
    registry: Registry, watchdog: Watchdog, broker: FakeBroker, monkeypatch
):
    """A restart longer than the TTL expires every lease while the builders live on; calling
    them dead at once would start a duplicate build of everything in flight."""
    registry.claim_many([record("k")], send_grace_s=0.2)
    registry.confirm_sent(["k"])
    gen = registry.start("k", "builder", 0.1).generation
    registry.put(registry.get("k").evolve(status=Status.BUILDING, worker="w9"))
    time.sleep(0.15)  # the lease ran out while Redis was away
    monkeypatch.setattr(registry, "server_run_id", lambda: "restarted")
    broker.held.add("k")  # its message is still unacknowledged in the broker
    assert watchdog.sweep().sent == [], "not yet: its builder may take the lease back"
    assert registry.renew_lease("k", "builder", gen, 5.0)  # ... and it does
    time.sleep(0.25)
    assert watchdog.sweep().sent == []
