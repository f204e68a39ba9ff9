"""Metrics: the counts the registry keeps as it works equal what it holds, through every
path that changes a record, and the text a scraper reads says so. Real Redis throughout."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from farm import maintenance, metrics, service, stored
from farm.errors import InputError
from farm.records import Status
from farm.registry import Registry
from farm.tally import STATUSES, duration_bucket
from tests.support.processes import PROJECT, farm_env
from tests.test_registry import claim, record
from tests.test_service import _ensure, _prepared


def scanned(registry: Registry) -> dict[str, int]:
    """Records by status, the slow way: every record read."""
    found = Counter(stored.status_of(raw) for raw in _raw_records(registry))
    return {s: found.get(s, 0) for s in STATUSES}


def _raw_records(registry: Registry):
    for keys in registry.key_batches():
        yield from (raw for raw in registry._r.mget([f"farm:rec:{k}" for k in keys]) if raw)


def assert_exact(registry: Registry) -> None:
    assert registry.snapshot().records == scanned(registry)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_transition_keeps_the_counts_exact(registry: Registry):
    claim(registry, record("a", dest="/d/a"))
    claim(registry, record("b", dest="/d/b"))
    claim(registry, record("c", dest="/d/c"))
    claim(registry, record("a", dest="/d/a"))  # followed, not counted twice
    assert_exact(registry)
    assert registry.snapshot().records["queued"] == 3
    a = registry.start("a", "h1", 5)
    b = registry.start("b", "h2", 5)
    assert registry.snapshot().records["building"] == 2
    assert_exact(registry)
    registry.finish(record("a", Status.VALID, dest="/d/a"), "h1", a.generation)
    registry.finish(record("b", Status.FAILED, dest="/d/b"), "h2", b.generation)
    registry.finish(record("c", Status.FAILED, dest="/d/c"), holder="")  # cancelled
    assert_exact(registry)
    assert registry.snapshot().records == {
        "queued": 0, "building": 0, "valid": 1, "stale": 0, "invalid": 0, "failed": 2
    }  # fmt: skip
    registry.put(record("a", Status.INVALID, dest="/d/a"))  # verify found it damaged
    assert_exact(registry)
    claim(registry, record("a", dest="/d/a"))  # rebuilt on request
    d = registry.start("a", "h3", 5)
    registry.hand_back(record("a", Status.BUILDING, dest="/d/a"), "h3", d.generation)
    assert_exact(registry)
    registry.put(record("new", Status.VALID, dest="/d/b"))
    registry.put(record("b2", Status.VALID, dest="/d/b"))  # supersedes "new": stale
    assert registry.get("new").status is Status.STALE
    assert_exact(registry)
    assert registry.forget(["b", "nobody"]) == ["b"]
    assert registry.forget(["a"]) == []  # in flight: kept
    assert_exact(registry)
    raw = registry._r.get("farm:rec:a")
    assert registry.replace_if_unchanged(
        [(raw, record("a", Status.QUEUED, dest="/d/a"))], send_grace_s=5
    ) == [True]
    assert_exact(registry)


def test_random_walks_through_the_registry_keep_the_counts_exact(registry: Registry):
    rng = random.Random(19)
    keys = [f"k{i}" for i in range(6)]
    grants: dict[str, tuple[str, int]] = {}
    for step in range(600):
        key = rng.choice(keys)
        op = rng.choice(["claim", "start", "valid", "fail", "cancel", "back", "forget", "put"])
        dest = f"/d/{rng.choice('xyz')}"  # keys share destinations: supersessions happen
        if op == "claim":
            claim(registry, record(key, dest=dest))
        elif op == "start":
            got = registry.start(key, f"h{step}", 5)
            if got.leased:
                grants[key] = (f"h{step}", got.generation)
        elif op in ("valid", "fail", "back") and key in grants:
            holder, gen = grants.pop(key)
            current = registry.get(key)
            if op == "back" and current is not None:
                registry.hand_back(current, holder, gen)
            elif current is not None:
                status = Status.VALID if op == "valid" else Status.FAILED
                registry.finish(current.evolve(status=status), holder, gen)
            registry.release_lease(key, holder)
        elif op == "cancel":
            registry.finish(record(key, Status.FAILED, dest=dest), holder="")
        elif op == "forget":
            registry.forget([key], in_flight=rng.random() < 0.3)
        elif op == "put":
            registry.put(record(key, rng.choice(list(Status)), dest=dest))
        if step % 10 == 0:
            assert_exact(registry)
    assert_exact(registry)


def test_expired_records_leave_the_counts(registry: Registry):
    expiring = Registry(registry._r, forget_unusable_after_s=0.3)
    claim(expiring, record("f1", dest="/d/1"))
    claim(expiring, record("f2", dest="/d/2"))
    claim(expiring, record("f3", dest="/d/3"))
    for key in ("f1", "f2", "f3"):
        expiring.finish(record(key, Status.FAILED, dest=f"/d/{key[1]}"), holder="")
    expiring.put(record("s", Status.STALE, dest="/d/s"))
    expiring.put(record("v", Status.VALID, dest="/d/v"))  # never expires
    claim(expiring, record("f3", dest="/d/3"))  # submitted again before it expired: kept
    assert expiring.snapshot().records["failed"] == 2
    time.sleep(0.4)
    # f2 expired and is claimed anew before any read: its write settles it.
    claim(expiring, record("f2", dest="/d/2"))
    assert_exact(registry)
    assert expiring.snapshot().records == {
        "queued": 2, "building": 0, "valid": 1, "stale": 0, "invalid": 0, "failed": 0
    }  # fmt: skip
    assert registry._r.zcard("farm:expiring") == 0


def test_a_recount_rebuilds_lost_or_wrong_counts(registry: Registry):
    expiring = Registry(registry._r, forget_unusable_after_s=60)
    for i in range(2500):  # more than one SCAN batch
        claim(registry, record(f"q{i}", dest=f"/d/{i}"))
    expiring.finish(record("q0", Status.FAILED, dest="/d/0"), holder="")
    registry._r.set("farm:rec:old", record("old", Status.VALID).model_dump_json())  # format 0
    registry._r.hset("farm:counts", mapping={"valid": 999, "queued": -4})
    registry._r.delete("farm:expiring")
    assert not registry.tally.counted()
    assert registry.recount() == scanned(registry)
    assert registry.snapshot().records["queued"] == 2499
    assert registry.tally.counted()
    assert registry._r.zrange("farm:expiring", 0, -1) == [b"fq0"]
    assert not registry.recount_if_never_counted("me")


def test_oldest_queued_age_skips_keys_being_built(registry: Registry):
    assert registry.snapshot().oldest_queued_at is None
    claim(registry, record("first", dest="/d/1"))
    registry._r.zadd("farm:inflight", {"first": time.time() - 3600})
    claim(registry, record("second", dest="/d/2"))
    registry._r.zadd("farm:inflight", {"second": time.time() - 60})
    claim(registry, record("third", dest="/d/3"))
    registry.start("first", "h", 5)  # building for an hour: not waiting
    snap = registry.snapshot()
    assert 59 < time.time() - snap.oldest_queued_at < 65
    text = metrics.render(registry)
    age = samples(text)[("gvlfarm_oldest_queued_age_seconds", ())]
    assert 59 < age < 65
    assert samples(text)[("gvlfarm_keys", (("status", "queued"),))] == 2
    assert samples(text)[("gvlfarm_keys", (("status", "building"),))] == 1


def test_builders_last_words_are_counted(registry: Registry):
    claim(registry, record("a"))
    a = registry.start("a", "h1", 0.2)
    time.sleep(0.3)  # h1 died: its lease ran out
    b = registry.start("a", "h2", 5)
    assert b.generation == a.generation + 1
    built = record("a", Status.VALID).evolve(action="built", build_seconds=90.0, size_bytes=1234)
    registry.finish(built, "h2", b.generation)
    claim(registry, record("r", dest="/d/r"))
    r = registry.start("r", "h3", 5)
    reused = record("r", Status.VALID, dest="/d/r").evolve(action="reused", build_seconds=0.2)
    registry.finish(reused, "h3", r.generation)
    claim(registry, record("f", dest="/d/f"))
    f = registry.start("f", "h4", 5)
    registry.finish(record("f", Status.FAILED, dest="/d/f"), "h4", f.generation, ran_s=7200.5)
    claim(registry, record("c", dest="/d/c"))
    registry.finish(record("c", Status.FAILED, dest="/d/c"), holder="")
    claim(registry, record("h", dest="/d/h"))
    h = registry.start("h", "h5", 5)
    registry.hand_back(record("h", Status.BUILDING, dest="/d/h"), "h5", h.generation)
    # A late word of the replaced builder is refused, and so not counted.
    registry.finish(record("a", Status.FAILED), "h1", a.generation)

    got = samples(metrics.render(registry))
    builds = {labels: v for (name, labels), v in got.items() if name == "gvlfarm_builds_total"}
    assert builds == {
        (("kind", "cache"), ("outcome", outcome)): 1.0
        for outcome in ("built", "reused", "failed", "cancelled", "handed_back")
    }
    assert got[("gvlfarm_lease_takeovers_total", ())] == 1
    assert got[("gvlfarm_published_bytes_total", (("kind", "cache"),))] == 1234
    hist = ("gvlfarm_build_duration_seconds", (("kind", "cache"),))
    assert got[(hist[0] + "_count", hist[1])] == 3  # built, reused, failed: ran; not the rest
    assert got[(hist[0] + "_sum", hist[1])] == pytest.approx(90.0 + 0.2 + 7200.5)
    bucket = "gvlfarm_build_duration_seconds_bucket"
    assert got[(bucket, (("kind", "cache"), ("le", "1")))] == 1
    assert got[(bucket, (("kind", "cache"), ("le", "120")))] == 2
    assert got[(bucket, (("kind", "cache"), ("le", "3600")))] == 2
    assert got[(bucket, (("kind", "cache"), ("le", "14400")))] == 3
    assert got[(bucket, (("kind", "cache"), ("le", "86400")))] == 3
    assert got[(bucket, (("kind", "cache"), ("le", "+Inf")))] == 3


def test_duration_buckets_include_their_bound_and_reach_a_day():
    assert duration_bucket(0) == "1"
    assert duration_bucket(1.0) == "1"
    assert duration_bucket(1.01) == "5"
    assert duration_bucket(86400) == "86400"
    assert duration_bucket(86400.5) == "+Inf"


def test_workers_are_listed_and_counted_until_their_heartbeat_lapses(registry: Registry):
    registry.worker_seen("a@h", {"host": "h", "pid": 1, "slots": 4, "busy": ["k1"]}, ttl_s=0.5)
    registry.worker_seen("b@h", {"host": "h", "pid": 2, "slots": 2, "busy": []}, ttl_s=30)
    registry.worker_seen("old@h")  # a worker that says nothing of itself is not listed
    listed = registry.workers()
    assert [w["name"] for w in listed] == ["a@h", "b@h"]
    assert all(0 <= w["heartbeat_age_s"] < 0.5 for w in listed)
    got = samples(metrics.render(registry))
    assert got[("gvlfarm_workers", ())] == 2
    assert got[("gvlfarm_worker_slots", ())] == 6
    assert got[("gvlfarm_worker_slots_busy", ())] == 1
    time.sleep(0.6)
    assert [w["name"] for w in registry.workers()] == ["b@h"]
    registry.worker_gone("b@h")
    assert registry.workers() == []


def test_listen_addresses_default_to_loopback_and_need_a_host():
    assert metrics.parse_listen("9808") == ("127.0.0.1", 9808)
    assert metrics.parse_listen("0.0.0.0:9808") == ("0.0.0.0", 9808)
    assert metrics.parse_listen("[::1]:9808") == ("::1", 9808)
    for bad in (":9808", "host:port", "host:0", "70000"):
        with pytest.raises(InputError):
            metrics.parse_listen(bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_prints_and_serves_the_metrics(registry: Registry, redis_url: str, tmp_path):
    claim(registry, record("q"))
    env = farm_env(redis_url, tmp_path)
    cmd = [sys.executable, "-m", "farm.cli", "metrics"]
    printed = subprocess.run(cmd, env=env, cwd=PROJECT, capture_output=True, text=True, check=True)
    assert samples(printed.stdout)[("gvlfarm_keys", (("status", "queued"),))] == 1
    port = _free_port()
    server = subprocess.Popen(
        [*cmd, "--listen", f"127.0.0.1:{port}"], env=env, cwd=PROJECT, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    served = r.read().decode()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert samples(served)[("gvlfarm_keys", (("status", "queued"),))] == 1
        claim(registry, record("q2", dest="/d/q2"))  # read at each scrape
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert samples(r.read().decode())[("gvlfarm_keys", (("status", "queued"),))] == 2
    finally:
        os.kill(server.pid, 15)
        server.wait(10)


def test_a_scrape_is_a_few_commands_whatever_the_registry_holds(registry: Registry):
    pipe = registry._r.pipeline(transaction=False)
    raw = stored.encode(record("x").model_dump(mode="json"))
    for i in range(20_000):
        pipe.set(f"farm:rec:{i:064x}", raw)
        pipe.zadd("farm:inflight", {f"{i:064x}": i})
    pipe.hset("farm:counts", "queued", 20_000)
    pipe.execute()
    registry.worker_seen("w@h", {"slots": 1, "busy": []}, ttl_s=30)
    metrics.render(registry)  # scripts loaded
    registry._r.config_resetstat()
    text = metrics.render(registry)
    stats = registry._r.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()}
    assert not {"scan", "keys", "mget", "hscan", "zscan"} & calls.keys(), calls
    assert sum(calls.values()) < 30, calls
    assert samples(text)[("gvlfarm_keys", (("status", "queued"),))] == 20_000


def test_reindex_rebuilds_the_counts_of_a_registry_that_lost_them(
    genomes, registry: Registry, farm_settings
):
    request, key = _prepared(genomes, farm_settings)
    _ensure(request, key, service.Context(registry, farm_settings, "w"))
    registry._r.delete("farm:counts")  # a registry written before the farm counted
    assert registry.snapshot().records["valid"] == 0
    list(maintenance.reindex(registry, genomes, allowed=farm_settings.roots))
    assert registry.snapshot().records["valid"] == 1
    assert_exact(registry)


def test_a_scrape_while_redis_is_away_fails_with_503(tmp_path):
    server = metrics.serve(Registry.from_url(f"unix://{tmp_path}/none.sock"), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert failed.value.code == 503
    finally:
        server.shutdown()
        server.server_close()
