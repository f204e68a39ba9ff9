"""A 1000 Genomes-size synthetic cohort for the lab-scale dataset benchmark.

2,504 samples (phase 3's count), phased diploid, one contig ("22") at chr22's density (one
record every 35 bp on average). Allele counts follow P(k) ~ k^-1.2 over the 5,008 haplotypes:
about 63 % of records have AF < 0.5 % and a haplotype carries the ALT of about 5 % of the
records, close to what phase 3 shows on chr22. 88 % of records are SNVs, the rest deletions
and insertions of 1-10 bp, so haplotypes shorten and regions extend as in real data.

Written as a bgzipped, tabix-indexed VCF (BGZF blocks compressed on threads) and as
PGEN/PVAR/PSAM through pgenlib, from the same genotypes; plus BED region sets.
"""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pgenlib
import pysam
from isal import isal_zlib

N_SAMPLES = 2_504
SPACING = 35  # bp per record on average: chr22 holds about 1.07 M records over 37 Mb
FIRST = 16_000_000
CONTIG = "22"
_CHUNK = 4_096  # records generated at once
_BLOCK = 65_280  # bytes of text per BGZF block, as bgzip
_BASES = np.frombuffer(b"ACGT", np.uint8)


def _bgzf_block(data: bytes) -> bytes:
    deflated = isal_zlib.compress(data, 1, wbits=-15)
    header = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00"
    size = len(header) + 2 + len(deflated) + 8 - 1
    return (
        header
        + struct.pack("<H", size)
        + deflated
        + struct.pack("<II", zlib.crc32(data), len(data))
    )


_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


class _BgzfWriter:
    def __init__(self, path: Path, pool: ThreadPoolExecutor) -> None:
        self._f = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._pool = pool
        self._buf = bytearray()

    def write(self, text: bytes) -> None:
        self._buf += text
        if len(self._buf) >= 64 * _BLOCK:
            n = len(self._buf) // _BLOCK * _BLOCK
            self._emit(bytes(self._buf[:n]))
            del self._buf[:n]

    def _emit(self, data: bytes) -> None:
        parts = [data[i : i + _BLOCK] for i in range(0, len(data), _BLOCK)]
        for block in self._pool.map(_bgzf_block, parts):
            self._f.write(block)

    def close(self) -> None:
        if self._buf:
            self._emit(bytes(self._buf))
        self._f.write(_EOF)
        self._f.close()


def _records(n: int, seed: int):
    """Yield (positions, refs, alts, haplotype matrix (k, 2 * N_SAMPLES) of int8) chunks."""
    rng = np.random.default_rng(seed)
    span = n * SPACING
    pos = np.unique(rng.integers(FIRST, FIRST + span, int(n * 1.02)))
    pos = np.sort(rng.choice(pos, n, replace=False)) if len(pos) > n else pos
    # allele counts k ~ k^-1.2 over 1..2N-1
    ks = np.arange(1, 2 * N_SAMPLES)
    w = ks**-1.2
    counts = rng.choice(ks, len(pos), p=w / w.sum())
    kind = rng.random(len(pos))
    ilen = rng.integers(1, 11, len(pos))
    for a in range(0, len(pos), _CHUNK):
        b = min(a + _CHUNK, len(pos))
        p = (counts[a:b] / (2 * N_SAMPLES) * 65536).astype(np.uint32)
        draws = rng.integers(0, 65536, (b - a, 2 * N_SAMPLES), np.uint16)
        haps = (draws < p[:, None]).astype(np.int8)
        refs, alts = [], []
        for i in range(a, b):
            base = _BASES[rng.integers(0, 4, 11)].tobytes().decode()
            if kind[i] < 0.88:
                refs.append(base[0])
                alts.append("ACGT"[("ACGT".index(base[0]) + 1) % 4])
            elif kind[i] < 0.94:  # deletion of ilen bases
                refs.append(base[: ilen[i] + 1])
                alts.append(base[0])
            else:  # insertion
                refs.append(base[0])
                alts.append(base[: ilen[i] + 1])
        yield pos[a:b], refs, alts, haps


def write_cohort(out: Path, n_variants: int, seed: int = 0) -> dict[str, Path]:
    """Write ``cohort.vcf.gz`` (+ .tbi) and ``cohort.pgen/.pvar/.psam`` under ``out``."""
    samples = [f"S{i:05d}" for i in range(N_SAMPLES)]
    vcf = out / "cohort.vcf.gz"
    pgen = out / "cohort.pgen"
    head = (
        "##fileformat=VCFv4.2\n"
        f"##contig=<ID={CONTIG},length=250000000>\n"
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(samples) + "\n"
    )
    (out / "cohort.psam").write_text("#IID\tSEX\n" + "".join(f"{s}\tNA\n" for s in samples))
    cells = np.empty((_CHUNK, N_SAMPLES, 4), np.uint8)
    cells[:, :, 1] = ord("|")
    cells[:, :, 3] = ord("\t")
    cells[:, -1, 3] = ord("\n")
    n_written = 0
    with ThreadPoolExecutor(2) as pool, open(out / "cohort.pvar", "w") as pvar:
        writer = _BgzfWriter(vcf, pool)
        writer.write(head.encode())
        pvar.write("#CHROM\tPOS\tID\tREF\tALT\n")
        pw = pgenlib.PgenWriter(
            bytes(pgen), N_SAMPLES, n_variants, False, hardcall_phase_present=True
        )
        for pos, refs, alts, haps in _records(n_variants, seed):
            k = len(pos)
            c = cells[:k]
            c[:, :, 0] = 48 + haps[:, 0::2]
            c[:, :, 2] = 48 + haps[:, 1::2]
            lines = bytearray()
            for i in range(k):
                lines += f"{CONTIG}\t{pos[i]}\t.\t{refs[i]}\t{alts[i]}\t.\tPASS\t.\tGT\t".encode()
                lines += c[i].tobytes()
            writer.write(bytes(lines))
            pvar.write("".join(f"{CONTIG}\t{pos[i]}\t.\t{refs[i]}\t{alts[i]}\n" for i in range(k)))
            pw.append_alleles_batch(np.ascontiguousarray(haps, np.int32), all_phased=True)
            n_written += k
        writer.close()
        pw.close()
    assert n_written == n_variants, (n_written, n_variants)
    pysam.tabix_index(str(vcf), preset="vcf", force=True)
    return {"vcf": vcf, "pgen": pgen}


def region_set(path: Path, n_variants: int, n: int, width: int, seed: int) -> Path:
    """``n`` regions of ``width`` bp at random places over the cohort's span, sorted."""
    rng = np.random.default_rng(seed)
    span = n_variants * SPACING
    starts = np.sort(rng.integers(FIRST, FIRST + max(span - width, 1), n))
    with open(path, "w") as f:
        f.writelines(f"{CONTIG}\t{s}\t{s + width}\n" for s in starts)
    return path
