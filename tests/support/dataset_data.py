"""Real chr20 inputs for the dataset tests, copied into a temp dir, plus gvl.write references."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pysam

if TYPE_CHECKING:
    from farm.kinds import DatasetRequest

DATA = Path(__file__).resolve().parents[2] / "data" / "grch37_chr20"
VCF = "1kgp_203samples_unphased.chr20_1000001-2000000.vcf.gz"
PGEN = "1kgp_203samples.chr20_1000001-2000000.pgen"
FASTA = "GRCh37_chr20_0-2Mb_Nmasked_first1Mb.fa.gz"
SIRPB2 = "SIRPB2_refseq.chr20.bed"
SIRPB2_STRAND_COLUMN = 7  # 1-based; this BED carries extra columns before its strand


def copy_inputs(root: Path) -> dict[str, Path]:
    """Copy every chr20 input into ``root`` and add a tiled BED and a sample-sorted VCF."""
    root.mkdir(parents=True, exist_ok=True)
    for p in DATA.iterdir():
        if p.is_file():
            shutil.copy2(p, root / p.name)
    for p in (DATA / "plink2").iterdir():
        shutil.copy2(p, root / p.name)
    tiles = root / "tiles.bed"
    with open(tiles, "w") as f:  # 200 x 1 kb tiles over the real sequence, alternating strand
        for i in range(200):
            s = 1_000_000 + i * 5_000
            f.write(f"20\t{s}\t{s + 1000}\tt{i}\t0\t{'+-'[i % 2]}\n")
    return {
        "vcf": root / VCF,
        "pgen": root / PGEN,
        "fasta": root / FASTA,
        "sirpb2": root / SIRPB2,
        "tiles": tiles,
        "vcf_sorted": sample_sorted_vcf(root / VCF, root / "sample_sorted.vcf"),
    }


def sirpb2_request(inputs: Path, dest: Path, **fields: Any) -> DatasetRequest:
    """A dataset request of the SIRPB2 regions over the VCF copied into ``inputs``."""
    from farm.kinds import DatasetRequest

    return DatasetRequest(
        variants=inputs / VCF,
        regions=inputs / SIRPB2,
        dest=dest,
        strand_column=SIRPB2_STRAND_COLUMN,
        **fields,
    )


def sample_sorted_vcf(src: Path, dst: Path) -> Path:
    """The same VCF with its sample columns in sorted order, bgzipped and indexed.

    genoray 6.0.2 (under genvarloader 0.43.1) forgets to reorder the genotypes of the records
    it reads past a region's end when the file's sample order is not sorted, so gvl.write
    assigns those calls to the wrong samples. On a sample-sorted file it is correct, so that is
    the reference the farm's output is compared with.
    """
    with gzip.open(src, "rt") as f, open(dst, "w") as out:
        order: list[int] = []
        for line in f:
            if line.startswith("##"):
                out.write(line)
                continue
            fields = line.rstrip("\n").split("\t")
            if line.startswith("#"):
                names = fields[9:]
                order = sorted(range(len(names)), key=lambda i: names[i])
            out.write("\t".join(fields[:9] + [fields[9 + i] for i in order]) + "\n")
    return Path(pysam.tabix_index(str(dst), preset="vcf", force=True))


def gvl_reference(variants: Path, bed: Path, strand_column: int, out: Path, **kw: object) -> Path:
    """Build the dataset with genvarloader's own gvl.write from the same inputs."""
    import genvarloader as gvl
    import polars as pl

    rows = [ln.rstrip("\n").split("\t") for ln in bed.read_text().splitlines() if ln]
    df = pl.DataFrame(
        {
            "chrom": [r[0] for r in rows],
            "chromStart": [int(r[1]) for r in rows],
            "chromEnd": [int(r[2]) for r in rows],
            "name": [r[3] for r in rows],
            "strand": [r[strand_column - 1] for r in rows],
        }
    )
    gvl.write(out, df, variants, **kw)
    return out


def raw(ds: Path, rel: str, dtype: type) -> np.ndarray:
    return np.fromfile(ds / rel, dtype)
