"""VCF/BCF input through cyvcf2: one pass for sites, one forward pass per contig for genotypes.

cyvcf2 hands back a record's genotypes as one numpy array (htslib parses the text in C), so
decoding costs a few microseconds per record rather than a Python call per sample. Only
records inside some region's window are decoded; the rest are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cyvcf2
import numpy as np
from numpy.typing import NDArray

from farm.artifacts.dataset.select import CarrierBuffer, ContigSites, Policy
from farm.artifacts.dataset.sites import SiteTable
from farm.errors import InputError

PLOIDY = 2


def _open(path: Path, samples: list[str] | None = None) -> cyvcf2.VCF:
    try:
        if samples is None:
            return cyvcf2.VCF(str(path), lazy=True, threads=1)
        return cyvcf2.VCF(str(path), lazy=True, threads=1, samples=samples)
    except OSError as e:
        raise InputError(
            f"Cannot open {path} as VCF/BCF ({e}); pass a bgzipped, indexed VCF or a BCF."
        ) from e


class VcfFile:
    policy: Policy = "vcf"

    def __init__(self, path: Path) -> None:
        self.path = path
        vcf = _open(path)
        self.samples: list[str] = list(vcf.samples)
        vcf.close()

    def read_sites(self, table: SiteTable) -> None:
        vcf = _open(self.path, [])
        try:
            for rec in vcf:
                alts = rec.ALT
                table.add(rec.CHROM, rec.POS, rec.REF, ",".join(alts) if alts else ".")
        except (OSError, ValueError) as e:  # htslib: truncated or corrupt block
            raise InputError(
                f"Variant file {self.path} could not be read to the end ({e}); it is "
                f"truncated or corrupt: copy or export it again."
            ) from e
        finally:
            vcf.close()

    def buffer(self, contig: str, sites: ContigSites, samples: list[str]) -> CarrierBuffer:
        """Forward reader of carrier rows for one contig, columns in ``samples`` order."""
        chosen = set(samples)
        file_order = [s for s in self.samples if s in chosen]
        pos_in_file = {s: i for i, s in enumerate(file_order)}
        perm = np.asarray([pos_in_file[s] for s in samples], np.intp)
        subset = None if file_order == self.samples else file_order
        vcf = _open(self.path, subset)
        records: Iterator[cyvcf2.Variant] = iter(vcf(contig))
        n_s = len(samples)

        def read(a: int, b: int) -> NDArray[np.bool_]:
            out = np.empty((b - a, len(file_order), PLOIDY), np.bool_)
            for k in range(b - a):
                rec = _next(records, contig, a + k, sites)
                np.equal(self._alleles(rec, contig), 1, out=out[k])
            if sites.spanning is not None:
                out[sites.spanning[a:b]] = False
            return out[:, perm].reshape(b - a, n_s * PLOIDY)

        def skip(a: int, b: int) -> None:
            for k in range(b - a):
                _next(records, contig, a + k, sites)

        return CarrierBuffer(sites.n, n_s * PLOIDY, read, skip)

    def _alleles(self, rec: cyvcf2.Variant, contig: str) -> NDArray[np.int16]:
        """(samples, 2) allele codes. A haploid call is its allele and nothing on the second
        copy (as GenVarLoader reads it); a missing allele (-1) or none (-2) carries nothing."""
        try:
            gt = rec.genotype.array()
        except Exception as e:  # cyvcf2 raises a bare Exception for a record without GT
            raise InputError(
                f"Variant file {self.path} has a record without genotypes (no GT) at "
                f"{contig}:{rec.POS}; drop that record or give it a GT field."
            ) from e
        if gt.shape[1] == PLOIDY:  # every call haploid: the second column is the phase flag
            haploid = np.full_like(gt, -2)
            haploid[:, 0] = gt[:, 0]
            return haploid
        if gt.shape[1] > PLOIDY + 1:
            raise InputError(
                f"Variant file {self.path} has a call of ploidy {gt.shape[1] - 1} at "
                f"{contig}:{rec.POS}; GenVarLoader datasets hold haploid and diploid calls only."
            )
        return gt[:, :PLOIDY]


def _next(records: Iterator[cyvcf2.Variant], contig: str, j: int, sites: ContigSites):
    try:
        rec = next(records)
    except StopIteration:
        rec = None
    if rec is None or sites.starts[j] != rec.POS - 1:
        raise InputError(
            f"The index of the variant file disagrees with its records on contig {contig} "
            f"(record {j}); index it again (tabix -p vcf / bcftools index)."
        )
    return rec
