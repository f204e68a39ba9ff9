"""An autoscaled run, driven the way KEDA drives a Deployment: a loop scrapes the farm's
exporter (``farm metrics --listen``) for ``gvlfarm_keys`` and starts ``farm worker``
processes (0 to 4) while 500 requests run; workers scale back to zero by their own idle exit.

Every key must end valid and be built once (``gvlfarm_builds_total`` counts each builder's
last word), no worker may outlive its idle limit once the work is done, and nothing is left
behind. The figures (time to the first worker, to the last key, to the last exit) go to the
fault report and the README's Operations section.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from farm.kinds import CacheRequest
from tests.faults.harness import Cluster, Figures, books_balanced, settle, sweep_orphans

pytestmark = [pytest.mark.faults, pytest.mark.slow]

FARM = Path(sys.executable).with_name("farm")
REQUESTS = 500
MAX_WORKERS = 4
KEYS_PER_WORKER = 25  # the ScaledObject's target: desired = ceil(keys / target)
IDLE_EXIT_S = 3.0
POLL_S = 0.5  # KEDA polls every 30 s by default; a test cannot wait that long
COOLDOWN_S = 30.0  # scale to zero by SIGTERM only after this long with no key: never, here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scraped(url: str, prefix: str) -> float:
    """The sum of the series whose name and labels start with ``prefix``, as a PromQL
    ``sum()`` over them reads it."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    return sum(float(line.rpartition(" ")[2]) for line in lines if line.startswith(prefix))


def _keys_in_flight(url: str) -> float:
    """``sum(gvlfarm_keys)``, the ScaledObject's query."""
    return _scraped(url, "gvlfarm_keys{")


@dataclass
class Pool:
    """The workers the autoscaler runs: real ``farm worker`` processes, each its own group."""

    cluster: Cluster
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    exits: dict[int, float] = field(default_factory=dict)  # pid -> when it was seen gone
    terminated: int = 0  # workers the autoscaler had to SIGTERM
    peak: int = 0

    def running(self) -> list[subprocess.Popen[bytes]]:
        now = time.monotonic()
        for p in self.procs:
            if p.poll() is not None:
                self.exits.setdefault(p.pid, now)
        return [p for p in self.procs if p.poll() is None]

    def start(self) -> None:
        log = open(self.cluster.logs / f"pool{len(self.procs)}.log", "wb")  # noqa: SIM115
        argv = [
            str(FARM), "worker", "--concurrency", "1", "--idle-exit", f"{IDLE_EXIT_S:g}s",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        self.procs.append(
            subprocess.Popen(
                argv,
                env=self.cluster.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _autoscale(pool: Pool, metrics_url: str, stop: threading.Event) -> None:
    """KEDA's loop in small: scale up to ceil(keys / target) at once; to zero after the
    cooldown with no key. Between, a Deployment's scale-down waits out its stabilization
    window (5 min), longer than this run: idle workers leave by their own idle exit."""
    empty_since: float | None = None
    while not stop.wait(POLL_S):
        try:
            keys = _keys_in_flight(metrics_url)
        except OSError:
            continue  # the exporter is starting; KEDA keeps the last count
        running = pool.running()
        desired = min(MAX_WORKERS, math.ceil(keys / KEYS_PER_WORKER))
        for _ in range(desired - len(running)):
            pool.start()
        pool.peak = max(pool.peak, len(pool.running()))
        empty_since = (empty_since or time.monotonic()) if keys == 0 else None
        if empty_since is not None and time.monotonic() - empty_since >= COOLDOWN_S:
            for p in running:
                p.send_signal(signal.SIGTERM)
                pool.terminated += 1


# Submitting to a pool at zero says no worker consumes yet: true, and what starts the first.
@pytest.mark.filterwarnings("ignore::farm.client.NoWorkerWarning")
def test_an_autoscaled_pool_builds_every_key_once_and_scales_back_to_zero(cluster: Cluster):
    figures = Figures(f"autoscaled pool, 0-{MAX_WORKERS} workers, {REQUESTS} requests")
    port = _free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    exporter = subprocess.Popen(
        [str(FARM), "metrics", "--listen", f"127.0.0.1:{port}"],
        env=cluster.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pool = Pool(cluster)
    stop = threading.Event()
    scaler = threading.Thread(target=_autoscale, args=(pool, metrics_url, stop), daemon=True)
    try:
        fasta = cluster.genome()
        out = cluster.root / "out"
        out.mkdir()
        requests = [CacheRequest(fasta=fasta, dest=out / f"{i}.gvlfa") for i in range(REQUESTS)]
        started = time.monotonic()
        keys = [s.key for s in cluster.farm().submit_many(requests)]
        figures.jobs = figures.rounds = len(keys)
        scaler.start()
        first_worker = _wait_for(lambda: pool.procs, 60)
        first_worker_s = time.monotonic() - started if first_worker else math.inf

        settle(cluster, keys, figures, timeout=300)
        done_s = time.monotonic() - started
        # Scale to zero: every worker leaves by its idle exit, with no SIGTERM.
        deadline = time.monotonic() + IDLE_EXIT_S + 10
        while pool.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        lingering = len(pool.running())
        drained_s = max(pool.exits.values(), default=started) - started

        built = _scraped(metrics_url, 'gvlfarm_builds_total{kind="cache",outcome="built"}')
        figures.duplicates = int(built) - len(keys) if built > len(keys) else 0
        figures.worker_exits = sum(1 for p in pool.procs if p.returncode not in (0, None))
        sweep_orphans(cluster, figures)
        figures.seconds = time.monotonic() - started
        figures.notes.append(
            f"first worker {first_worker_s:.1f} s, all valid {done_s:.1f} s, last worker gone "
            f"{drained_s:.1f} s ({drained_s - done_s:.1f} s after the work), peak "
            f"{pool.peak} workers, {len(pool.procs)} started"
        )
        figures.report()
        figures.assert_healed()
        assert built == len(keys), f"{built:g} builds for {len(keys)} keys"
        assert lingering == 0, f"{lingering} worker(s) outlived the idle exit"
        assert pool.terminated == 0, "the pool went to zero by idle exit, not by SIGTERM"
        assert 2 <= pool.peak <= MAX_WORKERS, f"peak {pool.peak} workers"
        assert drained_s - done_s <= IDLE_EXIT_S + 10
        assert figures.cleaned == 0 and books_balanced(cluster.registry())
        assert _keys_in_flight(metrics_url) == 0
    finally:
        stop.set()
        scaler.join(10) if scaler.is_alive() else None
        pool.stop_all()
        exporter.terminate()
        exporter.wait(10)


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
