"""``farm health`` from the files workers keep: what counts as a live worker, and what is
forgotten (the real workers, frozen and cut off from Redis, are in tests/faults/test_health.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm import health
from farm.config import Settings
from tests.support.processes import farm_env
from tests.test_cli import farm
from workers.lifecycle import drain_delay_s


def _exited_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _beat(state: Path, *, period_s: float = 1.0) -> health.Beat:
    beat = health.Beat(state, "w@host", period_s)
    beat.start()
    return beat


def test_a_fresh_beat_is_live_and_a_stale_one_is_not(tmp_path: Path) -> None:
    beat = _beat(tmp_path, period_s=1.0)
    (found,) = health.check(tmp_path)
    assert found.pid == os.getpid() and found.name == "w@host" and found.live
    assert found.stale_after_s == 3.0 and not found.ready
    assert health.liveness(tmp_path).ok
    old = time.time() - 3.5
    os.utime(beat.path, (old, old))
    verdict = health.liveness(tmp_path)
    assert not verdict.ok and "silent for 3." in verdict.why
    beat.touch()
    assert health.liveness(tmp_path).ok


def test_no_worker_is_not_live(tmp_path: Path) -> None:
    verdict = health.liveness(tmp_path)
    assert not verdict.ok and "no worker" in verdict.why
    assert not health.liveness(tmp_path / "missing").ok


def test_files_of_dead_workers_and_of_reused_pids_are_forgotten(tmp_path: Path) -> None:
    folder = health.beats_dir(tmp_path)
    folder.mkdir()
    host = health._host()
    dead = _exited_pid()
    (folder / f"{host}.{dead}.beat").write_text(json.dumps({"pid": dead, "period_s": 1}))
    (folder / f"{host}.{dead}.ready").touch()
    # Our pid, but recorded with another start time: the pid went to another process.
    me = os.getpid()
    reused = {"pid": me, "period_s": 1, "started": 1_000_000_000.0}
    (folder / f"{host}.{me}.beat").write_text(json.dumps(reused))
    # Another host's file on a shared state directory: its pid means nothing here.
    (folder / f"elsewhere.{me}.beat").write_text(json.dumps({"pid": me, "period_s": 1}))
    assert health.check(tmp_path) == []
    assert sorted(p.name for p in folder.iterdir()) == [f"elsewhere.{me}.beat"]


def test_one_frozen_worker_among_several_is_not_live(tmp_path: Path) -> None:
    """A pod runs one worker; on a machine running several, each must beat."""
    ours = _beat(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        about = {"pid": other.pid, "name": "w2@host", "period_s": 1.0}
        path = health.beats_dir(tmp_path) / f"{health._host()}.{other.pid}.beat"
        path.write_text(json.dumps(about))
        assert health.liveness(tmp_path).ok
        os.utime(path, (time.time() - 10, time.time() - 10))
        verdict = health.liveness(tmp_path)
        assert not verdict.ok and f"pid {other.pid}" in verdict.why
        assert [w.live for w in verdict.workers].count(True) == 1
    finally:
        other.kill()
        other.wait()
    assert [w.pid for w in health.check(tmp_path)] == [ours.pid]


def test_readiness_needs_a_consuming_worker_and_redis(tmp_path: Path, redis_url: str) -> None:
    beat = _beat(tmp_path)
    verdict = health.readiness(tmp_path, redis_url)
    assert not verdict.ok and "not consuming" in verdict.why and verdict.redis == "ok"
    beat.ready(True)
    assert health.readiness(tmp_path, redis_url).ok
    gone = f"unix://{tmp_path / 'no.sock'}"
    verdict = health.readiness(tmp_path, gone, timeout_s=0.5)
    assert not verdict.ok and verdict.redis.startswith("ConnectionError")
    beat.remove()
    assert not health.beats_dir(tmp_path).joinpath(beat.path.name).exists()


def test_farm_health_exit_status_and_json(tmp_path: Path, redis_url: str) -> None:
    env = farm_env(redis_url, tmp_path)
    state = Path(env["FARM_STATE_DIR"])
    result = farm(env, "health")
    assert result.returncode == 1 and "Not live: no worker" in result.stderr
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = health.beats_dir(state)
        folder.mkdir(parents=True)
        stem = f"{health._host()}.{holder.pid}"
        (folder / f"{stem}.beat").write_text(
            json.dumps({"pid": holder.pid, "name": "w@h", "period_s": 5})
        )
        live = farm(env, "health", "--json")
        assert live.returncode == 0, live.stderr
        shown = json.loads(live.stdout)
        assert shown["ok"] and shown["workers"][0]["pid"] == holder.pid
        assert farm(env, "health", "--ready").returncode == 1
        (folder / f"{stem}.ready").touch()
        ready = farm(env, "health", "--ready", "--json")
        assert ready.returncode == 0 and json.loads(ready.stdout)["redis"] == "ok"
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    ("lifetime", "stagger", "draw", "expected"),
    [
        (7200.0, 0.0, 0.0, 7200 - 5 - 60),  # margin capped at 60 s
        (7200.0, 600.0, 0.5, 7200 - 300 - 5 - 60),
        (20.0, 0.0, 0.0, 20 - 5 - 2),  # a tenth of the lifetime
        (6.0, 0.0, 0.0, 0.0),  # too short to work at all: drain at once
    ],
)
def test_the_drain_leaves_the_grace_and_a_margin(lifetime, stagger, draw, expected) -> None:
    settings = Settings(
        redis_url="redis://x",
        worker_lifetime_s=lifetime,
        worker_lifetime_stagger_s=stagger,
        stop_grace_s=5.0,
    )
    assert drain_delay_s(settings, draw=draw) == pytest.approx(expected)


def test_farm_worker_refuses_a_lifetime_shorter_than_the_grace(tmp_path: Path, redis_url: str):
    env = farm_env(redis_url, tmp_path, stop_grace_s=30)
    result = farm(env, "worker", "--lifetime", "20s")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--lifetime 20 s leaves no time to work" in result.stderr
    result = farm(env, "worker", "--idle-exit", "soon")
    assert result.returncode != 0 and "--idle-exit soon is not an age" in result.stderr
