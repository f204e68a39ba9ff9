"""PLINK 2 input: sites from the .pvar text, samples from the .psam, genotypes via pgenlib.

pgenlib reads a contiguous range of variants straight into an int32 array, so a window is
one call; allele codes (-9 missing) are compared with 1 exactly as genoray does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pgenlib
from numpy.typing import NDArray

from farm.artifacts.dataset.select import CarrierBuffer, ContigSites, Policy
from farm.artifacts.dataset.sites import SiteTable
from farm.errors import InputError

PLOIDY = 2


def siblings(pgen: Path) -> tuple[Path, Path]:
    return pgen.with_suffix(".pvar"), pgen.with_suffix(".psam")


def read_psam(psam: Path) -> list[str]:
    """Sample IDs (IID) in file order."""
    with open(psam) as f:
        lines = [ln.rstrip("\n\r") for ln in f if ln.strip()]
    if not lines:
        raise InputError(f"{psam} is empty; it must list the samples of the .pgen.")
    if lines[0].startswith("#"):
        cols = lines[0].lstrip("#").split()
        if "IID" not in cols:
            raise InputError(f"{psam} has no IID column; write it with plink2 --make-pgen.")
        iid = cols.index("IID")
        rows = lines[1:]
    else:  # header-less: PLINK 1 .fam layout, FID IID ...
        iid, rows = 1, lines
    return [r.split()[iid] for r in rows]


class PgenFile:
    policy: Policy = "pgen"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pvar, self.psam = siblings(path)
        self.samples = read_psam(self.psam)

    def read_sites(self, table: SiteTable) -> None:
        cols: list[str] | None = None
        with open(self.pvar) as f:
            for line in f:
                if line.startswith("##"):
                    continue
                if cols is None:
                    if not line.startswith("#CHROM"):
                        raise InputError(
                            f"{self.pvar} has no #CHROM header line; write it with plink2 "
                            f"(a PLINK 1 .bim is not supported)."
                        )
                    cols = line[1:].rstrip("\n\r").split("\t")
                    ci, pi = cols.index("CHROM"), cols.index("POS")
                    ri, ai = cols.index("REF"), cols.index("ALT")
                    continue
                fields = line.rstrip("\n\r").split("\t")
                table.add(fields[ci], int(fields[pi]), fields[ri], fields[ai])
        if cols is None:
            raise InputError(f"{self.pvar} has no header or records; regenerate it with plink2.")

    def buffer(self, contig: str, sites: ContigSites, samples: list[str]) -> CarrierBuffer:
        index = {s: i for i, s in enumerate(self.samples)}
        idx = np.sort(np.asarray([index[s] for s in samples], np.uint32))
        pos_in_subset = {int(v): k for k, v in enumerate(idx)}
        perm = np.asarray([pos_in_subset[index[s]] for s in samples], np.intp)
        subset = None if len(idx) == len(self.samples) else idx
        try:
            if subset is None:
                reader = pgenlib.PgenReader(bytes(self.path), len(self.samples))
            else:
                reader = pgenlib.PgenReader(
                    bytes(self.path), len(self.samples), sample_subset=subset
                )
        except RuntimeError as e:
            raise InputError(
                f"Cannot open {self.path} as a PGEN file ({e}); regenerate it with plink2."
            ) from e
        n_s = len(samples)

        def read(a: int, b: int) -> NDArray[np.bool_]:
            out = np.empty((b - a, n_s * PLOIDY), np.int32)
            try:
                reader.read_alleles_range(sites.base + a, sites.base + b, out)
            except RuntimeError as e:
                raise InputError(
                    f"Cannot read genotypes from {self.path} ({e}); it is truncated or "
                    f"corrupt: regenerate it with plink2."
                ) from e
            carr = (out == 1).reshape(b - a, n_s, PLOIDY)
            if sites.spanning is not None:
                carr[sites.spanning[a:b]] = False
            return carr[:, perm].reshape(b - a, n_s * PLOIDY)

        def skip(a: int, b: int) -> None:
            return None

        return CarrierBuffer(sites.n, n_s * PLOIDY, read, skip)
