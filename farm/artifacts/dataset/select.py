"""Which variants each haplotype of a region carries: GenVarLoader's selection, vectorised.

For every region GenVarLoader keeps, per haplotype, every ALT call (genotype allele == 1;
missing calls and unphased genotypes are taken allele by allele as written) of the variants
that overlap the region, and with ``extend_to_length`` also the calls just past its end that a
haplotype shortened by deletions needs to reach the region's length. How far past the end it
looks (the "fetch window") differs between its VCF and PGEN readers, and a haplotype that
would need more than the window holds keeps only what the window has; both windows are
reproduced here so a farm-built dataset carries the same variants as ``gvl.write``'s.

Everything works on a carrier matrix ``(variants, haplotypes)`` of booleans for one region's
window, so the cost is a few numpy passes per region instead of a Python loop per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Policy = Literal["vcf", "pgen"]
_CHECK_EVERY = 20  # the VCF reader tests "long enough?" only every 20th record past the end
_PGEN_FIRST_EXTENSION = 20
_READ_AHEAD = 64
_NEG = np.iinfo(np.int64).min // 4


@dataclass(frozen=True)
class ContigSites:
    """One contig's variants, in file order; ``base`` is the global index of the first."""

    base: int
    starts: NDArray[np.int64]  # 0-based POS - 1
    ilens: NDArray[np.int64]  # len(ALT) - len(REF)
    ref_lens: NDArray[np.int64]
    # ALT "*": the position lies in a deletion that another record of the haplotype carries.
    # No haplotype takes these records (see README, "Where the farm differs").
    spanning: NDArray[np.bool_] | None = None

    @property
    def n(self) -> int:
        return len(self.starts)

    @property
    def overlap_ends(self) -> NDArray[np.int64]:
        """Exclusive end GenVarLoader uses for overlaps and region ends (POS - min(ILEN, 0))."""
        return self.starts + 1 - np.minimum(self.ilens, 0)

    @property
    def record_ends(self) -> NDArray[np.int64]:
        """Exclusive end by REF length (htslib's rlen; genoray's PGEN ``v_ends``)."""
        return self.starts + self.ref_lens


class CarrierBuffer:
    """A sliding window of decoded carrier rows over one contig, read strictly forwards.

    ``read(a, b)`` must return rows ``[a, b)`` as ``(b - a, haplotypes)`` booleans and is only
    ever called with ``a`` equal to the end of the previous call; ``skip(a, b)`` passes rows
    without decoding them. Because regions come sorted, a window never starts before the
    previous one, so each record is decoded at most once and memory holds one window.
    """

    def __init__(
        self,
        n: int,
        n_haps: int,
        read: Callable[[int, int], NDArray[np.bool_]],
        skip: Callable[[int, int], None],
    ) -> None:
        self.n = n
        self._read = read
        self._skip = skip
        self._lo = 0
        self._data = np.zeros((0, n_haps), np.bool_)

    @property
    def _hi(self) -> int:
        return self._lo + len(self._data)

    def get(self, lo: int, hi: int) -> NDArray[np.bool_]:
        if lo < self._lo:
            raise AssertionError("carrier windows must move forwards")
        if lo >= self._hi:
            self._skip(self._hi, lo)
            self._data = self._data[:0]
            self._lo = lo
        elif lo > self._lo:
            self._data = self._data[lo - self._lo :]
            self._lo = lo
        if hi > self._hi:
            stop = min(self.n, max(hi, self._hi + _READ_AHEAD))
            new = self._read(self._hi, stop)
            self._data = np.concatenate([self._data, new]) if len(self._data) else new
        return self._data[lo - self._lo : hi - self._lo]


@dataclass(frozen=True)
class RegionResult:
    idxs: NDArray[np.int32]  # global variant indices, haplotype-major
    lengths: NDArray[np.int64]  # (haplotypes,)
    end: int  # region end GenVarLoader stores: at least the query end


def overlapping(sites: ContigSites, q_start: int, q_end: int, max_span: int) -> NDArray[np.intp]:
    """Local indices of variants overlapping [q_start, q_end) (start clipped at 0)."""
    q_start = max(q_start, 0)
    hi = int(np.searchsorted(sites.starts, q_end, "left"))
    lo = int(np.searchsorted(sites.starts, q_start - max_span, "left"))
    cand = np.arange(lo, hi)
    return cand[sites.overlap_ends[lo:hi] > q_start]


def select_region(
    sites: ContigSites,
    buf: CarrierBuffer,
    q_start: int,
    q_end: int,
    *,
    max_span: int,
    policy: Policy,
    extend: bool,
    n_haps: int,
) -> RegionResult:
    """Variants each haplotype keeps for one region, and the region's stored end."""
    rng = overlapping(sites, q_start, q_end, max_span)
    if rng.size == 0:
        return RegionResult(np.zeros(0, np.int32), np.zeros(n_haps, np.int64), q_end)
    lo = int(rng[0])
    in_range = np.zeros(int(rng[-1]) + 1 - lo, np.bool_)
    in_range[rng - lo] = True
    if extend:
        if policy == "vcf":
            hi = _vcf_window_end(sites, buf, rng, q_start, q_end)
        else:
            hi = _pgen_window_end(sites, buf, rng, q_start, q_end)
    else:
        hi = int(rng[-1]) + 1
    mask = np.ones(hi - lo, np.bool_)
    mask[: len(in_range)] = in_range  # a non-overlapping SNV inside a spanning deletion
    local = np.arange(lo, hi)[mask]
    carriers = buf.get(lo, hi)[mask]
    keep = _walk(sites, local, carriers, q_start, q_end) if extend else carriers
    h_idx, v_pos = np.nonzero(keep.T)
    idxs = (local[v_pos] + sites.base).astype(np.int32)
    lengths = np.bincount(h_idx, minlength=n_haps).astype(np.int64)
    end = q_end
    if idxs.size:
        end = max(q_end, int(sites.overlap_ends[int(local[v_pos.max()])]))
    return RegionResult(idxs, lengths, end)


def _walk(
    sites: ContigSites,
    local: NDArray[np.intp],
    carriers: NDArray[np.bool_],
    q_start: int,
    q_end: int,
) -> NDArray[np.bool_]:
    """Per haplotype, the prefix of carried calls that reaches the region's length.

    Calls starting before the region's end are always kept; past the end, a haplotype stops
    at the first call where the length written so far (reference gaps plus ALT bases)
    reaches the region's length: before that call if the gap alone reaches it, else after.
    """
    past = sites.starts[local] >= q_end
    if not past.any():
        return carriers
    # Without a carried deletion a haplotype is never short, so it stops at its first call
    # past the end; only haplotypes carrying a deletion need the length walk.
    ilens = sites.ilens[local]
    needs = carriers[ilens < 0].any(axis=0)
    keep = carriers & ~past[:, None]
    if needs.any():
        keep[:, needs] = _walk_cols(sites, local, carriers[:, needs], q_start, q_end)
    return keep


def _walk_cols(
    sites: ContigSites,
    local: NDArray[np.intp],
    carriers: NDArray[np.bool_],
    q_start: int,
    q_end: int,
) -> NDArray[np.bool_]:
    q_len = q_end - q_start
    vs = sites.starts[local][:, None]
    il = sites.ilens[local][:, None]
    inq = vs >= q_start
    past = (vs >= q_end)[:, 0]
    v_end = vs - np.minimum(il, 0) + inq
    running = np.maximum.accumulate(np.where(carriers, v_end, _NEG), axis=0)
    last_end = np.empty_like(running)
    last_end[0] = q_start
    np.maximum(running[:-1], q_start, out=last_end[1:])
    counted = carriers & inq
    gap = np.where(counted, vs - last_end, 0)
    inc = gap + np.where(counted, np.maximum(il, 0) + 1, 0)
    before = np.cumsum(inc, axis=0) - inc
    stop = carriers & past[:, None] & (before + inc >= q_len)
    has_stop = stop.any(axis=0)
    if not has_stop.any():
        return carriers
    first = np.argmax(stop, axis=0)
    cols = np.arange(carriers.shape[1])
    excl = (before + gap)[first, cols] >= q_len
    limit = np.where(has_stop, first + np.where(excl, 0, 1), len(local))
    rows = np.arange(len(local))[:, None]
    return carriers & (rows < limit[None, :])


def _vcf_window_end(
    sites: ContigSites, buf: CarrierBuffer, rng: NDArray[np.intp], q_start: int, q_end: int
) -> int:
    """Exclusive local end of the records genoray's VCF reader fetches for one region.

    It reads the overlapping records, then records starting at or after the end one by one,
    tracking each haplotype's length from indel records only, and stops at a record whose
    position in htslib's "from the end onwards" query is a multiple of 20 once every
    haplotype is long enough (records that span the end count in that position, unread).
    """
    lo = int(rng[0])
    rec_ends = sites.record_ends
    c_rng = buf.get(lo, int(rng[-1]) + 1)[rng - lo]
    delta = (c_rng * sites.ilens[rng][:, None]).sum(axis=0)
    last_end = int(rec_ends[int(rng[-1])])
    j0 = int(np.searchsorted(sites.starts, q_end, "left"))
    spanning = int(np.count_nonzero(rec_ends[:j0] > q_end))
    pos = j0
    block = 32
    while pos < sites.n:
        stop = min(sites.n, pos + block)
        block *= 2
        c = buf.get(lo, stop)[pos - lo :]
        vs = sites.starts[pos:stop]
        il = sites.ilens[pos:stop]
        indel = (sites.ref_lens[pos:stop] > 1) | (il != 0)
        # the end of the most recent indel record before each row (not the furthest end)
        latest = np.maximum.accumulate(np.where(indel, np.arange(stop - pos), -1))
        prev_end = np.empty(stop - pos, np.int64)
        prev_end[0] = last_end
        prev_end[1:] = np.where(latest[:-1] < 0, last_end, rec_ends[pos:stop][latest[:-1]])
        # lengths change only at indel rows: accumulate those, then spread "all long
        # enough?" to the rows after each
        rows = np.flatnonzero(indel)
        contrib = (vs[rows] - prev_end[rows])[:, None] + il[rows][:, None] * c[rows]
        running = delta[None, :] + np.cumsum(contrib, axis=0)
        all_ok = np.concatenate([[bool((delta >= 0).all())], (running >= 0).all(axis=1)])
        seen = np.searchsorted(rows, np.arange(stop - pos), "right")
        checked = ((spanning + np.arange(pos - j0, stop - j0)) % _CHECK_EVERY) == 0
        ok = checked & all_ok[seen]
        if ok.any():
            return pos + int(np.argmax(ok)) + 1
        if rows.size:
            delta = running[-1]
        if indel.any():
            last_end = int(rec_ends[pos:stop][indel][-1])
        pos = stop
    return sites.n


def _pgen_window_end(
    sites: ContigSites, buf: CarrierBuffer, rng: NDArray[np.intp], q_start: int, q_end: int
) -> int:
    """Exclusive local end of the records genoray's PGEN reader fetches for one region.

    It appends 20 records after the last overlapping one, then blocks of 40, 80, ... while a
    haplotype is still short by its estimate, and never reads the contig's last record when
    a block would start on it (its ``start == end`` guard); reproduced as written.
    """
    last_idx = sites.n - 1
    lo = int(rng[0])
    ext_s = min(int(rng[-1]) + 1, last_idx)
    ext_e = min(ext_s + _PGEN_FIRST_EXTENSION - 1, last_idx)
    if ext_s == ext_e:
        return int(rng[-1]) + 1
    length = q_end - q_start
    rec_ends = sites.record_ends
    last_end = int(rec_ends[ext_e])
    c = buf.get(lo, ext_e + 1)
    sel = np.concatenate([rng - lo, np.arange(ext_s - lo, ext_e + 1 - lo)])
    ilens = sites.ilens[sel + lo]
    hap_lens = max(length, last_end - q_start) + (c[sel] * ilens[:, None]).sum(axis=0)
    size = 2 * _PGEN_FIRST_EXTENSION
    while (hap_lens < length).any():
        ext_s = min(ext_e + 1, last_idx)
        new_e = min(ext_s + size - 1, last_idx)
        size *= 2
        if ext_s == new_e:
            break
        ext_e = new_e
        cb = buf.get(lo, ext_e + 1)[ext_s - lo :]
        dist = int(sites.starts[ext_e]) - last_end
        hap_lens = hap_lens + dist + (cb * sites.ilens[ext_s : ext_e + 1][:, None]).sum(axis=0)
        last_end = int(rec_ends[ext_e])
    return ext_e + 1
