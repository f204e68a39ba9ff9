"""What an operator sees of a running farm, with real Redis and real worker processes:
metrics that equal the registry at rest, one name per worker, and one log line per state
change of a key."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from farm import metrics
from farm.artifacts import gvlfa
from farm.client import Farm
from farm.config import Settings
from farm.kinds import CacheRequest
from farm.queue import Sender
from farm.records import Status
from farm.registry import Registry
from tests.support.processes import PROJECT, farm_env
from tests.test_metrics import assert_exact, samples

LAMBDA = "lambda_NC_001416.1.fa"
SLOW_APP = "tests.support.slow_app"

pytestmark = pytest.mark.slow


def connect(settings: Settings, redis_url: str) -> Farm:
    return Farm(settings, Registry.from_url(redis_url), Sender(settings, redis_url))


def _builds(text: str) -> dict[str, float]:
    return {
        dict(labels)["outcome"]: v
        for (name, labels), v in samples(text).items()
        if name == "gvlfarm_builds_total"
    }


def test_at_rest_the_gauges_equal_the_registry_after_a_mix_of_builds(
    genomes: Path, farm_settings: Settings, redis_url: str, start_workers
):
    fasta = genomes / LAMBDA
    bad = genomes / "bad.fa"
    bad.write_bytes(b"not a FASTA\n")
    dests = [genomes / f"v{i}.gvlfa" for i in range(3)]
    pre = genomes / "pre.gvlfa"
    with connect(farm_settings, redis_url) as farm:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no worker yet: that is the point
            cancelled = farm.submit(CacheRequest(fasta=fasta, dest=genomes / "c.gvlfa")).key
        farm.cancel([cancelled])
        start_workers(2)
        keys = [farm.submit(CacheRequest(fasta=fasta, dest=d)).key for d in dests]
        failed = farm.submit(CacheRequest(fasta=bad)).key
        records = farm.wait([*keys, failed], timeout_s=120)
        assert [str(r.status) for r in records] == ["valid"] * 3 + ["failed"]
        assert farm.registry.forget([failed, cancelled]) == [failed, cancelled]
        # v0 found damaged (as `farm verify` marks it) and asked for again: rebuilt.
        farm.registry.put(records[0].evolve(status=Status.INVALID, rebuild=True))
        # A cache GenVarLoader wrote before the farm was asked for it: reused.
        gvlfa.ensure_cache(fasta, pre)
        more = farm.submit_many(
            [CacheRequest(fasta=fasta, dest=dests[0]), CacheRequest(fasta=fasta, dest=pre)]
        )
        again = farm.wait([s.key for s in more], timeout_s=120)
        assert [r.action for r in again] == ["rebuilt", "reused"]

        assert_exact(farm.registry)
        text = metrics.render(farm.registry)
    got = samples(text)
    assert got[("gvlfarm_keys", (("status", "queued"),))] == 0
    assert got[("gvlfarm_keys", (("status", "building"),))] == 0
    assert got[("gvlfarm_records", (("status", "valid"),))] == 4
    assert got[("gvlfarm_records", (("status", "failed"),))] == 0
    assert got[("gvlfarm_oldest_queued_age_seconds", ())] == 0
    assert got[("gvlfarm_workers", ())] == 2
    assert got[("gvlfarm_worker_slots", ())] == 2
    assert got[("gvlfarm_worker_slots_busy", ())] == 0
    assert _builds(text) == {
        "built": 3, "rebuilt": 1, "reused": 1, "failed": 1, "cancelled": 1
    }  # fmt: skip
    sizes = records[0].size_bytes + records[1].size_bytes + records[2].size_bytes
    assert got[("gvlfarm_published_bytes_total", (("kind", "cache"),))] == sizes + sizes // 3
    assert got[("gvlfarm_build_duration_seconds_count", (("kind", "cache"),))] == 6
    assert got[("gvlfarm_lease_takeovers_total", ())] == 0


def _wait_for(what, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def test_a_worker_killed_mid_build_counts_one_takeover_and_one_build(
    genomes: Path, farm_settings: Settings, redis_url: str, start_workers
):
    workers = start_workers(
        2, app=SLOW_APP, test_build_seconds=3, visibility_timeout_s=6, lease_ttl_s=2
    )
    with connect(farm_settings, redis_url) as farm:
        key = farm.submit(CacheRequest(fasta=genomes / LAMBDA)).key
        holder = _wait_for(lambda: farm.registry.lease_holder(key))
        victim = next(w for w in workers if holder.startswith(w.name + "@"))
        busy = _wait_for(lambda: [w for w in farm.registry.workers() if w["busy"]])
        assert [(w["name"], w["busy"]) for w in busy] == [(holder.split("/")[0], [key])]
        victim.kill()
        (record,) = farm.wait([key], timeout_s=60)
        assert record.status is Status.VALID
        text = metrics.render(farm.registry)
    assert samples(text)[("gvlfarm_lease_takeovers_total", ())] == 1
    assert _builds(text) == {"built": 1}


# --- one name per worker -------------------------------------------------------------------


def _farm_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args],
        env=env, cwd=PROJECT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _listed(env: dict[str, str]) -> list[dict]:
    out = _farm_cli(env, "workers", "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_two_workers_on_one_host_are_two_and_a_killed_one_drops_off(
    redis_url: str, tmp_path: Path, registry: Registry
):
    env = farm_env(redis_url, tmp_path, lease_ttl_s=3.0, worker_heartbeat_s=0.5)
    procs = []
    for i in range(2):
        with open(tmp_path / f"worker{i}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "farm.cli", "worker", "--concurrency", str(i + 1)],
                    env=env,
                    cwd=PROJECT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    try:
        listed = _wait_for(lambda: len(rows := _listed(env)) == 2 and rows)
        names = [w["name"] for w in listed]
        assert len(set(names)) == 2 and all(n.startswith("farm-") for n in names)
        assert {w["pid"] for w in listed} == {p.pid for p in procs}  # farm worker execs Celery
        by_pid = {w["pid"]: w for w in listed}
        assert [by_pid[p.pid]["slots"] for p in procs] == [1, 2]
        for w in listed:
            assert w["host"] and w["busy"] == [] and w["version"]
            assert 0 <= w["heartbeat_age_s"] < 2
        table = _farm_cli(env, "workers")
        assert all(n in table.stdout for n in names) and "2 worker(s)" in table.stderr

        os.killpg(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        killed = time.monotonic()
        _wait_for(lambda: len(registry.workers()) == 1, timeout=10)
        assert time.monotonic() - killed < 3.0  # within the lease TTL
        assert [w["pid"] for w in _listed(env)] == [procs[1].pid]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(20)


def test_a_worker_named_on_the_command_line_keeps_its_name(
    redis_url: str, tmp_path: Path, registry: Registry
):
    env = farm_env(redis_url, tmp_path, worker_heartbeat_s=0.5)
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "farm.cli", "worker", "-n", "mine@%h", "--pool", "solo"],
            env=env, cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        (listed,) = _wait_for(lambda: _listed(env))
        assert listed["name"].startswith("mine@") and listed["slots"] == 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


# --- logs ----------------------------------------------------------------------------------

KEY_FIELDS = {"key", "kind", "status", "worker", "duration_s", "size_b", "error"}


def _key_states(log: Path) -> list[tuple[str, str]]:
    """(key, status) of each whole JSON line of the ``farm.keys`` logger written so far."""
    states = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):  # the last line may be half written
            p = json.loads(line)
            if p.get("logger") == "farm.keys":
                states.append((p["key"], p["status"]))
    return states


def test_a_worker_logs_one_json_line_per_state_change_of_a_key(
    genomes: Path, farm_settings: Settings, redis_url: str, start_workers, tmp_path: Path
):
    (worker,) = start_workers(1, log_format="json")
    bad = genomes / "bad.fa"
    bad.write_bytes(b"not a FASTA\n")
    with connect(farm_settings, redis_url) as farm:
        good = farm.submit(CacheRequest(fasta=genomes / LAMBDA)).key
        failed = farm.submit(CacheRequest(fasta=bad)).key
        records = farm.wait([good, failed], timeout_s=120)
    # The builder logs a state change just after it records it: wait for the last line
    # before stopping the worker (a SIGTERM to its idle pool child ends it at once).
    _wait_for(lambda: (failed, "failed") in _key_states(worker.log), 10)
    worker.stop()
    lines = worker.log.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is JSON: no banner, no text
    assert all({"ts", "level", "logger", "msg"} <= p.keys() for p in parsed)
    assert any(p["msg"].endswith("ready.") for p in parsed)
    changes = [p for p in parsed if p["logger"] == "farm.keys"]
    assert [(p["key"], p["status"]) for p in changes] == [
        (good, "building"),
        (good, "valid"),
        (failed, "building"),
        (failed, "failed"),
    ]
    assert all(p.keys() >= KEY_FIELDS for p in changes)
    valid, fail = changes[1], changes[3]
    assert valid["kind"] == "cache" and valid["worker"] == records[0].worker
    assert valid["size_b"] == records[0].size_bytes and valid["duration_s"] >= 0
    assert valid["action"] == "built" and valid["error"] is None
    assert fail["error"] == records[1].error and fail["level"] == "WARNING"
    assert fail["size_b"] is None and fail["duration_s"] >= 0


def test_a_text_log_says_which_build_ran_and_why_one_failed(
    genomes: Path, farm_settings: Settings, redis_url: str, start_workers
):
    (worker,) = start_workers(1)
    bad = genomes / "bad.fa"
    bad.write_bytes(b"not a FASTA\n")
    with connect(farm_settings, redis_url) as farm:
        good = farm.submit(CacheRequest(fasta=genomes / LAMBDA)).key
        failed = farm.submit(CacheRequest(fasta=bad)).key
        farm.wait([good, failed], timeout_s=120)
    # The builder logs a state change just after it records it: wait for the line.
    failed_line = f"key={failed} kind=cache status=failed"
    _wait_for(lambda: failed_line in worker.log.read_text(), 10)
    text = worker.log.read_text()
    assert f"key={good} kind=cache status=valid action=built" in text
    assert 'error="' + str(bad) + " is not a FASTA file" in text
