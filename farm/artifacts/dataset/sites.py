"""The variant table: every record of the variant file, in file order, as ``variants.arrow``.

GenVarLoader resolves a stored variant index by row number in ``genotypes/variants.arrow``,
so the table holds every record of the file (not only those in regions) and the dataset
owns its copy: ``gvl.write`` hard-links a helper index beside the input instead, which ties
the dataset to a file the farm does not control. Columns follow what genvarloader 0.43.1
writes: ``POS`` (int32, 1-based), ``REF``, ``ALT`` (strings) and ``ILEN`` (list of int32,
``len(ALT) - len(REF)``); ``CHROM`` is a plain string where genvarloader writes a dictionary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from farm.artifacts.dataset.select import ContigSites
from farm.errors import InputError

_BATCH = 1 << 18


class SiteTable:
    """Collects records as they stream by and writes them to an Arrow IPC file in batches."""

    def __init__(self, source: Path, out: Path) -> None:
        self.source = source
        self._out = out
        self._writer: ipc.RecordBatchFileWriter | None = None
        self._contigs: list[str] = []
        self._contig_ids: dict[str, int] = {}
        self._chrom: list[int] = []
        self._pos: list[int] = []
        self._ref: list[str] = []
        self._alt: list[str] = []
        self._n = 0
        self._bounds: dict[str, tuple[int, int]] = {}
        self._cur: str | None = None
        self._cur_start = 0
        self._last_pos = 0
        self._starts: list[int] = []
        self._ref_lens: list[int] = []
        self._ilens: list[int] = []
        self._spanning: list[bool] = []
        self._per_contig: dict[str, ContigSites] = {}
        self._keep: set[str] = set()
        self._unsupported = 0
        self._example = ""

    def keep_positions_for(self, contigs: set[str]) -> None:
        """Hold positions in memory only for these contigs (the BED's), to bound memory."""
        self._keep = contigs

    def add(self, chrom: str, pos: int, ref: str, alt: str) -> None:
        if chrom != self._cur:
            self._close_contig()
            if chrom in self._bounds:
                raise InputError(
                    f"Variant file {self.source} is not sorted: contig {chrom} appears in "
                    f"two separate blocks; sort it (bcftools sort) and index it again."
                )
            self._cur, self._cur_start, self._last_pos = chrom, self._n, 0
            self._contig_ids.setdefault(chrom, len(self._contigs))
            if len(self._contigs) < len(self._contig_ids):
                self._contigs.append(chrom)
        if pos < self._last_pos:
            raise InputError(
                f"Variant file {self.source} is not sorted: {chrom}:{pos} comes after "
                f"{chrom}:{self._last_pos}; sort it (bcftools sort) and index it again."
            )
        self._last_pos = pos
        if "," in alt or alt.startswith("<") or "[" in alt or "]" in alt:
            self._unsupported += 1
            self._example = self._example or f"{chrom}:{pos} {ref}>{alt}"
        self._chrom.append(self._contig_ids[chrom])
        self._pos.append(pos)
        self._ref.append(ref)
        self._alt.append(alt)
        if chrom in self._keep:
            self._starts.append(pos - 1)
            self._ref_lens.append(len(ref))
            self._ilens.append(len(alt) - len(ref))
            self._spanning.append(alt == "*")
        self._n += 1
        if len(self._pos) >= _BATCH:
            self._flush()

    def _close_contig(self) -> None:
        if self._cur is None:
            return
        self._bounds[self._cur] = (self._cur_start, self._n)
        if self._cur in self._keep:
            self._per_contig[self._cur] = ContigSites(
                base=self._cur_start,
                starts=np.asarray(self._starts, np.int64),
                ilens=np.asarray(self._ilens, np.int64),
                ref_lens=np.asarray(self._ref_lens, np.int64),
                spanning=np.asarray(self._spanning, np.bool_),
            )
        self._starts, self._ref_lens, self._ilens, self._spanning = [], [], [], []

    def _flush(self) -> None:
        if not self._pos and self._writer is not None:
            return
        n = len(self._pos)
        ilen = pa.array(
            [len(a) - len(r) for r, a in zip(self._ref, self._alt, strict=True)], pa.int32()
        )
        batch = pa.RecordBatch.from_arrays(
            [
                # plain strings: an IPC file cannot change a dictionary between batches,
                # and GenVarLoader's reader does not use CHROM
                pa.array(self._contigs, pa.string()).take(pa.array(self._chrom, pa.int32())),
                pa.array(self._pos, pa.int32()),
                pa.array(self._ref, pa.string()),
                pa.array(self._alt, pa.string()),
                pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), ilen),
            ],
            names=["CHROM", "POS", "REF", "ALT", "ILEN"],
        )
        if self._writer is None:
            self._writer = ipc.new_file(str(self._out), batch.schema)
        self._writer.write_batch(batch)
        self._chrom, self._pos, self._ref, self._alt = [], [], [], []

    def finish(self) -> dict[str, ContigSites]:
        """Write the last batch; return positions of the kept contigs."""
        self._close_contig()
        self._flush()
        assert self._writer is not None
        self._writer.close()
        if self._unsupported:
            raise InputError(
                f"Variant file {self.source} has {self._unsupported} records GenVarLoader "
                f"cannot use (multi-allelic, symbolic or breakend, e.g. {self._example}); "
                f"split and normalise it first (bcftools norm -m-any; plink2 --make-bpgen)."
            )
        return self._per_contig

    @property
    def contigs(self) -> list[str]:
        return list(self._contigs)

    @property
    def n_variants(self) -> int:
        return self._n
