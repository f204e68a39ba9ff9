"""Shared fixtures. Append new fixtures; real data is always copied into tmp_path first."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator
from pathlib import Path

import pysam
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"

LAMBDA = "lambda_NC_001416.1.fa"
YEAST = "yeast_S288C_chrI_SGD2005.fa"
CHR20_BGZ = "GRCh37_chr20_0-2Mb_Nmasked_first1Mb.fa.gz"


@pytest.fixture
def real_genomes(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Every genome the project ships, plain and bgzipped, copied into ``tmp_path``.

    The missing forms are made here: a bgzipped yeast (``pysam.tabix_compress``) and a plain
    chr20 (decompressed), so each genome is tested in both encodings.
    """
    out = tmp_path / "genomes"
    out.mkdir()
    for src in (DATA / "genomes").iterdir():
        shutil.copy2(src, out / src.name)
    for src in (DATA / "grch37_chr20").glob(CHR20_BGZ + "*"):
        shutil.copy2(src, out / src.name)
    pysam.tabix_compress(str(out / YEAST), str(out / (YEAST + ".bgz")))
    chr20_plain = out / "GRCh37_chr20_0-2Mb.fa"
    with gzip.open(out / CHR20_BGZ, "rb") as f_in, open(chr20_plain, "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
    yield {
        "lambda": out / LAMBDA,
        "lambda.bgz": out / (LAMBDA + ".bgz"),
        "yeast": out / YEAST,
        "yeast.bgz": out / (YEAST + ".bgz"),
        "chr20": chr20_plain,
        "chr20.bgz": out / CHR20_BGZ,
    }


# Soft-masked lower case, N runs, every IUPAC code, CRLF line ends, a description after the
# name, a contig whose last line is short, a contig with no sequence, and a last line with no
# newline at all.
_TRICKY_CONTIGS = {
    "chr1": "ACGTacgtNNNNnnnnACGT" * 9 + "acg",
    "chr2 a description\twith a tab": "RYKMSWBDHVNrykmswbdhvn-ACGT" * 5,
    "chrM": "acgtn" * 31 + "ACG",
    "empty": "",  # htslib leaves it out of the index, so GenVarLoader never lists it
    "chrLast": "ACGTNacgtn" * 13,
}


def write_tricky_fasta(path: Path, *, width: int = 60, newline: bytes = b"\r\n") -> Path:
    """A multi-contig FASTA that exercises every byte rule of the format."""
    parts: list[bytes] = []
    for header, seq in _TRICKY_CONTIGS.items():
        parts.append(b">" + header.encode() + newline)
        raw = seq.encode()
        parts.extend(raw[i : i + width] + newline for i in range(0, len(raw), width))
    data = b"".join(parts)
    path.write_bytes(data[: -len(newline)])  # last line without a newline
    return path


@pytest.fixture
def tricky_fasta(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "tricky"
    d.mkdir()
    yield write_tricky_fasta(d / "tricky.fa")
