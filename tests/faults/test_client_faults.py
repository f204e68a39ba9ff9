"""Clients that die or are interrupted: a claim whose message was never sent, Ctrl-C while
waiting. Neither may leave a request stuck or cancel a build others rely on."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.kinds import CacheRequest
from farm.records import Status
from farm.registry import Registry
from farm.requests import prepare, request_key
from tests.faults.harness import Cluster, Figures, books_balanced, settle, sweep_orphans
from tests.support.processes import PROJECT, farm_env

pytestmark = pytest.mark.faults

# A client killed after its claims were recorded and before their messages were sent.
_DIES_BEFORE_SENDING = """
import os, sys
from pathlib import Path
from farm.client import Farm
from farm.queue import Sender
from farm.kinds import CacheRequest
Sender.send = lambda self, messages: os._exit(9)
fasta = Path(sys.argv[1])
requests = [CacheRequest(fasta=fasta, dest=fasta.parent / f"d{i}.gvlfa") for i in range(20)]
with Farm.connect() as farm:
    farm.submit_many(requests)
"""


def test_a_client_killed_between_claim_and_send_leaves_nothing_stuck(cluster: Cluster):
    figures = Figures("client killed between claim and send")
    started = time.monotonic()
    cluster.worker(concurrency=2)
    fasta = cluster.genome()
    died = subprocess.run(
        [sys.executable, "-c", _DIES_BEFORE_SENDING, str(fasta)],
        env=cluster.env(),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert died.returncode == 9, died.stderr
    keys = [
        request_key(
            prepare(CacheRequest(fasta=fasta, dest=fasta.parent / f"d{i}.gvlfa"), [cluster.root])
        )[0]
        for i in range(20)
    ]
    assert {r.status for r in cluster.registry().get_many(keys)} == {Status.QUEUED}
    figures.jobs, figures.rounds = len(keys), 1
    settle(cluster, keys, figures, timeout=60)
    figures.duplicates = cluster.builds_beyond_one(len(keys))
    sweep_orphans(cluster, figures)
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
    assert books_balanced(cluster.registry())


def _until_polling(cluster: Cluster, timeout: float = 30) -> None:
    """Until a client waits for completions (XREAD) or reads records (MGET): the command
    under test is in its wait loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        clients = cluster.registry()._r.client_list()
        if any(c.get("cmd") in ("xread", "mget") for c in clients):
            return
        time.sleep(0.02)
    raise AssertionError("the command never started waiting")


@pytest.mark.parametrize("command", ["build", "wait"])
def test_ctrl_c_while_waiting_returns_at_once_and_the_build_goes_on(cluster: Cluster, command: str):
    figures = Figures(f"Ctrl-C on `farm {command}` during a worker's build")
    started = time.monotonic()
    cluster.worker()
    fasta = cluster.genome()
    request = CacheRequest(fasta=fasta)
    if command == "wait":
        key = cluster.submit_paused(request, "building", 4)
    else:
        key = cluster.plan_pause(request, "building", 4)
    args = ["build", "cache", str(fasta)] if command == "build" else ["wait", key]
    cli = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", *args],
        env=cluster.env(),
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cluster.marker("building", key)
    _until_polling(cluster)  # interrupt the wait itself, not the start-up
    cli.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    _, err = cli.communicate(timeout=30)
    figures.notes.append(f"exited {time.monotonic() - interrupted:.2f} s after Ctrl-C")
    assert cli.returncode == 130
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "go on" in err or "goes on" in err
    figures.jobs = figures.rounds = 1
    (record,) = settle(cluster, [key], figures, timeout=60)
    assert record.worker.startswith("w0@")
    sweep_orphans(cluster, figures)
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()


def _slow_gzip_fasta(path: Path) -> Path:
    """~360 MB of sequence in a 3 MB gzip: the streaming reader takes a second or so, enough
    to interrupt the real builder (no test seam) in the middle."""
    line = b"ACGTTGCAAGCTTAGCCGATCGATCGGCTAGCTAGGCTAAGCTTCGAGCTAGCTAGCATCGA\n"
    block = line * 100_000
    with gzip.open(path, "wb", compresslevel=1) as f:
        for contig in range(6):
            f.write(b">c%d\n" % contig)
            for _ in range(10):
                f.write(block)
    return path


@pytest.mark.parametrize("worker", ["cold", "warm"])
def test_ctrl_c_on_an_embedded_build_cancels_it_cleanly(tmp_path: Path, worker: str):
    """The embedded default's `farm build` builds here when no worker runs (cold) and through
    the embedded worker when one does (warm): either way Ctrl-C stops the build (staging
    removed), records it cancelled, and says so in one line."""
    figures = Figures(f"Ctrl-C on `farm build` on the embedded default, {worker} worker")
    started = time.monotonic()
    fasta = _slow_gzip_fasta(tmp_path / "big.fa.gz")
    env = farm_env("", tmp_path)
    del env["FARM_REDIS_URL"]
    state = tmp_path / "state"
    env["FARM_STATE_DIR"] = str(state)
    dest = tmp_path / "big.gvlfa"

    def farm(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "farm.cli", *args]
        return subprocess.run(argv, env=env, cwd=PROJECT, capture_output=True, text=True)

    try:
        if worker == "warm":
            assert farm("server", "start").returncode == 0
            registry = Registry.from_url(f"unix://{state / 'redis.sock'}")
            deadline = time.monotonic() + 60
            while not registry.live_workers(within_s=6):
                assert time.monotonic() < deadline, "the embedded worker never started"
                time.sleep(0.1)
        cli = subprocess.Popen(
            [sys.executable, "-m", "farm.cli", "build", "cache", str(fasta), "--dest", str(dest)],
            env=env,
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("big.gvlfa.farmtmp.*")):
            assert time.monotonic() < deadline and cli.poll() is None, cli.stderr
            time.sleep(0.005)
        cli.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        _, err = cli.communicate(timeout=60)
        figures.notes.append(f"exited {time.monotonic() - interrupted:.2f} s after Ctrl-C")
        figures.jobs = figures.rounds = 1
        assert cli.returncode == 130, err
        assert err.strip().startswith("Cancelled") and len(err.strip().splitlines()) == 1, err
        assert not dest.exists() and not list(tmp_path.glob("*.farmtmp.*"))
        (record,) = [json.loads(line) for line in farm("ls", "--json").stdout.splitlines()]
        assert record["status"] == "failed" and "cancelled" in record["error"], record
        if worker == "warm":
            assert record["worker"].startswith("embedded-"), record
        else:
            assert record["worker"].startswith("inline@"), record
    finally:
        farm("server", "stop")
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
