"""Leases are kept alive by one renewer thread per process, on a real Redis."""

from __future__ import annotations

import threading
import time

from farm.leases import Lease
from farm.registry import Registry
from tests.test_registry import claim, record


def test_leases_live_while_their_holders_build_and_go_when_they_stop(registry: Registry):
    keys = [f"k{i}" for i in range(3)]
    gens = {}
    for key in keys:
        claim(registry, record(key))
        gens[key] = registry.start(key, f"holder-{key}", 0.6).generation
    threads_before = threading.active_count()
    leases = [Lease(registry, key, f"holder-{key}", gens[key], 0.6) for key in keys]
    with leases[0].heartbeat(), leases[1].heartbeat():
        time.sleep(0.3)
        with leases[2].heartbeat():
            time.sleep(1.5)  # more than twice the TTL: only renewals keep them
            assert [registry.lease_holder(k) for k in keys] == [f"holder-{k}" for k in keys]
        assert registry.lease_holder(keys[2]) is None, "released when its block ended"
        time.sleep(0.8)
        assert registry.lease_holder(keys[0]) == "holder-k0"
    assert [registry.lease_holder(k) for k in keys] == [None] * 3
    assert threading.active_count() <= threads_before + 1, "one renewer, not one per lease"


def test_an_ended_lease_is_not_renewed_after_its_holders_last_word(registry: Registry):
    """A renewal after the finish script released the lease would take it back (a lease
    that ran out is retaken by its holder), holding the key for nobody."""
    claim(registry, record("k"))
    gen = registry.start("k", "a", 0.3).generation
    lease = Lease(registry, "k", "a", gen, 0.3)
    with lease.heartbeat():
        lease.end()
        registry.release_lease("k", "a")  # as the finish script does
        time.sleep(0.35)  # past the time a renewal was due
        assert registry.lease_holder("k") is None
    assert registry.lease_holder("k") is None
