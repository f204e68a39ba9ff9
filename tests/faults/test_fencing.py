"""Fencing, as an adversary tests it: a builder frozen with SIGSTOP (its whole process group)
past its lease while another worker takes its key over, then resumed. Whether it was frozen
mid-build or between its last grant check and its rename, it must never undo the takeover:
no record rewritten, the destination holds the newest request's bytes, nothing left over,
and the frozen worker lives on and builds new work."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from farm.artifacts import gvlfa
from farm.kinds import CacheRequest
from farm.records import ArtifactRecord, Status
from tests.faults.harness import Cluster, Figures, books_balanced, settle, sweep_orphans
from tests.support.processes import Worker

pytestmark = pytest.mark.faults

# Where the first builder freezes: mid-build (it learns at its next word that it lost), or
# after its grant was checked and before its rename (the gap no filesystem fences).
PHASES = ("building", "fenced")
# The destination lock (`<dest>.lock`) shared by the workers, as on one host or a filesystem
# whose locks reach every host, or per host (NFS `nolock`, `local_lock=`): the frozen builder
# holds its lock, and the takeover must not rest on it either way. Per host only for the
# plain build, the cheapest scenario: the lock is taken the same way in the others.
LOCKS = ("shared", "per-host")


def _workers(cluster: Cluster, lock: str, n: int = 2) -> None:
    for i in range(n):
        cluster.worker(**({"test_lock_host": f"host{i}"} if lock == "per-host" else {}))


def _freeze(worker: Worker) -> None:
    os.killpg(worker.proc.pid, signal.SIGSTOP)


def _thaw(worker: Worker) -> None:
    os.killpg(worker.proc.pid, signal.SIGCONT)


def _edit(fasta: Path, version: int) -> None:
    """A new version of the source: another base at a position of its own per version."""
    text = bytearray(fasta.read_bytes())
    at = text.index(b"\n") + 1 + version
    text[at] = b"C"[0] if text[at] != b"C"[0] else b"G"[0]
    fasta.write_bytes(bytes(text))


def _published(dest: Path) -> tuple[int, dict | None]:
    return dest.stat().st_ino, gvlfa.read_metadata(dest).farm_fence


def _resume_and_watch(cluster: Cluster, victim: Worker, seconds: float = 6.0) -> None:
    """Let the frozen builder run on until it has had every chance to do harm."""
    _thaw(victim)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and "lost its grant" not in victim.log.read_text():
        time.sleep(0.1)
    time.sleep(1.0)  # and whatever it would do after


def _check_after(
    cluster: Cluster, figures: Figures, victim: Worker, untouched: dict[str, ArtifactRecord]
) -> None:
    registry = cluster.registry()
    for key, before in untouched.items():
        assert registry.get(key) == before, "the late builder rewrote a record"
    sweep_orphans(cluster, figures)
    tracebacks = cluster.log_count("Traceback")
    assert tracebacks == 0, f"{tracebacks} tracebacks in the worker logs"
    assert victim.proc.poll() is None, "the late worker died"
    figures.worker_exits = sum(1 for w in cluster.workers if w.proc.poll() is not None)
    assert books_balanced(registry)


def _lives_on(cluster: Cluster, victim: Worker, fasta: Path, figures: Figures) -> None:
    """With the other workers stopped, the resumed worker builds new work."""
    for w in cluster.workers:
        if w is not victim:
            w.stop()
    key = cluster.farm().submit(CacheRequest(fasta=fasta, dest=fasta.parent / "after.gvlfa")).key
    (record,) = settle(cluster, [key], figures, timeout=60)
    assert record is not None and record.worker and record.worker.startswith(victim.name)


def _end_round(
    cluster: Cluster,
    figures: Figures,
    victim: Worker,
    dest: Path,
    untouched: dict[str, ArtifactRecord],
    started: float,
) -> None:
    """Resume the frozen builder; the destination and the records must be as they were."""
    before = _published(dest)
    _resume_and_watch(cluster, victim)
    assert _published(dest) == before, "the late builder swapped the destination"
    _check_after(cluster, figures, victim, untouched)
    figures.seconds = time.monotonic() - started


def _victim(cluster: Cluster, phase: str, key: str) -> Worker:
    pid = int(cluster.marker(phase, key).name.split(".")[1])
    victim = cluster.worker_of(pid)
    _freeze(victim)
    return victim


@pytest.mark.parametrize("lock", LOCKS)
@pytest.mark.parametrize("phase", PHASES)
def test_a_frozen_builder_never_undoes_the_takeover_of_a_plain_build(
    cluster: Cluster, phase: str, lock: str
):
    figures = Figures(f"builder frozen past its lease at {phase}, plain build, {lock} lock")
    started = time.monotonic()
    _workers(cluster, lock)
    fasta = cluster.genome()
    dest = fasta.parent / "plain.gvlfa"
    key = cluster.submit_paused(CacheRequest(fasta=fasta, dest=dest), phase, 0.5)
    figures.jobs = figures.rounds = 1
    victim = _victim(cluster, phase, key)
    frozen_at = time.time()
    (record,) = settle(cluster, [key], figures, timeout=60)
    assert record is not None and not record.worker.startswith(victim.name)
    # Taken over and finished in bounded time: the lease, a watchdog sweep, at most a third
    # of the lease waiting on the frozen builder's lock, the build; never the lock's 600 s.
    took = record.finished_at - frozen_at
    figures.notes.append(f"taken over and finished {took:.1f} s after the freeze")
    assert took < cluster.settings().lease_ttl_s + 10, took
    if lock == "per-host":
        assert cluster.log_count(f"{dest}.lock.host") >= 2  # each host took its own lock
    assert _published(dest)[1] == {"key": key, "generation": record.generation}
    _end_round(cluster, figures, victim, dest, {key: record}, started)
    _lives_on(cluster, victim, fasta, figures)
    figures.report()
    figures.assert_healed()


# The forced rebuild also with destinations published as versions behind a link (what NFS,
# Lustre and CephFS get), where the late publisher would rename its link over the newer one.
REBUILDS = [(phase, "auto") for phase in PHASES] + [("fenced", "link")]


@pytest.mark.parametrize(("phase", "layout"), REBUILDS)
def test_a_frozen_builder_never_swaps_out_a_forced_rebuild(
    cluster: Cluster, phase: str, layout: str
):
    figures = Figures(f"builder frozen past its lease at {phase}, forced rebuild, {layout}")
    started = time.monotonic()
    for _ in range(2):
        cluster.worker(publish_mode=layout)
    fasta = cluster.genome()
    dest = fasta.parent / "rebuilt.gvlfa"
    request = CacheRequest(fasta=fasta, dest=dest)
    farm, registry = cluster.farm(), cluster.registry()
    (first,) = settle(cluster, [farm.submit(request).key], figures, timeout=60)
    assert first is not None
    registry.put(first.evolve(status=Status.INVALID, rebuild=True, error="found damaged"))
    key = cluster.submit_paused(request, phase, 0.5)
    figures.jobs = figures.rounds = 1
    victim = _victim(cluster, phase, key)
    (record,) = settle(cluster, [key], figures, timeout=60)
    assert record is not None and record.action == "rebuilt"
    assert _published(dest)[1] == {"key": key, "generation": record.generation}
    assert dest.is_symlink() is (layout == "link")
    _end_round(cluster, figures, victim, dest, {key: record}, started)
    figures.report()
    figures.assert_healed()


@pytest.mark.parametrize("phase", PHASES)
def test_an_older_source_never_takes_the_destination_from_a_newer_request(
    cluster: Cluster, phase: str
):
    figures = Figures(f"builder frozen past its lease at {phase}, source superseded")
    started = time.monotonic()
    for _ in range(2):
        cluster.worker()
    fasta = cluster.genome()
    dest = fasta.parent / "versions.gvlfa"
    request = CacheRequest(fasta=fasta, dest=dest)
    farm, registry = cluster.farm(), cluster.registry()
    (v0,) = settle(cluster, [farm.submit(request).key], figures, timeout=60)
    assert v0 is not None and v0.status is Status.VALID
    _edit(fasta, 1)
    k1 = cluster.submit_paused(request, phase, 0.5)
    victim = _victim(cluster, phase, k1)
    _edit(fasta, 2)
    k2 = farm.submit(request).key
    figures.jobs = figures.rounds = 2
    assert len({v0.key, k1, k2}) == 3
    newer, older = settle(cluster, [k2, k1], figures, timeout=60)
    figures.failed -= 1  # the older request fails on purpose: it was superseded
    assert newer is not None and newer.status is Status.VALID
    # Retaken by the other worker, it fails on its changed source or on the newer request.
    assert older is not None and older.status is Status.FAILED
    assert k2 in older.error or "changed" in older.error, older.error
    assert _published(dest)[1] == {"key": k2, "generation": newer.generation}
    assert registry.key_for_dest(str(dest)) == k2
    _end_round(cluster, figures, victim, dest, {k1: older, k2: newer}, started)
    assert registry.key_for_dest(str(dest)) == k2
    assert gvlfa.classify(dest, deep=True).state.usable
    figures.report()
    figures.assert_healed()
