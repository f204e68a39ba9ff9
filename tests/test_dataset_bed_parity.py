"""Every BED-like file gvl.write reads (BED3-12 and wider, narrowPeak, broadPeak, gzip and BGZF,
track lines, zero-length rows, contigs without variants, regions past a contig's end) gives a
farm dataset whose regions table, regions and haplotypes equal gvl.write's, from the very same
file."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.ipc as ipc
import pysam
import pytest

from farm.artifacts.dataset import DatasetParams, build_dataset
from farm.artifacts.dataset.regions import detect_strand_column
from farm.publish import Owner
from tests.support.dataset_data import copy_inputs

gvl = pytest.importorskip("genvarloader")

START = 1_000_000  # the chr20 genotypes cover 1,000,001-2,000,000


def _rows(n: int, step: int = 9_000) -> list[tuple[int, int]]:
    return [(START + 500 + i * step, START + 500 + i * step + 600 + 37 * i) for i in range(n)]


def bed12(d: Path) -> Path:
    path = d / "genes.bed"
    lines = [
        f"20\t{s}\t{e}\tg{i}\t{i * 10}\t{'+-'[i % 2]}\t{s + 10}\t{e - 10}\t255,0,{i}\t2\t"
        f"100,200,\t0,{e - s - 200},\textra{i}\t{i / 4}"
        for i, (s, e) in enumerate(_rows(12))
    ]
    path.write_text("\n".join(reversed(lines)) + "\n")  # unsorted: r_idx_map matters
    return path


def narrow_peak_gz(d: Path) -> Path:
    path = d / "peaks.narrowPeak.gz"
    lines = []
    for i, (s, e) in enumerate(_rows(10, step=7_000)):
        name = "." if i % 3 == 0 else f"peak{i}"
        p_value = "-1" if i % 4 == 0 else f"{i * 1.5}"
        lines.append(f"20\t{s}\t{e}\t{name}\t{i * 100}\t.\t{i + 0.25}\t{p_value}\t-1\t{i * 7}")
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def broad_peak(d: Path) -> Path:
    path = d / "domains.broadPeak"
    lines = ["browser position chr20:1000000-1100000", "track type=broadPeak name=x"]
    for i, (s, e) in enumerate(_rows(8, step=11_000)):
        lines.append(f"20\t{s}\t{e}\tdom{i}\t{i}\t{'+-'[i % 2]}\t{i * 2.5}\t{i}\t{i / 2}")
    path.write_text("\n".join(lines) + "\n")
    return path


def bgzf_bed_with_zero_length_rows(d: Path) -> Path:
    plain = d / "points.bed"
    rows = _rows(9, step=13_000)
    lines = [f"20\t{s}\t{s if i % 3 == 0 else e}\tp{i}" for i, (s, e) in enumerate(rows)]
    plain.write_text("\n".join(lines) + "\n")
    path = d / "points.bed.gz"
    pysam.tabix_compress(str(plain), str(path), force=True)
    return path


def bed_with_a_contig_without_variants(d: Path) -> Path:
    path = d / "two_contigs.bed"
    lines = [f"21\t{100 + i * 300}\t{250 + i * 300}\tr21_{i}\t0\t+" for i in range(4)]
    lines += [f"20\t{s}\t{e}\tr20_{i}\t0\t-" for i, (s, e) in enumerate(_rows(4))]
    path.write_text("\n".join(lines) + "\n")
    return path


def bed_past_the_contig_end(d: Path) -> Path:
    """Regions that run past contig 20's end (2,000,000 bp), or start beyond it."""
    path = d / "past_end.bed"
    lines = [f"20\t{s}\t{e}\tin{i}\t0\t+" for i, (s, e) in enumerate(_rows(3))]
    lines += ["20\t1999990\t2000010\tacross\t0\t-", "20\t2000500\t2000520\tbeyond\t0\t+"]
    path.write_text("\n".join(lines) + "\n")
    return path


BEDS: dict[str, Callable[[Path], Path]] = {
    "bed12 plus two extra columns": bed12,
    "narrowPeak.gz with '.' and -1": narrow_peak_gz,
    "broadPeak with browser and track lines": broad_peak,
    "bgzf bed with zero-length rows": bgzf_bed_with_zero_length_rows,
    "a contig without variants": bed_with_a_contig_without_variants,
    "regions past the contig's end": bed_past_the_contig_end,
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    d = tmp_path_factory.mktemp("chr20")
    found = copy_inputs(d)
    # A reference with contig 21 beside 20, for the regions on a contig the VCF lacks.
    fasta = d / "ref_20_21.fa"
    with pysam.FastaFile(str(found["fasta"])) as ref:
        seq20 = ref.fetch("20")
    rng = np.random.default_rng(21)
    seq21 = "".join(rng.choice(list("ACGT"), 5_000))
    fasta.write_text(f">20\n{seq20}\n>21\n{seq21}\n")
    pysam.faidx(str(fasta))
    found["fasta_20_21"] = fasta
    yield found


@pytest.fixture(scope="module", params=sorted(BEDS))
def pair(request: pytest.FixtureRequest, inputs, tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    out = tmp_path_factory.mktemp("bed")
    bed = BEDS[request.param](out)
    # The sample-sorted VCF: genvarloader 0.43.1 mislays look-ahead calls on unsorted ones.
    variants = inputs["vcf_sorted"]
    gvl.write(out / "gvl.ds", bed, variants)
    params = DatasetParams(variants=variants, regions=bed, strand_column=detect_strand_column(bed))
    build_dataset(params, out / "farm.ds", owner=Owner.current("test"))
    yield out / "farm.ds", out / "gvl.ds"


def _table(ds: Path):
    with ipc.open_file(ds / "input_regions.arrow") as f:
        return f.read_all().combine_chunks()


def test_input_regions_keep_every_column_as_gvl_write_reads_it(pair) -> None:
    farm_ds, gvl_ds = pair
    ours, theirs = _table(farm_ds), _table(gvl_ds)
    assert ours.schema.names == theirs.schema.names
    assert ours.schema.types == theirs.schema.types
    assert ours.to_pydict() == theirs.to_pydict()


def test_regions_equal_gvl_write(pair) -> None:
    farm_ds, gvl_ds = pair
    ours, theirs = np.load(farm_ds / "regions.npy"), np.load(gvl_ds / "regions.npy")
    # gvl.write stores an unknown strand ('.') as NaN in a float array; the farm as +1,
    # which is how GenVarLoader reads an unknown strand everywhere else.
    theirs = np.where(np.isnan(theirs), 1, theirs) if theirs.dtype.kind == "f" else theirs
    np.testing.assert_array_equal(ours, theirs.astype(np.int64))


def test_haplotypes_equal_gvl_write(pair, inputs) -> None:
    farm_ds, gvl_ds = pair
    a = gvl.Dataset.open(farm_ds, inputs["fasta_20_21"]).with_seqs("haplotypes")
    b = gvl.Dataset.open(gvl_ds, inputs["fasta_20_21"]).with_seqs("haplotypes")
    assert a.samples == b.samples and a.n_regions == b.n_regions
    ha, hb = a[:, :], b[:, :]
    np.testing.assert_array_equal(np.asarray(ha.lengths), np.asarray(hb.lengths))
    np.testing.assert_array_equal(np.asarray(ha.data), np.asarray(hb.data))
