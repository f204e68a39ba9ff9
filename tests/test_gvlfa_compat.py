"""The real GenVarLoader 0.43.1 is the judge: farm caches open in it unchanged, and back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import genvarloader as gvl
import numpy as np
import pytest
from genvarloader import _fasta_cache as gvl_cache
from pydantic_extra_types.semantic_version import SemanticVersion

import farm
from farm.artifacts import gvlfa
from farm.artifacts.base import State
from farm.publish import ASIDE_MARK, STAGING_MARK

GENOMES = ["lambda", "lambda.bgz", "yeast", "yeast.bgz", "chr20", "chr20.bgz", "tricky"]


@pytest.fixture(params=GENOMES)
def genome(
    request: pytest.FixtureRequest, real_genomes: dict[str, Path], tricky_fasta: Path
) -> Path:
    return tricky_fasta if request.param == "tricky" else real_genomes[request.param]


def _stamp(dest: Path) -> dict[str, tuple[int, int]]:
    """What a rebuild would change: each file's inode and mtime."""
    return {
        name: ((dest / name).stat().st_ino, (dest / name).stat().st_mtime_ns)
        for name in (gvlfa.METADATA_FILE, gvlfa.DATA_FILE)
    }


def _regions(contigs: dict[str, int]) -> tuple[list[str], list[int], list[int]]:
    names, starts, ends = [], [], []
    for name, length in contigs.items():
        for start, end in ((0, min(100, length)), (length // 2, length // 2 + 37), (0, length)):
            names.append(name)
            starts.append(start)
            ends.append(min(end, length))
    return names, starts, ends


def _fetch(ref: gvl.Reference, contigs: dict[str, int]) -> np.ndarray:
    return ref.fetch(*_regions(contigs)).data.copy()


def _gvl_sibling(fasta: Path, into: Path) -> Path:
    """A copy of ``fasta`` (and its indexes) in ``into``, for GenVarLoader to build beside."""
    into.mkdir()
    for p in fasta.parent.glob(fasta.name + "*"):
        if p.is_file() and not p.name.endswith(".gvlfa.lock"):
            shutil.copy2(p, into / p.name)
    return into / fasta.name


def test_farm_cache_is_fresh_and_identical_in_genvarloader(genome: Path, tmp_path: Path) -> None:
    result = gvlfa.ensure_cache(genome)
    dest = result.dest
    assert (result.action, dest) == ("built", gvlfa.default_dest(genome))
    assert sorted(p.name for p in dest.iterdir()) == [gvlfa.METADATA_FILE, gvlfa.DATA_FILE]
    before = _stamp(dest)

    # GenVarLoader opens it from the FASTA and from the cache path, and rebuilds nothing.
    ref_from_fasta = gvl.Reference.from_path(genome)
    ref_from_cache = gvl.Reference.from_path(dest)
    assert _stamp(dest) == before
    meta = json.loads((dest / gvlfa.METADATA_FILE).read_text())
    assert gvl_cache.load(dest)[2] == "fresh"
    SemanticVersion.parse(meta["genvarloader_version"])
    assert meta["farm_version"] == farm.__version__
    fields = ["format_version", "genvarloader_version", "contigs", "source", "fingerprint"]
    assert list(meta)[:5] == fields

    # GenVarLoader's own build of the same FASTA, beside a copy: same bytes, same contigs.
    theirs = gvl.Reference.from_path(_gvl_sibling(genome, tmp_path / "gvl_built"))
    their_dest = gvlfa.default_dest(tmp_path / "gvl_built" / genome.name)
    assert (dest / gvlfa.DATA_FILE).read_bytes() == (their_dest / gvlfa.DATA_FILE).read_bytes()
    their_meta = json.loads((their_dest / gvlfa.METADATA_FILE).read_text())
    assert list(meta["contigs"].items()) == list(their_meta["contigs"].items())
    assert meta["fingerprint"] == their_meta["fingerprint"]
    expected = _fetch(theirs, result.metadata.contigs)
    assert np.array_equal(_fetch(ref_from_fasta, result.metadata.contigs), expected)
    assert np.array_equal(_fetch(ref_from_cache, result.metadata.contigs), expected)

    # And the farm takes GenVarLoader's cache as fresh: classify, deep too, and ensure reuse it.
    their_stamp = _stamp(their_dest)
    assert gvlfa.classify(their_dest).state is State.FRESH
    assert gvlfa.classify(their_dest, deep=True).state is State.FRESH
    assert gvlfa.ensure_cache(tmp_path / "gvl_built" / genome.name).action == "reused"
    assert _stamp(their_dest) == their_stamp
    marks = (STAGING_MARK, ASIDE_MARK)
    assert not [p for p in genome.parent.iterdir() if any(m in p.name for m in marks)]


def test_plain_gzip_fasta_builds_the_same_cache_as_plain(
    real_genomes: dict[str, Path], tmp_path: Path
) -> None:
    import gzip

    plain = real_genomes["yeast"]
    gz = tmp_path / "yeast.fa.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))  # one plain gzip member, not bgzip
    from_gz = gvlfa.ensure_cache(gz)
    from_plain = gvlfa.ensure_cache(plain)
    assert from_gz.metadata.contigs == from_plain.metadata.contigs
    assert (from_gz.dest / gvlfa.DATA_FILE).read_bytes() == (
        from_plain.dest / gvlfa.DATA_FILE
    ).read_bytes()
    # GenVarLoader cannot index plain gzip itself, but opens the farm's cache of it.
    ref = gvl.Reference.from_path(from_gz.dest)
    assert ref.contigs == list(from_plain.metadata.contigs)
