"""Validity is earned: a forced build never reuses what is at the destination.

The reuse shortcut trusts a shallow check (sizes, the sources' fingerprints; for datasets
GenVarLoader's own open-time checks), which a same-size corruption passes: GenVarLoader itself
takes such an artifact as fresh. These tests corrupt real artifacts in place, show that an
ordinary ensure reuses them (why force exists), and that a forced build swaps in a correct one
that passes the deep check and opens in the real GenVarLoader.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import genvarloader as gvl
import numpy as np
import pytest
from genvarloader import _fasta_cache as gvl_cache

from farm import kinds
from farm.artifacts import gvlfa
from farm.artifacts.base import State
from farm.artifacts.dataset import build_dataset, classify_dataset, validate_dataset
from farm.errors import ArtifactInvalidError, InputError
from farm.kinds import DatasetRequest
from farm.publish import ASIDE_MARK, STAGING_MARK, Outcome, Owner
from tests.support.dataset_data import copy_inputs


def _corrupt(path: Path, offset: int) -> None:
    """One wrong byte, size kept: bit rot, a bad copy, a stray write."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0x02]))


def _nothing_left(dest: Path) -> None:
    marks = (STAGING_MARK, ASIDE_MARK)
    assert [p.name for p in dest.parent.iterdir() if any(m in p.name for m in marks)] == []


def _files(dest: Path) -> dict[str, bytes]:
    return {
        p.relative_to(dest).as_posix(): p.read_bytes()
        for p in sorted(dest.rglob("*"))
        if p.is_file()
    }


def _stamp(dest: Path) -> dict[str, tuple[int, int]]:
    return {n: ((dest / n).stat().st_ino, (dest / n).stat().st_mtime_ns) for n in _files(dest)}


# --- caches --------------------------------------------------------------------------------


@pytest.fixture
def chr20(real_genomes: dict[str, Path]) -> Path:
    return real_genomes["chr20"]


def test_a_forced_build_replaces_a_cache_that_looks_fresh_but_is_corrupt(chr20: Path) -> None:
    dest = gvlfa.ensure_cache(chr20).dest
    data = dest / gvlfa.DATA_FILE
    good = data.read_bytes()
    offset = len(good) * 3 // 4  # in the unmasked half of the sequence
    _corrupt(data, offset)
    assert data.stat().st_size == len(good)
    assert gvlfa.classify(dest).state is State.FRESH  # sizes and fingerprint: blind to it
    assert gvl_cache.load(dest)[2] == "fresh"  # and so is GenVarLoader
    assert gvlfa.classify(dest, deep=True).state is State.CORRUPT

    again = gvlfa.ensure_cache(chr20)  # today's shortcut: reused, corrupt
    assert (again.action, again.outcome) == ("reused", None)
    assert data.read_bytes() != good

    forced = gvlfa.ensure_cache(chr20, force=True)
    assert (forced.action, forced.outcome) == ("rebuilt", Outcome.REPLACED)
    assert data.read_bytes() == good
    assert gvlfa.classify(dest, deep=True).state is State.FRESH
    _nothing_left(dest)

    before = _stamp(dest)
    ref = gvl.Reference.from_path(chr20)  # GenVarLoader opens it as is, rebuilds nothing
    assert gvl_cache.load(dest)[2] == "fresh"
    assert _stamp(dest) == before
    (contig,) = forced.metadata.contigs
    got = ref.fetch([contig], [offset - 50], [offset + 50]).data.tobytes()
    assert got == good[offset - 50 : offset + 50]


def test_a_forced_build_never_reuses(chr20: Path, tmp_path: Path) -> None:
    dest = tmp_path / "forced.gvlfa"
    built = gvlfa.ensure_cache(chr20, dest, force=True)
    assert (built.action, built.outcome) == ("built", Outcome.PUBLISHED)
    again = gvlfa.ensure_cache(chr20, dest, force=True)  # fresh and intact: still rebuilt
    assert (again.action, again.outcome) == ("rebuilt", Outcome.REPLACED)
    assert gvlfa.classify(dest, deep=True).state is State.FRESH
    _nothing_left(dest)


def test_a_corrupt_legacy_cache_is_never_adopted(chr20: Path, tmp_path: Path) -> None:
    """A legacy ``X.gvl`` is adopted only once its bytes equal the source's sequence: a
    same-size corruption, which its size and a checksum computed from it would both pass, is
    left alone and the cache is built from the source. A forced build never looks at it."""
    good = (
        gvlfa.ensure_cache(chr20, tmp_path / "scratch.gvlfa").dest / gvlfa.DATA_FILE
    ).read_bytes()
    legacy = gvlfa.legacy_path(chr20)
    legacy.write_bytes(good)
    _corrupt(legacy, len(good) * 3 // 4)
    bad = legacy.read_bytes()

    forced = gvlfa.ensure_cache(chr20, force=True)
    assert (forced.action, forced.outcome) == ("built", Outcome.PUBLISHED)
    assert (forced.dest / gvlfa.DATA_FILE).read_bytes() == good
    assert legacy.read_bytes() == bad  # not consumed

    shutil.rmtree(forced.dest)
    plain = gvlfa.ensure_cache(chr20)
    assert (plain.action, plain.outcome) == ("built", Outcome.PUBLISHED)
    assert (plain.dest / gvlfa.DATA_FILE).read_bytes() == good
    assert gvlfa.classify(plain.dest, deep=True).state is State.FRESH
    assert legacy.read_bytes() == bad  # left alone, as a legacy file of the wrong size is
    _nothing_left(plain.dest)


def test_force_does_not_overwrite_what_is_not_a_cache(chr20: Path, tmp_path: Path) -> None:
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="another destination"):
        gvlfa.ensure_cache(chr20, dest, force=True)
    assert (dest / "notes.txt").read_text() == "keep me"
    _nothing_left(dest)


# --- datasets ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    yield copy_inputs(tmp_path_factory.mktemp("chr20"))


CORRUPTIBLE = [
    "genotypes/offsets.npy",
    "genotypes/variant_idxs.npy",
    "regions.npy",
    "input_regions.arrow",
]


@pytest.mark.parametrize("rel", CORRUPTIBLE)
def test_a_forced_build_replaces_a_dataset_that_looks_fresh_but_is_corrupt(
    rel: str, inputs: dict[str, Path], tmp_path: Path
) -> None:
    request = DatasetRequest(variants=inputs["vcf"], regions=inputs["tiles"], dest=tmp_path / "ds")
    dest, params = request.destination(), request.params()
    outcome, _ = build_dataset(params, dest, owner=Owner.current("t"))
    assert outcome is Outcome.PUBLISHED
    good = _files(dest)
    pristine = shutil.copytree(dest, tmp_path / "pristine")

    _corrupt(dest / rel, len(good[rel]) // 2)
    assert (dest / rel).stat().st_size == len(good[rel])
    validate_dataset(dest)  # GenVarLoader's open-time checks pass it
    assert classify_dataset(dest).state is State.FRESH
    with pytest.raises(ArtifactInvalidError, match=rel.replace(".", r"\.")):
        validate_dataset(dest, deep=True)
    assert kinds.ensure(request, Owner.current("t")).action == "reused"  # today's shortcut

    outcome, _ = build_dataset(params, dest, owner=Owner.current("t"), replace=True)
    assert outcome is Outcome.REPLACED
    validate_dataset(dest, deep=True)
    assert _files(dest) == good
    _nothing_left(dest)

    ours = gvl.Dataset.open(dest, inputs["fasta"]).with_seqs("haplotypes")
    ref = gvl.Dataset.open(pristine, inputs["fasta"]).with_seqs("haplotypes")
    assert ours.n_regions == ref.n_regions == 200
    for r0 in range(0, ours.n_regions, 50):
        a, b = ours[r0 : r0 + 50, :], ref[r0 : r0 + 50, :]
        np.testing.assert_array_equal(np.asarray(a.lengths), np.asarray(b.lengths))
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
