"""``Farm.wait`` follows completions: its work grows with what finished, not what is pending.

A real Redis; the builders are this test writing the verdicts a worker writes, so the count
of records the waiter reads is exact.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from farm.client import Farm
from farm.config import Settings
from farm.queue import Sender
from farm.records import Status
from farm.registry import Registry
from tests.test_registry import record


@pytest.fixture
def farm(registry: Registry, farm_settings: Settings, redis_url: str) -> Iterator[Farm]:
    client = Farm(farm_settings, registry, Sender(farm_settings, redis_url))
    client.warn_if_no_worker = lambda: True  # type: ignore[method-assign]
    yield client
    client.close()


def _claimed(registry: Registry, n: int) -> list[str]:
    keys = [f"{i:064x}" for i in range(n)]
    for start in range(0, n, 1000):
        chunk = [record(k, dest=f"/d/{k}") for k in keys[start : start + 1000]]
        registry.claim_many(chunk, send_grace_s=3600)
    return keys


def _finish_slowly(registry: Registry, keys: list[str], per_batch: int, pause_s: float) -> None:
    for start in range(0, len(keys), per_batch):
        for key in keys[start : start + per_batch]:
            registry.finish(record(key, Status.VALID, dest=f"/d/{key}"), holder="")
        time.sleep(pause_s)


def test_a_wait_on_many_keys_reads_each_pending_record_about_once(
    farm: Farm, registry: Registry, monkeypatch: pytest.MonkeyPatch
):
    keys = _claimed(registry, 4_000)
    read = []
    statuses = registry.statuses
    monkeypatch.setattr(registry, "statuses", lambda ks: read.append(len(ks)) or statuses(ks))
    builder = threading.Thread(target=_finish_slowly, args=(registry, keys, 100, 0.05))
    builder.start()
    records = farm.wait(keys, timeout_s=120)
    builder.join()
    assert [r.status for r in records] == [Status.VALID] * len(keys)
    # Once at the start and once to confirm the end; polling would read every pending key
    # on each of the ~40 wake-ups.
    assert sum(read) <= 2 * len(keys), f"{sum(read):,} records read"


def test_a_wait_sees_keys_finished_before_it_started_and_ends_on_its_timeout(
    farm: Farm, registry: Registry
):
    done, pending = _claimed(registry, 2)
    registry.finish(record(done, Status.FAILED, dest=f"/d/{done}"), holder="")
    started = time.monotonic()
    first, second = farm.wait([done, pending], timeout_s=0.5)
    assert time.monotonic() - started >= 0.5, "it returned before its timeout"
    assert first.status is Status.FAILED and second.status is Status.QUEUED
    assert farm.wait(["f" * 64], timeout_s=5) == [None], "an unknown key is not waited for"


def test_a_key_claimed_again_after_it_finished_is_waited_for_again(farm: Farm, registry: Registry):
    (key,) = _claimed(registry, 1)
    registry.finish(record(key, Status.FAILED, dest=f"/d/{key}"), holder="")
    registry.claim_many([record(key, dest=f"/d/{key}")], send_grace_s=3600)  # resubmitted
    threading.Timer(
        0.3, lambda: registry.finish(record(key, Status.VALID, dest=f"/d/{key}"), holder="")
    ).start()
    (result,) = farm.wait([key], timeout_s=30)
    assert result.status is Status.VALID
