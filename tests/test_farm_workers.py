"""The farm end to end: real Redis, real Celery worker processes, real FASTA files.

Worker processes are started per test and stopped (or SIGKILLed, whole process group) by PID.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from farm import maintenance
from farm.artifacts import gvlfa
from farm.artifacts.base import State
from farm.client import Farm
from farm.config import Settings
from farm.kinds import CacheRequest
from farm.orphans import remove_orphans
from farm.queue import Sender
from farm.records import Status
from farm.registry import Registry

LAMBDA = "lambda_NC_001416.1.fa"
SLOW_APP = "tests.support.slow_app"

pytestmark = pytest.mark.slow


def connect(settings: Settings, redis_url: str) -> Farm:
    return Farm(settings, Registry.from_url(redis_url), Sender(settings, redis_url))


def build_starts(logdir: Path) -> int:
    return sum(p.read_text().count("BUILD-START") for p in logdir.glob("*.log"))


def deliveries(logdir: Path) -> int:
    return sum(p.read_text().count("] received") for p in logdir.glob("*.log"))


def _submit_and_follow(args: tuple) -> tuple[set[str], list[str]]:
    settings_json, redis_url, fasta, n = args
    settings = Settings.model_validate_json(settings_json)
    with connect(settings, redis_url) as farm:
        keys = {farm.submit(CacheRequest(fasta=Path(fasta))).key for _ in range(n)}
        records = farm.wait(sorted(keys), timeout_s=120)
    return keys, [str(r.status) for r in records]


def test_200_submissions_from_4_clients_build_once(
    genomes: Path, farm_settings: Settings, redis_url: str, start_workers, tmp_path: Path
):
    start_workers(4, app=SLOW_APP, test_build_seconds=2)
    fasta = genomes / LAMBDA
    args = (farm_settings.model_dump_json(), redis_url, str(fasta), 50)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_submit_and_follow, [args] * 4)
    keys = set().union(*(k for k, _ in results))
    assert len(keys) == 1, "every submitter sees the same key"
    assert all(statuses == ["valid"] for _, statuses in results)
    assert build_starts(tmp_path / "worker-logs") == 1
    assert gvlfa.classify(gvlfa.default_dest(fasta), deep=True).state is State.FRESH


def test_a_batch_of_1000_distinct_requests_completes(
    genomes: Path, farm_settings: Settings, redis_url: str, start_workers
):
    start_workers(2)
    fasta = genomes / LAMBDA
    requests = [
        CacheRequest(fasta=fasta, dest=genomes / "batch" / f"{i}.gvlfa") for i in range(1000)
    ]
    with connect(farm_settings, redis_url) as farm:
        submissions = farm.submit_many(requests)
        assert len({s.key for s in submissions}) == 1000
        records = farm.wait([s.key for s in submissions], timeout_s=300)
    assert [r.status for r in records] == [Status.VALID] * 1000
    for record in records:
        dest = Path(record.dest)
        assert gvlfa.classify(dest).state is State.FRESH
        assert gvlfa.read_metadata(dest).sequence_checksum == record.checksum
    # Nothing but the caches and their lock files (kept, as GenVarLoader keeps them: deleting
    # a lock file others may hold open would let two builders lock different inodes).
    leftovers = [
        p for p in (genomes / "batch").iterdir() if not p.name.endswith((".gvlfa", ".lock"))
    ]
    assert leftovers == []


def _wait_for_status(farm: Farm, key: str, status: Status, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (record,) = farm.status([key])
        if record is not None and record.status is status:
            return record
        time.sleep(0.05)
    raise AssertionError(f"{key} never became {status}")


def test_a_worker_killed_mid_build_is_replaced_and_leaves_nothing_partial(
    genomes: Path, farm_settings: Settings, redis_url: str, start_workers, tmp_path: Path
):
    workers = start_workers(
        2, app=SLOW_APP, test_build_seconds=3, visibility_timeout_s=6, lease_ttl_s=2
    )
    fasta = genomes / LAMBDA
    dest = gvlfa.default_dest(fasta)
    with connect(farm_settings, redis_url) as farm:
        key = farm.submit(CacheRequest(fasta=fasta)).key
        building = _wait_for_status(farm, key, Status.BUILDING)
        victim = next(w for w in workers if building.worker.startswith(w.name + "@"))
        while not list(genomes.glob(f"{dest.name}.farmtmp.*")):  # mid-build: staging exists
            time.sleep(0.01)
        victim.kill()  # the main process and its pool, with SIGKILL
        while (record := farm.registry.get(key)).status is not Status.VALID:
            assert not dest.exists() or gvlfa.classify(dest).state is State.FRESH
            time.sleep(0.05)
    assert record.worker != building.worker
    assert gvlfa.classify(dest, deep=True).state is State.FRESH
    orphans = list(
        maintenance.gc(
            Registry.from_url(redis_url), [genomes], grace_s=0, allowed=farm_settings.roots
        )
    )
    assert [o.owner.pid for o in orphans] and all(".farmtmp." in o.path.name for o in orphans)
    remove_orphans(orphans)
    assert sorted(p.name for p in genomes.iterdir() if dest.name in p.name) == [
        dest.name,
        dest.name + ".lock",
    ]


def test_after_a_whole_worker_dies_a_replacement_finishes_its_key_with_no_client_action(
    genomes: Path, farm_settings: Settings, redis_url: str, start_workers
):
    (first,) = start_workers(1, app=SLOW_APP, test_build_seconds=30, lease_ttl_s=2)
    fasta = genomes / LAMBDA
    with connect(farm_settings, redis_url) as farm:
        key = farm.submit(CacheRequest(fasta=fasta)).key
        _wait_for_status(farm, key, Status.BUILDING)
        first.kill()  # main process and pool: the message is left unacknowledged
        start_workers(1, lease_ttl_s=2)
        (record,) = farm.wait([key], timeout_s=60)
    assert record.status is Status.VALID, record
    assert record.action in ("built", "rebuilt")
    assert gvlfa.classify(gvlfa.default_dest(fasta), deep=True).state is State.FRESH


def test_a_build_longer_than_the_visibility_timeout_runs_once_and_can_be_followed(
    genomes: Path, farm_settings: Settings, redis_url: str, start_workers, tmp_path: Path
):
    start_workers(3, app=SLOW_APP, test_build_seconds=8, visibility_timeout_s=2, lease_ttl_s=2)
    fasta = genomes / LAMBDA
    with connect(farm_settings, redis_url) as farm:
        key = farm.submit(CacheRequest(fasta=fasta)).key
        builder = _wait_for_status(farm, key, Status.BUILDING).worker
        assert farm.submit(CacheRequest(fasta=fasta)).key == key  # a second submitter
        (record,) = farm.wait([key], timeout_s=60)
    assert record.status is Status.VALID
    assert record.worker == builder
    logdir = tmp_path / "worker-logs"
    assert deliveries(logdir) >= 2, "the broker did redeliver the running message"
    assert build_starts(logdir) == 1


def test_a_message_that_kills_its_worker_fails_after_max_attempts(
    genomes: Path, farm_settings: Settings, redis_url: str, start_workers, tmp_path: Path
):
    """The pool child dies mid-build every time: Celery requeues (late ack, reject on worker
    lost), the next delivery takes over the lease once it expires, and after
    FARM_MAX_ATTEMPTS interrupted builds the job fails with a sentence instead of looping."""
    start_workers(1, app=SLOW_APP, test_build_kills_worker=1, lease_ttl_s=1, max_attempts=2)
    fasta = genomes / LAMBDA
    with connect(farm_settings, redis_url) as farm:
        key = farm.submit(CacheRequest(fasta=fasta)).key
        (record,) = farm.wait([key], timeout_s=120)
    assert record.status is Status.FAILED
    assert "interrupted 2 times" in record.error
    assert build_starts(tmp_path / "worker-logs") == 2
    dest = gvlfa.default_dest(fasta)
    assert not dest.exists()
    orphans = list(
        maintenance.gc(
            Registry.from_url(redis_url), [genomes], grace_s=0, allowed=farm_settings.roots
        )
    )
    assert len(orphans) == 2  # one staging dir per killed build, each found by gc
    remove_orphans(orphans)
    assert not list(genomes.glob("*.farmtmp.*"))


def test_a_build_over_its_soft_time_limit_fails_with_a_sentence_and_the_worker_goes_on(
    genomes: Path, farm_settings: Settings, redis_url: str, start_workers
):
    (worker,) = start_workers(
        1, app=SLOW_APP, test_build_seconds=30, soft_time_limit_s=1, time_limit_s=20
    )
    fasta = genomes / LAMBDA
    with connect(farm_settings, redis_url) as farm:
        key = farm.submit(CacheRequest(fasta=fasta)).key
        (record,) = farm.wait([key], timeout_s=25)  # the build alone would take 30 s
    assert record.status is Status.FAILED
    assert "exceeded the time limit of 1 s" in record.error
    assert not gvlfa.default_dest(fasta).exists() and not list(genomes.glob("*.farmtmp.*"))
    assert worker.proc.poll() is None, "the worker lives on"


def test_a_build_that_ignores_its_soft_limit_is_killed_at_the_hard_one(
    genomes: Path, farm_settings: Settings, redis_url: str, start_workers, tmp_path: Path
):
    """Stuck past the soft limit (in C code, or swallowing it): the hard limit kills the
    building process, and the key ends failed within FARM_MAX_ATTEMPTS deliveries."""
    start_workers(
        1,
        app=SLOW_APP,
        test_build_seconds=30,
        test_ignore_soft_limit=1,
        soft_time_limit_s=0.5,
        time_limit_s=1.5,
        max_attempts=1,
        lease_ttl_s=1,
    )
    fasta = genomes / LAMBDA
    with connect(farm_settings, redis_url) as farm:
        key = farm.submit(CacheRequest(fasta=fasta)).key
        (record,) = farm.wait([key], timeout_s=60)
    assert record.status is Status.FAILED
    assert "interrupted 1 times" in record.error
    logs = "".join(p.read_text() for p in (tmp_path / "worker-logs").iterdir())
    assert "SOFT-LIMIT-IGNORED" in logs, "the build did get past its soft limit"
