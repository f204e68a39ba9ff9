"""The variant table: every record of the variant file, in file order, as ``variants.arrow``.

GenVarLoader resolves a stored variant index by row number in ``genotypes/variants.arrow``,
so the table holds every record of the file (not only those in regions) and the dataset
owns its copy: ``gvl.write`` hard-links a helper index beside the input instead, which ties
the dataset to a file the farm does not control. Columns follow what genvarloader 0.43.1
writes: ``POS`` (int32, 1-based), ``REF``, ``ALT`` (string views) and ``ILEN`` (large list of
int32, ``len(ALT) - len(REF)``); ``CHROM`` is a string view where genvarloader writes a
dictionary. Like genvarloader's, the file's buffers are zstd-compressed.

Records arrive in batches of columns (a chunk of the VCF's text, a chunk of the .pvar), so
the checks and the arrays are numpy and Arrow passes, not Python work per record.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
from numpy.typing import NDArray

from farm.artifacts.dataset.select import ContigSites
from farm.errors import InputError

_BATCH = 1 << 18
SITES_STAGE = "variant sites"  # what a build reports while its variant table is read
# zstd-compressed buffers, as genvarloader's own index file: a quarter of the plain size for
# a cohort's table (positions and alleles repeat), which GenVarLoader reads as it is.
_COMPRESSED = ipc.IpcWriteOptions(compression="zstd")


def _views(values: pa.Array) -> pa.Array:
    """``values`` (strings) as string views, always with a data buffer. When every string is
    short enough to sit inline, the cast leaves none: pyarrow 24 then crashes writing the
    array compressed, and polars (GenVarLoader's reader) cannot read it. The buffer added is
    never referenced. A slice keeps its offset (without it, every batch after a table's
    first read the first batch's views: REF and ALT of a .pvar's later records came out
    wrong)."""
    arr = values.cast(pa.string_view())
    bufs = arr.buffers()
    if len(bufs) > 2 and bufs[2] is not None and bufs[2].size:
        return arr
    return pa.Array.from_buffers(
        pa.string_view(),
        len(arr),
        [bufs[0], bufs[1], pa.py_buffer(bytes(8))],
        arr.null_count,
        arr.offset,
    )


class SiteTable:
    """Collects records as they stream by and writes them to an Arrow IPC file in batches."""

    def __init__(self, source: Path, out: Path) -> None:
        self.source = source
        self._out = out
        self._writer: ipc.RecordBatchFileWriter | None = None
        self._pending: list[pa.RecordBatch] = []
        self._n_pending = 0
        self._contigs: list[str] = []
        self._n = 0
        self._bounds: dict[str, tuple[int, int]] = {}
        self._cur: str | None = None
        self._cur_start = 0
        self._last_pos = 0
        self._parts: list[tuple[NDArray[np.int64], ...]] = []
        self._per_contig: dict[str, ContigSites] = {}
        self._keep: set[str] = set()
        self._unsupported = 0
        self._example = ""

    def keep_positions_for(self, contigs: set[str]) -> None:
        """Hold positions in memory only for these contigs (the BED's), to bound memory."""
        self._keep = contigs

    def add_batch(
        self,
        chrom: list[str] | pa.Array,
        pos: NDArray[np.int64],
        refs: pa.Array | list[bytes],
        alts: pa.Array | list[bytes],
    ) -> None:
        """Records in file order: ``chrom`` per record, ``pos`` 1-based, REF and ALT (UTF-8
        strings, or their bytes)."""
        n = len(pos)
        if n == 0:
            return
        # contigs as Arrow strings, not a Python str per record: a million of those would
        # stay behind in the allocator's arenas, and a forked reader would carry them
        chroms = (
            chrom.cast(pa.string()) if isinstance(chrom, pa.Array) else pa.array(chrom, pa.string())
        )
        codes = chroms.dictionary_encode()
        names = codes.dictionary.to_pylist()
        code = codes.indices.to_numpy(zero_copy_only=False)
        try:
            ref, alt = (
                v if isinstance(v, pa.Array) else pa.array(v, pa.string()) for v in (refs, alts)
            )
        except pa.ArrowInvalid as e:
            raise InputError(
                f"Variant file {self.source} has a REF or ALT that is not text ({e}); it is "
                f"corrupt: copy or export it again."
            ) from e
        ref_len = pc.binary_length(ref).to_numpy(zero_copy_only=False).astype(np.int64)
        alt_len = pc.binary_length(alt).to_numpy(zero_copy_only=False).astype(np.int64)
        bad = pc.or_(
            pc.or_(pc.match_substring(alt, ","), pc.starts_with(alt, "<")),
            pc.or_(pc.match_substring(alt, "["), pc.match_substring(alt, "]")),
        )
        n_bad = pc.sum(pc.cast(bad, pa.int64())).as_py() or 0
        if n_bad:
            self._unsupported += n_bad
            if not self._example:
                i = int(np.argmax(bad.to_numpy(zero_copy_only=False)))
                self._example = f"{names[code[i]]}:{pos[i]} {ref[i].as_py()}>{alt[i].as_py()}"
        # one run per contig in this batch
        cuts = [0, *(np.flatnonzero(code[1:] != code[:-1]) + 1).tolist(), n]
        for a, b in itertools.pairwise(cuts):
            self._run(names[code[a]], self._n + a, pos[a:b], ref_len[a:b], alt_len[a:b], alt[a:b])
        ilen = pa.array((alt_len - ref_len).astype(np.int32))
        batch = pa.RecordBatch.from_arrays(
            [
                # string views, as genvarloader writes its strings: short strings sit inline
                # in the views and compress to a third of offsets plus bytes. Not a
                # dictionary: an IPC file cannot change one between batches (GenVarLoader's
                # reader does not use CHROM anyway).
                _views(chroms),
                pa.array(pos, pa.int32()),
                _views(ref),
                _views(alt),
                pa.LargeListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int64)), ilen),
            ],
            names=["CHROM", "POS", "REF", "ALT", "ILEN"],
        )
        self._pending.append(batch)
        self._n_pending += n
        self._n += n
        if self._n_pending >= _BATCH:
            self._flush()

    def _run(
        self,
        chrom: str,
        first: int,
        pos: NDArray[np.int64],
        ref_len: NDArray[np.int64],
        alt_len: NDArray[np.int64],
        alt: pa.Array,
    ) -> None:
        if chrom != self._cur:
            self._close_contig(first)
            if chrom in self._bounds:
                raise InputError(
                    f"Variant file {self.source} is not sorted: contig {chrom} appears in "
                    f"two separate blocks; sort it (bcftools sort) and index it again."
                )
            self._cur, self._cur_start, self._last_pos = chrom, first, 0
            self._contigs.append(chrom)
        prev = np.concatenate([[self._last_pos], pos[:-1]])
        if (down := np.flatnonzero(pos < prev)).size:
            i = int(down[0])
            raise InputError(
                f"Variant file {self.source} is not sorted: {chrom}:{pos[i]} comes after "
                f"{chrom}:{prev[i]}; sort it (bcftools sort) and index it again."
            )
        self._last_pos = int(pos[-1])
        if chrom in self._keep:
            spanning = pc.equal(alt, "*").to_numpy(zero_copy_only=False)
            self._parts.append((pos - 1, alt_len - ref_len, ref_len, spanning))

    def _close_contig(self, end: int) -> None:
        if self._cur is None:
            return
        self._bounds[self._cur] = (self._cur_start, end)
        if self._cur in self._keep:
            cols = [np.concatenate(c) for c in zip(*self._parts, strict=True)]
            self._per_contig[self._cur] = ContigSites(
                base=self._cur_start,
                starts=cols[0].astype(np.int64, copy=False),
                ilens=cols[1].astype(np.int64, copy=False),
                ref_lens=cols[2].astype(np.int64, copy=False),
                spanning=cols[3].astype(np.bool_, copy=False),
            )
        self._parts = []

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            schema = self._pending[0].schema
            self._writer = ipc.new_file(str(self._out), schema, options=_COMPRESSED)
        for batch in self._pending:
            self._writer.write_batch(batch)
        self._pending, self._n_pending = [], 0

    def finish(self) -> dict[str, ContigSites]:
        """Write the last batch; return positions of the kept contigs."""
        self._close_contig(self._n)
        self._flush()
        if self._writer is None:  # no records at all: an empty table, as the file is
            none = _views(pa.array([], pa.string()))
            empty = pa.RecordBatch.from_arrays(
                [none, pa.array([], pa.int32()), none, none,
                 pa.array([], pa.large_list(pa.int32()))],
                names=["CHROM", "POS", "REF", "ALT", "ILEN"],
            )  # fmt: skip
            self._writer = ipc.new_file(str(self._out), empty.schema, options=_COMPRESSED)
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
