"""Workers that end on their own, as batch schedulers and autoscalers need: a lifetime (a
walltime) that ends in the middle of a slow build, a build count (KEDA ScaledJob), an idle
period (scale to zero). Each ends as a warm shutdown, exits 0, and loses nothing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from farm.kinds import CacheRequest
from farm.records import Status
from tests.faults.harness import Cluster, Figures, books_balanced, settle, sweep_orphans
from tests.support.processes import PROJECT, Worker

# Keys are submitted before any worker runs here, on purpose.
pytestmark = [pytest.mark.faults, pytest.mark.filterwarnings("ignore::farm.client.NoWorkerWarning")]


class CliWorker(Worker):
    """``farm worker OPTIONS`` as an operator runs it (the production app, through the CLI)."""

    def __init__(self, cluster: Cluster, name: str, *options: str, **env: object) -> None:
        self.name = name
        self.log = cluster.logs / f"{name}.log"
        argv = [
            sys.executable, "-m", "farm.cli", "worker", *options,
            "-n", f"{name}@%h", "--concurrency", "1", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                env=cluster.env(**env),
                cwd=PROJECT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        cluster.workers.append(self)


def _exit_within(worker: Worker, seconds: float) -> float:
    """Wait for the worker to exit; when it did, on the monotonic clock."""
    try:
        worker.proc.wait(seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"{worker.name} still runs after {seconds:g} s:\n{worker.log.read_text()[-3000:]}"
        )
    return time.monotonic()


def test_a_lifetime_ends_in_time_and_hands_a_slow_build_to_another_worker(cluster: Cluster):
    """A 20 s lifetime, a build that would take a minute: the worker drains before its end
    (lifetime - stop grace - margin), hands the key back, and is gone by its lifetime; the
    key is built by another worker, once, and nothing is left over."""
    figures = Figures("lifetime shorter than a slow build")
    lifetime = 20.0
    born = time.monotonic()
    leaving = cluster.worker(worker_lifetime_s=lifetime)
    fasta = cluster.genome()
    key = cluster.submit_paused(CacheRequest(fasta=fasta), "building", 60)
    figures.jobs = figures.rounds = 1
    cluster.marker("building", key, timeout=lifetime)
    survivor = cluster.worker()
    gone = _exit_within(leaving, lifetime + 10)
    assert leaving.proc.returncode == 0, leaving.log.read_text()[-3000:]
    assert gone - born <= lifetime + 1.0, f"exited {gone - born:.1f} s after it was started"
    log = leaving.log.read_text()
    assert "lifetime of 20 s nearly over: stopping" in log and "key handed back" in log
    (record,) = settle(cluster, [key], figures, timeout=60)
    assert record is not None and record.status is Status.VALID
    assert record.worker.startswith(survivor.name + "@")
    figures.duplicates = cluster.builds_beyond_one(1)
    sweep_orphans(cluster, figures)
    figures.seconds = time.monotonic() - born
    figures.report()
    figures.assert_healed()
    assert figures.cleaned == 0, "the drained build removed its own staging directory"
    assert books_balanced(cluster.registry())


def test_max_builds_one_builds_one_key_and_exits(cluster: Cluster):
    """`farm worker --max-builds 1` (one key per pod): it builds one key, takes no other
    message, and exits 0; the second key waits, queued, for the next worker."""
    figures = Figures("--max-builds 1")
    started = time.monotonic()
    keys = [cluster.farm().submit(CacheRequest(fasta=cluster.genome(n))).key for n in "ab"]
    figures.jobs = figures.rounds = 2
    one = CliWorker(cluster, "one", "--max-builds", "1")
    _exit_within(one, 90)
    assert one.proc.returncode == 0, one.log.read_text()[-3000:]
    assert "1 build(s) done (--max-builds): stopping" in one.log.read_text()
    records = cluster.registry().shown(keys)
    built = [r for r in records if r is not None and r.status is Status.VALID]
    assert len(built) == 1 and built[0].worker.startswith("one@")
    waiting = [r for r in records if r is not None and r.status is Status.QUEUED]
    assert len(waiting) == 1, [r.status if r else None for r in records]
    assert cluster.log_count("key handed back") == 0  # it took no second key
    next_one = CliWorker(cluster, "next", "--max-builds", "1")
    _exit_within(next_one, 90)
    assert next_one.proc.returncode == 0
    records = settle(cluster, keys, figures, timeout=30)
    assert {r.worker.split("@")[0] for r in records if r is not None} == {"one", "next"}
    sweep_orphans(cluster, figures)
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
    assert books_balanced(cluster.registry())


def test_an_idle_worker_exits_after_its_idle_period_and_not_during_a_build(cluster: Cluster):
    """An idle exit of 3 s on a worker whose build takes 6 s: it does not leave mid-build,
    and exits 0 about 3 s after the build."""
    figures = Figures("idle exit during and after a build")
    started = time.monotonic()
    key = cluster.farm().submit(CacheRequest(fasta=cluster.genome())).key
    figures.jobs = figures.rounds = 1
    idle = cluster.worker(idle_exit_s=3, test_build_seconds=6)
    (record,) = settle(cluster, [key], figures, timeout=90)
    built_at = time.monotonic()
    assert record is not None and record.worker.startswith(idle.name + "@")
    assert idle.proc.poll() is None, "it left during the build"
    gone = _exit_within(idle, 30)
    assert idle.proc.returncode == 0
    assert 2.0 <= gone - built_at <= 3.0 + 5.0, f"exited {gone - built_at:.1f} s after the build"
    assert "idle for 3 s: stopping" in idle.log.read_text()
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()


def test_farm_worker_lifetime_and_idle_exit_options(cluster: Cluster):
    """The options as an operator gives them: each worker is gone, exit 0, in time."""
    born = time.monotonic()
    idle = CliWorker(cluster, "idle", "--idle-exit", "2s")
    timed = CliWorker(cluster, "timed", "--lifetime", "12s", "--lifetime-stagger", "1s")
    _exit_within(idle, 30)
    assert idle.proc.returncode == 0 and "idle for 2 s: stopping" in idle.log.read_text()
    gone = _exit_within(timed, 30)
    assert timed.proc.returncode == 0, timed.log.read_text()[-3000:]
    assert "lifetime of 12 s nearly over" in timed.log.read_text()
    assert gone - born <= 12.0 + 1.0
