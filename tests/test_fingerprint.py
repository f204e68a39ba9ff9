"""The fingerprint is GenVarLoader's, byte for byte; the checksum sees what it cannot."""

from __future__ import annotations

from pathlib import Path

import pytest
from genvarloader import _fasta_cache as gvl_cache

from farm.fingerprint import FINGERPRINT_WINDOW, checksum, fingerprint


@pytest.mark.parametrize("key", ["lambda", "lambda.bgz", "yeast", "chr20", "chr20.bgz"])
def test_fingerprint_is_genvarloaders_record(real_genomes: dict[str, Path], key: str) -> None:
    path = real_genomes[key]
    ours = fingerprint(path)
    theirs = gvl_cache.fingerprint(path)
    assert ours.model_dump_json() == theirs.model_dump_json()
    if path.stat().st_size > FINGERPRINT_WINDOW:
        assert ours.n_bytes_hashed == FINGERPRINT_WINDOW  # only the first MiB is hashed


def test_checksum_catches_a_same_size_change_the_fingerprint_misses(
    real_genomes: dict[str, Path],
) -> None:
    path = real_genomes["chr20"]  # 2 MB plain: the change lands past the first MiB
    assert path.stat().st_size > FINGERPRINT_WINDOW * 3 // 2
    fp_before, sum_before = fingerprint(path), checksum(path)
    with open(path, "r+b") as f:
        f.seek(FINGERPRINT_WINDOW + FINGERPRINT_WINDOW // 2)
        old = f.read(1)
        f.seek(-1, 1)
        f.write(b"T" if old != b"T" else b"G")
    assert fingerprint(path).matches(fp_before)
    assert gvl_cache.fingerprint(path).digest == fp_before.digest  # GenVarLoader misses it too
    assert checksum(path) != sum_before
    assert checksum(path).startswith("sha256:")
