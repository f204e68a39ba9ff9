"""Destinations published as versions behind a link (``FARM_PUBLISH_MODE=link``, what a shared
filesystem without ``RENAME_EXCHANGE`` gets), end to end: real workers build a cache and a
dataset, rebuild them when they are found invalid and requested again, and the real
GenVarLoader opens both through the link, before and after, while a reader that opened the
first version keeps reading it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import genvarloader as gvl
import numpy as np
import pytest
from genvarloader import _fasta_cache as gvl_cache

from farm import kinds, maintenance, versions
from farm.artifacts import gvlfa
from farm.artifacts.base import State
from farm.client import Farm
from farm.config import Settings
from farm.kinds import CacheRequest, DatasetRequest
from farm.orphans import remove_orphans
from farm.queue import Sender
from farm.records import Status
from farm.registry import Registry
from tests.support.dataset_data import copy_inputs


@pytest.fixture
def farm(farm_settings: Settings, redis_url: str) -> Iterator[Farm]:
    with Farm(farm_settings, Registry.from_url(redis_url), Sender(farm_settings, redis_url)) as f:
        yield f


def _haplotypes(dest: Path, fasta: Path) -> tuple[np.ndarray, np.ndarray]:
    ds = gvl.Dataset.open(dest, fasta).with_seqs("haplotypes")
    batch = ds[0:20, :]
    return np.asarray(batch.data).copy(), np.asarray(batch.lengths).copy()


def test_workers_in_link_mode_build_rebuild_and_genvarloader_opens_through_the_link(
    farm: Farm, start_workers, tmp_path: Path
) -> None:
    inputs = copy_inputs(tmp_path / "in")
    start_workers(1, publish_mode="link")
    cache = CacheRequest(fasta=inputs["fasta"])
    dataset = DatasetRequest(variants=inputs["vcf"], regions=inputs["tiles"], dest=tmp_path / "ds")
    keys = [farm.submit(r).key for r in (cache, dataset)]
    records = farm.wait(keys, timeout_s=180)
    assert [r.status for r in records] == [Status.VALID] * 2, [r.error for r in records]
    cache_dest, ds_dest = (Path(r.dest) for r in records)
    assert cache_dest == gvlfa.default_dest(inputs["fasta"]) and ds_dest == tmp_path / "ds"
    first = {d: os.readlink(d) for d in (cache_dest, ds_dest)}
    assert all(versions.is_farm_link(d) for d in first)

    # GenVarLoader finds the cache beside its FASTA through the link and rebuilds nothing.
    ref = gvl.Reference.from_path(inputs["fasta"])
    assert gvl_cache.load(cache_dest)[2] == "fresh"
    contig = next(iter(gvlfa.read_metadata(cache_dest).contigs))
    seq = ref.fetch([contig], [1_000_000], [1_000_100]).data.tobytes()
    data, lengths = _haplotypes(ds_dest, inputs["fasta"])
    held = open(ds_dest / "genotypes" / "variant_idxs.npy", "rb")  # noqa: SIM115 - a reader
    held_bytes = held.read()
    held.seek(0)

    # Found invalid and requested again: both rebuilt, each by a new link to a new version.
    registry = farm.registry
    for record in records:
        registry.put(record.evolve(status=Status.INVALID, rebuild=True, error="found damaged"))
    again = farm.wait([farm.submit(r).key for r in (cache, dataset)], timeout_s=180)
    assert [(r.status, r.action) for r in again] == [(Status.VALID, "rebuilt")] * 2
    for record, dest in zip(again, (cache_dest, ds_dest), strict=True):
        assert os.readlink(dest) != first[dest]
        assert kinds.fence_of(dest).generation == record.generation
        assert Path(record.dest) == dest  # the link's path, never the version's
    try:
        assert held.read() == held_bytes  # the old version stays for its grace
    finally:
        held.close()

    assert gvl_cache.load(cache_dest)[2] == "fresh"
    assert (
        gvl.Reference.from_path(inputs["fasta"])
        .fetch([contig], [1_000_000], [1_000_100])
        .data.tobytes()
        == seq
    )
    again_data, again_lengths = _haplotypes(ds_dest, inputs["fasta"])
    np.testing.assert_array_equal(again_data, data)
    np.testing.assert_array_equal(again_lengths, lengths)

    # verify follows the links; gc keeps the old versions for their grace, then removes them.
    assert {v.status for v in maintenance.verify(registry, [r.key for r in again])} == {
        Status.VALID
    }
    allowed = [tmp_path.resolve()]
    assert list(maintenance.gc(registry, [tmp_path], grace_s=0, allowed=allowed,
                               version_grace_s=3600)) == []  # fmt: skip
    old = list(maintenance.gc(registry, [tmp_path], grace_s=0, allowed=allowed, version_grace_s=0))
    assert sorted(o.path.parent.name for o in old) == sorted(
        f".{d.name}.farmv" for d in (cache_dest, ds_dest)
    )
    remove_orphans(old)
    for dest in (cache_dest, ds_dest):
        assert os.listdir(dest.parent / f".{dest.name}.farmv") == [dest.resolve().name]
    assert gvlfa.classify(cache_dest, deep=True).state is State.FRESH
    assert kinds.classify(dataset.absolute(), deep=True).state is State.FRESH
