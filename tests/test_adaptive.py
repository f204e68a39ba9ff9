"""How many threads a cache build uses is measured, not fixed: more where they pay, fewer where
they cost (a cold file on one disk, cores taken by others)."""

from __future__ import annotations

import threading
import time

import pytest

from farm.artifacts.adaptive import run_adaptive


class _Jobs:
    """Jobs whose time depends on how many run at once: ``cost(in_flight)`` seconds each.
    They sleep, so their timing holds on a machine whose cores are busy with other work."""

    def __init__(self, cost) -> None:
        self.cost = cost
        self.started: list[int] = []
        self._lock = threading.Lock()
        self._running = 0

    def __call__(self, k: int) -> None:
        with self._lock:
            self.started.append(k)
            self._running += 1
            running = self._running
        time.sleep(self.cost(running))
        with self._lock:
            self._running -= 1


def test_threads_are_added_where_they_pay() -> None:
    jobs = _Jobs(lambda _running: 0.003)  # independent work: two at once, twice the rate
    used = run_adaptive(320, jobs, max_threads=2)
    assert jobs.started == list(range(320))
    assert used.count(2) >= 0.7 * len(used), used


def test_threads_are_dropped_where_they_cost() -> None:
    # Two at once each take four times as long (a disk seeking between two readers): two
    # threads do half the work of one.
    jobs = _Jobs(lambda running: 0.003 * running**2)
    used = run_adaptive(320, jobs, max_threads=2)
    assert sorted(jobs.started) == list(range(320))
    assert used.count(1) >= 0.7 * len(used), used


def test_one_thread_when_one_is_all_there_is() -> None:
    jobs = _Jobs(lambda _running: 0.0)
    assert set(run_adaptive(100, jobs, max_threads=1)) == {1}
    assert jobs.started == list(range(100))


def test_the_first_failure_stops_the_rest() -> None:
    started: list[int] = []

    def job(k: int) -> None:
        started.append(k)
        if k == 20:
            raise ValueError("chunk 20 is not what its index says")
        time.sleep(0.001)

    with pytest.raises(ValueError, match="chunk 20"):
        run_adaptive(10_000, job, max_threads=2)
    assert len(started) < 40  # it stopped, not built the rest of a genome for nothing
