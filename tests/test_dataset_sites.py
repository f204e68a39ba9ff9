"""The variant table holds every record's REF and ALT as given, whatever slices of Arrow
arrays they arrive in (a reader's batches are often slices of one table)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from farm.artifacts.dataset.sites import SiteTable


def test_sliced_batches_keep_their_alleles(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 1_000
    ref = pa.array(rng.choice(list("ACGT"), n).tolist())  # all short: views hold them inline
    alt = pa.array(rng.choice(["A", "C", "G", "T", "ACGTACGTACGTAC"], n).tolist())
    pos = np.arange(1, n + 1, dtype=np.int64) * 10
    chrom = pa.array(["chr1"] * n)
    table = SiteTable(tmp_path / "calls.pvar", tmp_path / "variants.arrow")
    for a in range(0, n, 300):
        b = min(n, a + 300)
        table.add_batch(chrom.slice(a, b - a), pos[a:b], ref.slice(a, b - a), alt.slice(a, b - a))
    table.finish()
    got = ipc.open_file(str(tmp_path / "variants.arrow")).read_all()
    assert got.column("REF").cast(pa.string()).to_pylist() == ref.to_pylist()
    assert got.column("ALT").cast(pa.string()).to_pylist() == alt.to_pylist()
    assert got.column("CHROM").cast(pa.string()).to_pylist() == chrom.to_pylist()
    assert got.column("POS").to_pylist() == pos.tolist()
