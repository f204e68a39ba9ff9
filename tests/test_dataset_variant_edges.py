"""Calls gvl.write accepts beyond plain diploid SNVs: haploid and mixed-ploidy records, missing
and half-missing calls, spanning deletions (``*``), and records with no genotypes at all.
Small VCFs written here over a synthetic reference; gvl.write builds the reference dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pysam
import pytest

from farm.artifacts.dataset import DatasetParams, build_dataset, validate_dataset
from farm.errors import InputError
from farm.publish import Owner
from tests.support.dataset_data import raw

gvl = pytest.importorskip("genvarloader")

CONTIGS = ("chr1", "chrX")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.fa"
    rng = np.random.default_rng(7)
    path.write_text("".join(f">{c}\n{''.join(rng.choice(list('ACGT'), 2_000))}\n" for c in CONTIGS))
    pysam.faidx(str(path))
    return path


def _base(reference: Path, contig: str, pos: int, n: int = 1) -> str:
    with pysam.FastaFile(str(reference)) as fa:
        return fa.fetch(contig, pos - 1, pos - 1 + n)


def _vcf(d: Path, samples: list[str], records: list[tuple[str, int, str, str, list[str]]]) -> Path:
    lines = ["##fileformat=VCFv4.2"]
    lines += [f"##contig=<ID={c},length=2000>" for c in CONTIGS]
    lines.append('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">')
    lines.append('##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Depth">')
    lines.append(
        "\t".join(
            ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples]
        )
    )
    for contig, pos, ref, alt, calls in records:
        fmt = "GT" if calls and calls[0] != "DP" else "DP"
        values = calls[1:] if fmt == "DP" else calls
        lines.append("\t".join([contig, str(pos), ".", ref, alt, ".", "PASS", ".", fmt, *values]))
    plain = d / "calls.vcf"
    plain.write_text("\n".join(lines) + "\n")
    return Path(pysam.tabix_index(str(plain), preset="vcf", force=True))


def _bed(d: Path, rows: list[tuple[str, int, int]]) -> Path:
    path = d / "regions.bed"
    path.write_text("".join(f"{c}\t{s}\t{e}\n" for c, s, e in rows))
    return path


def _both(d: Path, vcf: Path, bed: Path) -> tuple[Path, Path]:
    gvl.write(d / "gvl.ds", bed, vcf)
    build_dataset(DatasetParams(variants=vcf, regions=bed), d / "farm.ds", owner=Owner.current("t"))
    return d / "farm.ds", d / "gvl.ds"


def _haplotypes(ds: Path, reference: Path) -> list[list[bytes]]:
    """[region][sample * 2 + ploid] -> the haplotype's bases."""
    opened = gvl.Dataset.open(ds, reference).with_seqs("haplotypes")
    out = []
    for r in range(opened.n_regions):
        row = []
        for s in range(len(opened.samples)):
            haps = opened[r, s]
            row += [np.asarray(haps[p]).tobytes() for p in range(2)]
        out.append(row)
    return out


def test_haploid_mixed_and_missing_calls_equal_gvl_write(tmp_path: Path, reference: Path) -> None:
    def snv(contig: str, pos: int, calls: list[str]) -> tuple[str, int, str, str, list[str]]:
        ref = _base(reference, contig, pos)
        return contig, pos, ref, {"A": "C", "C": "G", "G": "T", "T": "A"}[ref], calls

    records = [
        snv("chr1", 110, ["1/.", "./1", "0/1"]),  # half-missing, unphased
        snv("chr1", 130, ["./.", "1|1", ".|."]),
        snv("chrX", 210, ["0|1", "1|1", "1"]),  # females diploid, the male haploid
        snv("chrX", 240, ["1", "0", "1"]),  # every call haploid
        snv("chrX", 260, ["1|0", "0|0", "."]),
    ]
    vcf = _vcf(tmp_path, ["F1", "F2", "M1"], records)
    bed = _bed(tmp_path, [("chr1", 100, 150), ("chrX", 200, 280)])
    farm_ds, gvl_ds = _both(tmp_path, vcf, bed)
    for rel, dtype in (
        ("genotypes/offsets.npy", np.int64),
        ("genotypes/variant_idxs.npy", np.int32),
    ):
        np.testing.assert_array_equal(
            raw(farm_ds, rel, dtype), raw(gvl_ds, rel, dtype), err_msg=rel
        )
    np.testing.assert_array_equal(np.load(farm_ds / "regions.npy"), np.load(gvl_ds / "regions.npy"))
    assert _haplotypes(farm_ds, reference) == _haplotypes(gvl_ds, reference)


def test_a_spanning_deletion_allele_follows_the_variant_file(
    tmp_path: Path, reference: Path
) -> None:
    """``*`` says the position lies in a deletion the haplotype carries elsewhere. gvl.write puts
    the record on its carriers: harmless beside the deletion, but a ``*`` with no deletion
    upstream writes a literal '*' into the sequence. The farm applies no ``*`` record, so every
    haplotype is what the file's other records make it."""
    deleted = _base(reference, "chr1", 100, 4)
    spanned = _base(reference, "chr1", 102)
    records = [
        ("chr1", 100, deleted, deleted[0], ["1|0", "0|0"]),  # S1 deletes 101-103 on copy 0
        ("chr1", 102, spanned, "*", ["1|0", "0|1"]),  # S2's copy 1: '*' with no deletion
    ]
    vcf = _vcf(tmp_path, ["S1", "S2"], records)
    bed = _bed(tmp_path, [("chr1", 90, 120)])
    farm_ds, gvl_ds = _both(tmp_path, vcf, bed)
    ours, theirs = _haplotypes(farm_ds, reference)[0], _haplotypes(gvl_ds, reference)[0]

    assert 1 not in raw(farm_ds, "genotypes/variant_idxs.npy", np.int32)  # the '*' record
    assert ours[0] == theirs[0]  # S1's deletion: the same sequence either way
    reference_window = _base(reference, "chr1", 91, 30).encode()
    assert ours[3] == reference_window  # S2's copy 1: the reference, as its calls say
    assert b"*" in theirs[3]  # genvarloader 0.43.1's literal '*': fixed upstream, this fails


def test_a_record_without_genotypes_is_one_sentence(tmp_path: Path, reference: Path) -> None:
    ref = _base(reference, "chr1", 120)
    records = [("chr1", 120, ref, "A" if ref != "A" else "C", ["DP", "12", "9"])]
    vcf = _vcf(tmp_path, ["S1", "S2"], records)
    bed = _bed(tmp_path, [("chr1", 100, 150)])
    with pytest.raises(InputError) as info:
        build_dataset(
            DatasetParams(variants=vcf, regions=bed), tmp_path / "ds", owner=Owner.current("t")
        )
    assert "calls.vcf.gz" in str(info.value) and "chr1:120" in str(info.value)
    assert not (tmp_path / "ds").exists()


def test_regions_where_no_haplotype_carries_a_variant_open(tmp_path: Path, reference: Path) -> None:
    """gvl.write leaves variant_idxs.npy out here and then cannot open its own dataset."""
    ref = _base(reference, "chr1", 500)
    records = [("chr1", 500, ref, "A" if ref != "A" else "C", ["0|1", "1|1"])]
    vcf = _vcf(tmp_path, ["S1", "S2"], records)
    bed = _bed(tmp_path, [("chr1", 100, 150), ("chrX", 10, 60)])
    dest = tmp_path / "ds"
    build_dataset(DatasetParams(variants=vcf, regions=bed), dest, owner=Owner.current("t"))
    validate_dataset(dest, deep=True)
    haplotypes = _haplotypes(dest, reference)
    assert haplotypes[0][0] == _base(reference, "chr1", 101, 50).encode()
    assert haplotypes[1][3] == _base(reference, "chrX", 11, 50).encode()
