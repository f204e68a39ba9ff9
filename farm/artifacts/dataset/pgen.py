"""PLINK 2 input: sites from the .pvar text, samples from the .psam, genotypes via pgenlib.

The .pvar is parsed by Arrow's CSV reader (its own threads), not line by line in Python.
pgenlib reads a contiguous range of variants straight into an int32 array, so a window is
one call and only the regions' windows are read; allele codes (-9 missing) are compared with
1 exactly as genoray does, and only the ALT calls are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pgenlib
import pyarrow as pa
import pyarrow.csv as pacsv

from farm.artifacts.dataset.select import (
    Calls,
    CarrierBuffer,
    ContigSites,
    Policy,
    calls_from_matrix,
)
from farm.artifacts.dataset.sites import SITES_STAGE, SiteTable
from farm.errors import InputError
from farm.progress import NO_PROGRESS, Progress

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

    def read_sites(self, table: SiteTable, progress: Progress = NO_PROGRESS) -> None:
        """Every variant's site from the .pvar into ``table``, reported by variants."""
        header, cols = 0, None
        with open(self.pvar, "rb") as f:
            for line in f:
                if line.startswith(b"##"):
                    header += len(line)
                    continue
                if line.startswith(b"#CHROM"):
                    header += len(line)
                    cols = line[1:].decode().rstrip("\n\r").split("\t")
                break
        if cols is None:
            raise InputError(
                f"{self.pvar} has no #CHROM header line; write it with plink2 "
                f"(a PLINK 1 .bim is not supported)."
            )
        progress.start(self.n_variants(), "variants", stage=SITES_STAGE)
        with open(self.pvar, "rb") as f:
            f.seek(header)
            try:
                # streamed a block at a time: the whole .pvar as one table (and its
                # strings as Python objects) was most of a small build's memory
                reader = pacsv.open_csv(
                    f,
                    read_options=pacsv.ReadOptions(column_names=cols, block_size=1 << 22),
                    parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                    convert_options=pacsv.ConvertOptions(
                        include_columns=["CHROM", "POS", "REF", "ALT"],
                        column_types={
                            "CHROM": pa.string(),
                            "POS": pa.int64(),
                            "REF": pa.string(),
                            "ALT": pa.string(),
                        },
                    ),
                )
                for batch in reader:
                    chrom, pos, ref, alt = (batch.column(c) for c in ("CHROM", "POS", "REF", "ALT"))
                    table.add_batch(chrom, pos.to_numpy(zero_copy_only=False), ref, alt)
                    progress.advance(batch.num_rows)
            except (pa.ArrowInvalid, KeyError) as e:
                raise InputError(
                    f"{self.pvar} cannot be read as a .pvar ({e}); regenerate it with plink2."
                ) from e

    def n_variants(self) -> int:
        """The variant count the .pgen's header gives."""
        try:
            reader = pgenlib.PgenReader(bytes(self.path), len(self.samples))
            try:
                return int(reader.get_variant_ct())
            finally:
                reader.close()
        except RuntimeError as e:
            raise InputError(
                f"Cannot open {self.path} as a PGEN file ({e}); it is truncated or corrupt: "
                f"regenerate it with plink2."
            ) from e

    def before_fork(self) -> None:
        """Nothing is open between builds of the windows: a forked reader opens its own."""

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
        hap_of_col = np.empty(len(idx) * PLOIDY, np.int32)
        for d, col in enumerate(perm.tolist()):
            hap_of_col[col * PLOIDY : (col + 1) * PLOIDY] = [d * PLOIDY, d * PLOIDY + 1]

        def read(a: int, b: int) -> Calls:
            out = np.empty((b - a, len(idx) * PLOIDY), np.int32)
            try:
                reader.read_alleles_range(sites.base + a, sites.base + b, out)
            except RuntimeError as e:
                raise InputError(
                    f"Cannot read genotypes from {self.path} ({e}); it is truncated or "
                    f"corrupt: regenerate it with plink2."
                ) from e
            carr = out == 1
            if sites.spanning is not None:
                carr[sites.spanning[a:b]] = False
            return calls_from_matrix(carr, hap_of_col)

        def skip(a: int, b: int) -> None:
            return None

        return CarrierBuffer(sites.n, read, skip)
