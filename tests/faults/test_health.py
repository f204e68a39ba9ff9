"""``farm health`` against real workers: a frozen or wedged worker is reported within 15 s
(three beats of the default 2 s, checked by a probe that makes no network call), a resumed
one is live again, and a worker cut off from Redis stays live but is not ready."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from farm import health
from farm.kinds import CacheRequest
from farm.records import Status
from tests.faults.harness import Cluster
from tests.support.processes import PROJECT

pytestmark = pytest.mark.faults

DETECT_WITHIN_S = 15.0


def _probe(cluster: Cluster, *args: str) -> tuple[int, dict]:
    env = cluster.env()
    env.pop("FARM_HEALTH_HEARTBEAT_S", None)
    done = subprocess.run(
        [sys.executable, "-m", "farm.cli", "health", "--json", *args],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, json.loads(done.stdout)


def _until(check: Callable[[], bool], within_s: float, what: str) -> float:
    """Seconds until ``check()`` held, polling; fails after ``within_s``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within_s:
            pytest.fail(f"{what}: not within {within_s:g} s")
        time.sleep(0.25)
    return time.monotonic() - started


def test_a_frozen_worker_is_not_live_within_15_s_and_live_again_once_resumed(cluster: Cluster):
    worker = cluster.worker()
    code, found = _probe(cluster)
    assert code == 0 and found["workers"][0]["pid"] == worker.proc.pid
    assert found["workers"][0]["stale_after_s"] == 6.0  # 3 x FARM_HEALTH_HEARTBEAT_S (2 s)
    _until(lambda: _probe(cluster, "--ready")[0] == 0, 5.0, "ready")
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        took = _until(lambda: _probe(cluster)[0] == 1, DETECT_WITHIN_S, "frozen worker reported")
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)
    print(f"HEALTH frozen worker reported after {took:.1f} s")
    _until(lambda: _probe(cluster)[0] == 0, 5.0, "resumed worker live again")
    worker.stop()
    assert worker.proc.returncode == 0
    code, found = _probe(cluster)
    assert code == 1 and found["workers"] == []
    assert list(health.beats_dir(cluster.root / ".farm-state").iterdir()) == []


def test_a_wedged_event_loop_is_not_live_though_its_threads_run_on(cluster: Cluster):
    """The main thread blocks (as a deadlock in the loop would); the registry heartbeat and
    the watchdog threads run on, so only the beat from the loop can tell."""
    worker = cluster.worker(test_wedge_on_sigwinch=1)
    assert _probe(cluster)[0] == 0
    os.kill(worker.proc.pid, signal.SIGWINCH)
    took = _until(lambda: _probe(cluster)[0] == 1, DETECT_WITHIN_S, "wedged worker reported")
    print(f"HEALTH wedged worker reported after {took:.1f} s")
    assert "WEDGED" in worker.log.read_text()
    registry = cluster.registry()
    assert any(w.startswith(worker.name + "@") for w in registry.live_workers(2.0))
    worker.kill()


def test_a_worker_cut_off_from_redis_is_live_but_not_ready(cluster: Cluster):
    worker = cluster.worker()
    _until(lambda: _probe(cluster, "--ready")[0] == 0, 5.0, "ready")
    cluster.redis.kill()
    _until(lambda: _probe(cluster, "--ready")[0] == 1, 5.0, "not ready without Redis")
    code, found = _probe(cluster, "--ready")
    assert found["redis"].startswith("ConnectionError")
    down_since = time.monotonic()
    while time.monotonic() - down_since < 12.0:  # two stale periods and more
        code, found = _probe(cluster)
        assert code == 0, found
        time.sleep(1.0)
    cluster.redis.start()
    took = _until(lambda: _probe(cluster, "--ready")[0] == 0, 30.0, "ready once Redis is back")
    print(f"HEALTH ready {took:.1f} s after Redis came back")
    assert worker.proc.poll() is None


def test_a_solo_pool_building_in_its_main_process_stays_live(cluster: Cluster):
    """A solo pool runs the build inside the event loop: the loop is busy, not wedged, for
    as long as the build takes (a build that hangs is the time limits' business)."""
    worker = cluster.worker(pool="solo")
    key = cluster.submit_paused(CacheRequest(fasta=cluster.genome()), "building", 12)
    cluster.marker("building", key)
    building_since = time.monotonic()
    while time.monotonic() - building_since < 9.0:  # one and a half stale periods
        code, found = _probe(cluster)
        assert code == 0, found
        time.sleep(1.0)
    assert cluster.registry().get(key).status is Status.BUILDING
    assert worker.proc.poll() is None
