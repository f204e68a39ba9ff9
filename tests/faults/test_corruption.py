"""Same-size corruption of published artifacts, and sources edited in place mid-build.

A corrupt artifact that ``farm verify`` marked invalid is rebuilt by the next request, never
reused on a shallow check; a source edited under a build (its mtime set back) fails the build
with a sentence and publishes nothing.
"""

from __future__ import annotations

import gzip
import os
import shutil
import time
from pathlib import Path

import pytest

from farm import maintenance
from farm.artifacts import dataset, gvlfa
from farm.artifacts.base import State
from farm.kinds import CacheRequest, DatasetRequest
from farm.records import Status
from tests.faults.harness import DATA, Cluster, Figures, books_balanced, settle, sweep_orphans
from tests.support.dataset_data import copy_inputs

pytestmark = pytest.mark.faults

DATASET_FILES = ("offsets.npy", "variant_idxs.npy", "regions.npy", "input_regions.arrow")


def corrupt(path: Path) -> None:
    """One wrong byte near the end, size kept: bit rot, a bad copy, a stray write."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size - 9)
        old = f.read(1)
        f.seek(size - 9)
        f.write(bytes([old[0] ^ 0x5A]))


def test_corrupt_artifacts_marked_invalid_are_rebuilt_not_reused(cluster: Cluster):
    figures = Figures("same-size corruption, then verify, then a new request")
    started = time.monotonic()
    cluster.worker(concurrency=2)
    fasta = cluster.genome()
    inputs = copy_inputs(cluster.root / "chr20")
    caches = [CacheRequest(fasta=fasta, dest=fasta.parent / f"c{i}.gvlfa") for i in range(3)]
    ds = DatasetRequest(
        variants=inputs["vcf"], regions=inputs["tiles"], dest=cluster.root / "tiles.gvl"
    )
    farm, registry = cluster.farm(), cluster.registry()
    first = farm.submit_many([*caches, ds])
    settle(cluster, [s.key for s in first], figures, timeout=120)
    damaged: list[tuple[str, Path]] = [
        (s.key, Path(s.record.dest) / gvlfa.DATA_FILE) for s in first[:3]
    ]
    ds_key = first[3].key
    for round_, target in enumerate([*damaged, *((ds_key, n) for n in DATASET_FILES)]):
        key, victim = target
        if key == ds_key:
            victim = next(Path(first[3].record.dest).rglob(str(victim)))
        before = registry.get(key)
        corrupt(victim)
        (verdict,) = maintenance.verify(registry, [key])
        assert verdict.status is Status.INVALID, (victim, verdict)
        request = caches[round_] if key != ds_key else ds
        again = farm.submit(request)
        assert again.key == key and again.enqueued, "an invalid artifact is built again"
        (record,) = settle(cluster, [key], figures, timeout=120)
        figures.rounds += 1
        figures.jobs += 1
        assert record.action == "rebuilt", record
        assert record.finished_at > before.finished_at
        dest = Path(record.dest)
        if key == ds_key:
            dataset.validate_dataset(dest, deep=True)
        else:
            assert gvlfa.classify(dest, deep=True).state is State.FRESH
    sweep_orphans(cluster, figures)
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
    assert books_balanced(registry)


def test_a_source_edited_in_place_mid_build_is_never_published(cluster: Cluster):
    """Two same-size edits past the first MiB with the mtime set back, while the FASTA is read:
    the build fails with its sentence; the file as it is now builds on a new request."""
    figures = Figures("in-place source edit mid-build, mtime restored")
    started = time.monotonic()
    cluster.worker()
    folder = cluster.root / "big"
    folder.mkdir()
    fasta = folder / "chr20.fa"
    source = DATA / "grch37_chr20" / "GRCh37_chr20_0-2Mb_Nmasked_first1Mb.fa.gz"
    with gzip.open(source) as f_in, open(fasta, "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
    assert fasta.stat().st_size > 1_900_000 > 1 << 20  # the edits lie past the fingerprint
    key = cluster.submit_paused(CacheRequest(fasta=fasta), "read", 2)
    figures.jobs = figures.rounds = 1
    cluster.marker("read", key)
    stat = fasta.stat()
    for offset in (1_500_000, 1_900_000):
        with open(fasta, "r+b") as f:
            f.seek(offset)
            base = f.read(1)
            f.seek(offset)
            f.write(b"T" if base != b"T" else b"G")
    os.utime(fasta, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (record,) = cluster.farm().wait([key], timeout_s=60)
    assert record.status is Status.FAILED, record
    assert "changed while" in record.error and str(fasta) in record.error
    dest = gvlfa.default_dest(fasta)
    assert not dest.exists()
    again = cluster.farm().submit(CacheRequest(fasta=fasta))
    settle(cluster, [again.key], figures, timeout=60)
    assert gvlfa.classify(dest, deep=True).state is State.FRESH
    sweep_orphans(cluster, figures)
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
