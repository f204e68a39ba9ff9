"""Which variants each haplotype of a region carries: GenVarLoader's selection, on sparse calls.

For every region GenVarLoader keeps, per haplotype, every ALT call (genotype allele == 1;
missing calls and unphased genotypes are taken allele by allele as written) of the variants
that overlap the region, and with ``extend_to_length`` also the calls just past its end that a
haplotype shortened by deletions needs to reach the region's length. How far past the end it
looks (the "fetch window") differs between its VCF and PGEN readers, and a haplotype that
would need more than the window holds keeps only what the window has; both windows are
reproduced here so a farm-built dataset carries the same variants as ``gvl.write``'s.

The calls of a window are held sparse, as its ALT calls only (per record, the haplotypes that
carry it): most variants of a cohort are rare, so a 100 kb window of 2,000 records x 5,008
haplotypes holds a few hundred thousand calls rather than ten million cells. They are sorted
into haplotype-major order once (the order the dataset stores); the length walk then visits
only the calls past the region's end, the deletions, and the few haplotypes that carry a call
inside one of their own deletions (see :func:`_walk`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Policy = Literal["vcf", "pgen"]
_CHECK_EVERY = 20  # the VCF reader tests "long enough?" only every 20th record past the end
_PGEN_FIRST_EXTENSION = 20
_READ_AHEAD = 256
_SEGMENT = np.int64(1) << np.int64(36)  # above any position: separates haplotypes in one scan

# A window's calls: ``ptr`` (rows + 1) into ``haps``, the haplotypes carrying each row's ALT.
Calls = tuple[NDArray[np.int64], NDArray[np.int32]]


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

    # Computed once per contig (not per region: at 10k regions that was most of the time).
    @cached_property
    def overlap_ends(self) -> NDArray[np.int64]:
        """Exclusive end GenVarLoader uses for overlaps and region ends (POS - min(ILEN, 0))."""
        return self.starts + 1 - np.minimum(self.ilens, 0)

    @cached_property
    def record_ends(self) -> NDArray[np.int64]:
        """Exclusive end by REF length (htslib's rlen; genoray's PGEN ``v_ends``)."""
        return self.starts + self.ref_lens

    @cached_property
    def max_span(self) -> int:
        return int((self.overlap_ends - self.starts).max()) if self.n else 1

    @cached_property
    def max_ref_len(self) -> int:
        return int(self.ref_lens.max()) if self.n else 1

    def prepare(self) -> None:
        """Compute the per-contig arrays now (before a fork: then the processes share them)."""
        _ = self.overlap_ends, self.record_ends, self.max_span, self.max_ref_len


class CarrierBuffer:
    """A sliding window of decoded calls over one contig, read strictly forwards.

    ``read(a, b)`` returns rows ``[a, b)`` as :data:`Calls` and is only ever called with ``a``
    equal to the end of the previous call; ``skip(a, b)`` passes rows without decoding them.
    Because regions come sorted, a window never starts before the previous one, so each
    record is decoded at most once and memory holds one window.
    """

    def __init__(
        self,
        n: int,
        read: Callable[[int, int], Calls],
        skip: Callable[[int, int], None],
    ) -> None:
        self.n = n
        self._read = read
        self._skip = skip
        self._lo = 0
        self._ptr = np.zeros(1, np.int64)  # absolute into _haps, rows [_lo, _hi)
        self._haps = np.zeros(0, np.int32)

    @property
    def _hi(self) -> int:
        return self._lo + len(self._ptr) - 1

    def get(self, lo: int, hi: int) -> Calls:
        if lo < self._lo:
            raise AssertionError("carrier windows must move forwards")
        if lo >= self._hi:
            self._skip(self._hi, lo)
            self._ptr, self._haps, self._lo = np.zeros(1, np.int64), self._haps[:0], lo
        if hi > self._hi:
            # a region's first read takes what it asks for (a 1 kb region's window is about
            # 50 records, and reading ahead 256 on each was most of a small build's decoding);
            # a window that grows (its end being searched for) reads ahead
            fresh = self._hi == self._lo
            stop = min(self.n, hi if fresh else max(hi, self._hi + _READ_AHEAD))
            # a wide window is decoded _READ_AHEAD rows at a time: a decoder's dense
            # scratch (rows x haplotypes) stays a few MB however wide the region
            pieces = [
                self._read(a, min(a + _READ_AHEAD, stop))
                for a in range(self._hi, stop, _READ_AHEAD)
            ]
            ptr = np.concatenate(
                [np.zeros(1, np.int64)]
                + [p[1:] + off for (p, _), off in zip(pieces, _starts(pieces), strict=True)]
            )
            haps = np.concatenate([h for _, h in pieces])
            # drop the rows before ``lo`` while appending
            cut = int(self._ptr[lo - self._lo])
            kept = self._haps[cut:]
            self._ptr = np.concatenate([self._ptr[lo - self._lo :] - cut, ptr[1:] + len(kept)])
            self._haps = np.concatenate([kept, haps])
            self._lo = lo
        a, b = lo - self._lo, hi - self._lo
        ptr = self._ptr[a : b + 1]
        return ptr - ptr[0], self._haps[int(ptr[0]) : int(ptr[-1])]


def _starts(pieces: list[Calls]) -> list[int]:
    """Where each piece's calls start once the pieces are joined."""
    out, at = [], 0
    for _, h in pieces:
        out.append(at)
        at += len(h)
    return out


def calls_from_matrix(carriers: NDArray[np.bool_], hap_of_col: NDArray[np.int32]) -> Calls:
    """:data:`Calls` of a dense ``(rows, columns)`` carrier matrix; ``hap_of_col`` maps each
    column to the dataset's haplotype (-1: a sample the dataset leaves out)."""
    flat = np.flatnonzero(carriers)
    rows, cols = np.divmod(flat, carriers.shape[1])
    haps = hap_of_col[cols]
    if (haps < 0).any():
        keep = haps >= 0
        rows, haps = rows[keep], haps[keep]
    ptr = np.zeros(len(carriers) + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=len(carriers)), out=ptr[1:])
    return ptr, haps.astype(np.int32, copy=False)


@dataclass(frozen=True)
class RegionResult:
    idxs: NDArray[np.int32]  # global variant indices, haplotype-major
    lengths: NDArray[np.int64]  # (haplotypes,)
    end: int  # region end GenVarLoader stores: at least the query end


def overlapping(sites: ContigSites, q_start: int, q_end: int) -> NDArray[np.intp]:
    """Local indices of variants overlapping [q_start, q_end) (start clipped at 0)."""
    q_start = max(q_start, 0)
    hi = int(np.searchsorted(sites.starts, q_end, "left"))
    lo = int(np.searchsorted(sites.starts, q_start - sites.max_span, "left"))
    return lo + np.flatnonzero(sites.overlap_ends[lo:hi] > q_start)


def select_region(
    sites: ContigSites,
    buf: CarrierBuffer,
    q_start: int,
    q_end: int,
    *,
    policy: Policy,
    extend: bool,
    n_haps: int,
) -> RegionResult:
    """Variants each haplotype keeps for one region, and the region's stored end."""
    rng = overlapping(sites, q_start, q_end)
    if rng.size == 0:
        return RegionResult(np.zeros(0, np.int32), np.zeros(n_haps, np.int64), q_end)
    lo, last = int(rng[0]), int(rng[-1])
    if extend:
        window_end = _vcf_window_end if policy == "vcf" else _pgen_window_end
        hi = window_end(sites, buf, rng, q_start, q_end, n_haps)
    else:
        hi = last + 1
    ptr, haps = buf.get(lo, hi)
    per_row = np.diff(ptr)
    if len(rng) != last + 1 - lo:  # a non-overlapping SNV inside a spanning deletion
        in_range = np.ones(hi - lo, np.bool_)
        in_range[: last + 1 - lo] = False
        in_range[rng - lo] = True
        haps = haps[np.repeat(in_range, per_row)]
        per_row = np.where(in_range, per_row, 0)
        ptr = np.concatenate([[0], np.cumsum(per_row)])
    # calls come row by row; a stable sort by haplotype makes them haplotype-major, each
    # haplotype's in row order (a radix sort for 16-bit keys), as the dataset stores them
    key = haps.astype(np.int16) if n_haps <= np.iinfo(np.int16).max else haps
    order = np.argsort(key, kind="stable")
    idxs = np.repeat(np.arange(lo + sites.base, hi + sites.base, dtype=np.int32), per_row)
    idxs = idxs[order]
    del order, key
    lengths = np.bincount(haps, minlength=n_haps).astype(np.int64)
    if extend:
        drop = _walk(sites, lo, ptr, haps, idxs, lengths, q_start, q_end)
        if drop is not None:
            keep = np.ones(len(idxs), np.bool_)
            keep[drop] = False
            lengths -= np.bincount(_haps_of(drop, lengths), minlength=n_haps)
            idxs = idxs[keep]
    end = q_end
    if idxs.size:
        end = max(q_end, int(sites.overlap_ends[int(idxs.max()) - sites.base]))
    return RegionResult(idxs, lengths, end)


def _haps_of(pos: NDArray[np.int64], lengths: NDArray[np.int64]) -> NDArray[np.int64]:
    """The haplotype of each position ``pos`` of a haplotype-major array of ``lengths``."""
    return np.searchsorted(np.cumsum(lengths), pos, "right")


def _walk(
    sites: ContigSites,
    lo: int,
    ptr: NDArray[np.int64],
    haps: NDArray[np.int32],
    idxs: NDArray[np.int32],
    lengths: NDArray[np.int64],
    q_start: int,
    q_end: int,
) -> NDArray[np.int64] | None:
    """Positions in ``idxs`` (haplotype-major, each haplotype's calls in row order) of the
    calls the length walk drops, or None when it drops none.

    GenVarLoader's walk, per haplotype: every call before the region's end is kept; past
    the end, a haplotype stops at the first call where the length written so far
    (reference gaps plus ALT bases) reaches the region's length: before that call if the
    gap alone reaches it, else after. Only calls past the end are tested, so the walk
    needs each haplotype's length and furthest end at its last call before the end, and
    those have a closed form: the sum of a call's gap and ALT bases telescopes to
    (furthest end - end before the region's calls) + the calls' ILENs, unless a call ends
    before an earlier call's end (it lies in a deletion the haplotype carries). That can
    only happen within a carried deletion's span, so the haplotypes with such a pair walk
    call by call (:func:`_walk_calls`); the others walk only their calls past the end.
    ``ptr``/``haps``: the window's calls row by row, rows from ``lo``.
    """
    n_rows = len(ptr) - 1
    p0 = min(max(int(np.searchsorted(sites.starts, q_end, "left")) - lo, 0), n_rows)
    n_before = int(ptr[p0])
    if n_before == len(haps):
        return None
    n_haps = len(lengths)
    before_counts = np.bincount(haps[:n_before], minlength=n_haps)
    past_counts = lengths - before_counts
    starts = sites.starts[lo : lo + n_rows]
    il = sites.ilens[lo : lo + n_rows]
    inq = starts >= q_start
    ends = starts - np.minimum(il, 0) + inq  # the end each call takes the haplotype to
    offs = np.zeros(n_haps, np.int64)
    np.cumsum(lengths[:-1], out=offs[1:])

    # furthest end before the first call past the end: the last such call's, or a deletion's
    furthest = np.full(n_haps, q_start, np.int64)
    has = before_counts > 0
    last_rows = idxs[(offs + before_counts - 1)[has]].astype(np.int64) - (sites.base + lo)
    furthest[has] = np.maximum(ends[last_rows], q_start)
    wide = np.flatnonzero((il[:p0] < 0) | ~inq[:p0])  # deletions, and calls before the start
    counts = ptr[wide + 1] - ptr[wide]
    np.maximum.at(furthest, haps[_runs(ptr[wide], counts)], np.repeat(ends[wide], counts))
    # the end before the region's calls: calls before its start (deletions over it)
    first_in = int(np.searchsorted(starts, q_start, "left"))
    lead = np.full(n_haps, q_start, np.int64)
    pre = np.flatnonzero(~inq[:first_in])
    counts = ptr[pre + 1] - ptr[pre]
    np.maximum.at(lead, haps[_runs(ptr[pre], counts)], np.repeat(ends[pre], counts))
    weight = np.where(inq[:p0], il[:p0], 0)
    written = furthest - lead + _weighted_count(ptr[: p0 + 1], haps, weight, n_haps)

    exact = _in_deletions(sites, lo, ptr, haps, p0, n_haps) & (past_counts > 0)
    q_len = q_end - q_start
    drops = []
    # the haplotypes with a call inside a deletion they carry: the whole walk
    if exact.any():
        hs = np.flatnonzero(exact)
        pos = _runs(offs[hs], lengths[hs])
        rows = idxs[pos].astype(np.int64) - sites.base
        seg = np.repeat(np.arange(len(hs)), lengths[hs])
        kept = _walk_calls(sites.starts[rows], sites.ilens[rows], seg, q_start, q_end)
        drops.append(pos[~kept])
        past_counts = np.where(exact, 0, past_counts)
    # the others: their calls past the end, from the length and end written before them
    hs = np.flatnonzero(past_counts)
    if hs.size:
        pos = _runs((offs + before_counts)[hs], past_counts[hs])
        rows = idxs[pos].astype(np.int64) - sites.base
        seg = np.repeat(np.arange(len(hs)), past_counts[hs])
        vs, ils = sites.starts[rows], sites.ilens[rows]
        kept = _walk_past(vs, ils, seg, written[hs], furthest[hs], q_len)
        drops.append(pos[~kept])
    drop = np.concatenate(drops) if drops else np.zeros(0, np.int64)
    return drop if drop.size else None


def _runs(starts: NDArray[np.int64], counts: NDArray[np.int64]) -> NDArray[np.int64]:
    """``starts[k], starts[k] + 1, ..., starts[k] + counts[k] - 1`` for every k, joined."""
    total = int(counts.sum())
    return np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)


def _in_deletions(
    sites: ContigSites,
    lo: int,
    ptr: NDArray[np.int64],
    haps: NDArray[np.int32],
    p0: int,
    n_haps: int,
) -> NDArray[np.bool_]:
    """Haplotypes that carry, before the region's end, a call starting inside the span of
    a deletion they carried on an earlier row (a superset of those whose length has no
    closed form: such a call can end before the deletion does)."""
    out = np.zeros(n_haps, np.bool_)
    il = sites.ilens[lo : lo + p0]
    dels = np.flatnonzero(il < 0)
    if not dels.size:
        return out
    starts = sites.starts
    reach = np.searchsorted(starts, starts[lo + dels] - il[dels], "left") - lo
    np.minimum(reach, p0, out=reach)
    shadow = reach > dels + 1
    mark = np.zeros(n_haps, np.bool_)
    for j, r in zip(dels[shadow].tolist(), reach[shadow].tolist(), strict=True):
        inside = haps[ptr[j + 1] : ptr[r]]
        if not inside.size:
            continue
        mark[inside] = True
        carriers = haps[ptr[j] : ptr[j + 1]]
        out[carriers[mark[carriers]]] = True
        mark[inside] = False
    return out


def _walk_past(
    vs: NDArray[np.int64],
    il: NDArray[np.int64],
    seg: NDArray[np.int64],
    written: NDArray[np.int64],
    furthest: NDArray[np.int64],
    q_len: int,
) -> NDArray[np.bool_]:
    """The walk over calls past the region's end, grouped by haplotype (``seg``, 0, 1, ...,
    row order within each), each haplotype starting from the length ``written`` and the
    furthest end its calls before the end reached. Which calls are kept."""
    n = len(vs)
    first = np.empty(n, np.bool_)
    first[0] = True
    np.not_equal(seg[1:], seg[:-1], out=first[1:])
    heads = np.flatnonzero(first)
    lift = seg * _SEGMENT
    run = vs - np.minimum(il, 0) + 1 + lift
    np.maximum.accumulate(run, out=run)
    run -= lift
    last_end = np.empty(n, np.int64)
    last_end[1:] = run[:-1]
    last_end[heads] = 0
    np.maximum(last_end, furthest[seg], out=last_end)
    gap = vs - last_end
    inc = gap + np.maximum(il, 0) + 1
    csum = np.cumsum(inc)
    before = csum - inc - (csum[heads] - inc[heads])[seg] + written[seg]
    stop_at = np.flatnonzero(before + inc >= q_len)
    if not stop_at.size:
        return np.ones(n, np.bool_)
    segs, firsts, _ = _first_per_segment(seg, stop_at)
    excl = before[firsts] + gap[firsts] >= q_len
    limit = np.full(len(heads), n, np.int64)
    limit[segs] = firsts + np.where(excl, 0, 1)
    return np.arange(n) < limit[seg]


def _first_per_segment(
    seg: NDArray[np.int64], at: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.intp]]:
    """For ascending positions ``at`` (``seg`` never decreases along positions): the segments
    they fall in, the first of them in each, and where that one is in ``at``."""
    s = seg[at]
    i = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    return s[i], at[i], i


def _walk_calls(
    vs: NDArray[np.int64],
    il: NDArray[np.int64],
    seg: NDArray[np.int64],
    q_start: int,
    q_end: int,
) -> NDArray[np.bool_]:
    """The length walk over every call of some haplotypes, grouped by haplotype (``seg``,
    row order within each): running maxima and sums restart at each haplotype's first
    call. Every call's added length is needed, but the stop test only at the calls past
    the end. Which calls are kept."""
    n = len(vs)
    q_len = q_end - q_start
    first = np.empty(n, np.bool_)
    first[0] = True
    np.not_equal(seg[1:], seg[:-1], out=first[1:])
    heads = np.flatnonzero(first)
    inq = vs >= q_start
    past = vs >= q_end
    # furthest end so far, per haplotype: one running maximum over values lifted per segment
    lift = seg * _SEGMENT
    run = vs - np.minimum(il, 0)
    run += inq
    run += lift
    np.maximum.accumulate(run, out=run)
    run -= lift
    last_end = np.empty(n, np.int64)
    last_end[1:] = run[:-1]
    last_end[heads] = q_start
    np.maximum(last_end, q_start, out=last_end)
    # the length each call adds: its gap from the last end and its ALT bases (in the query)
    inc = vs - last_end
    inc += np.maximum(il, 0)
    inc += 1
    inc *= inq
    # only calls past the end can stop a haplotype: the sums up to each of them
    at = np.flatnonzero(past)
    if not at.size:
        return np.ones(n, np.bool_)
    csum = np.cumsum(inc)
    base = csum[heads] - inc[heads]
    s_at = seg[at]
    before = csum[at] - inc[at] - base[s_at]
    stop = before + inc[at] >= q_len
    if not stop.any():
        return np.ones(n, np.bool_)
    hit = at[stop]
    segs, firsts, i = _first_per_segment(seg, hit)
    gap = vs[firsts] - last_end[firsts]
    excl = (before[stop][i] + gap) >= q_len
    limit = np.full(len(heads), n, np.int64)
    limit[segs] = firsts + np.where(excl, 0, 1)
    return np.arange(n) < limit[seg]


def _vcf_window_end(
    sites: ContigSites,
    buf: CarrierBuffer,
    rng: NDArray[np.intp],
    q_start: int,
    q_end: int,
    n_haps: int,
) -> int:
    """Exclusive local end of the records genoray's VCF reader fetches for one region.

    It reads the overlapping records, then records starting at or after the end one by one,
    tracking each haplotype's length from indel records only, and stops at a record whose
    position in htslib's "from the end onwards" query is a multiple of 20 once every
    haplotype is long enough (records that span the end count in that position, unread).
    """
    lo, last = int(rng[0]), int(rng[-1])
    ptr, haps = buf.get(lo, last + 1)
    weight = np.zeros(last + 1 - lo, np.int64)
    weight[rng - lo] = sites.ilens[rng]
    delta = _weighted_count(ptr, haps, weight, n_haps)
    rec_ends = sites.record_ends
    last_end = int(rec_ends[last])
    j0 = int(np.searchsorted(sites.starts, q_end, "left"))
    # records that span the end: only those starting within the longest REF of it can
    j_lo = int(np.searchsorted(sites.starts, q_end - sites.max_ref_len, "right"))
    spanning = int(np.count_nonzero(rec_ends[j_lo:j0] > q_end))
    pos = j0
    block = 32
    while pos < sites.n:
        stop = min(sites.n, pos + block)
        block *= 2
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
        c = _dense(buf, lo, pos + rows, n_haps)
        contrib = (vs[rows] - prev_end[rows])[:, None] + il[rows][:, None] * c
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


def _dense(buf: CarrierBuffer, lo: int, rows: NDArray[np.intp], n_haps: int) -> NDArray[np.int64]:
    """A few rows of the window as a dense (rows, haplotypes) 0/1 matrix."""
    out = np.zeros((len(rows), n_haps), np.int64)
    if not len(rows):
        return out
    ptr, haps = buf.get(lo, int(rows[-1]) + 1)
    for k, r in enumerate(rows - lo):
        out[k, haps[ptr[r] : ptr[r + 1]]] = 1
    return out


def _weighted_count(
    ptr: NDArray[np.int64], haps: NDArray[np.int32], weight: NDArray[np.int64], n_haps: int
) -> NDArray[np.int64]:
    """Per haplotype, the sum of its calls' row weights (rows of ``ptr``); rows weighing
    nothing (SNVs, rows left out) are not visited."""
    rows = np.flatnonzero(weight)
    if not rows.size:
        return np.zeros(n_haps, np.int64)
    counts = ptr[rows + 1] - ptr[rows]
    # the calls of the weighted rows: each row's run of ``haps``
    idx = np.repeat(ptr[rows] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    w = np.repeat(weight[rows], counts)
    return np.rint(np.bincount(haps[idx], weights=w, minlength=n_haps)).astype(np.int64)


def _pgen_window_end(
    sites: ContigSites,
    buf: CarrierBuffer,
    rng: NDArray[np.intp],
    q_start: int,
    q_end: int,
    n_haps: int,
) -> int:
    """Exclusive local end of the records genoray's PGEN reader fetches for one region.

    It appends 20 records after the last overlapping one, then blocks of 40, 80, ... while a
    haplotype is still short by its estimate, and never reads the contig's last record when
    a block would start on it (its ``start == end`` guard); reproduced as written.
    """
    last_idx = sites.n - 1
    lo, last = int(rng[0]), int(rng[-1])
    ext_s = min(last + 1, last_idx)
    ext_e = min(ext_s + _PGEN_FIRST_EXTENSION - 1, last_idx)
    if ext_s == ext_e:
        return last + 1
    length = q_end - q_start
    rec_ends = sites.record_ends
    last_end = int(rec_ends[ext_e])
    ptr, haps = buf.get(lo, ext_e + 1)
    weight = sites.ilens[lo : ext_e + 1].copy()
    weight[: last + 1 - lo] = 0
    weight[rng - lo] = sites.ilens[rng]
    hap_lens = max(length, last_end - q_start) + _weighted_count(ptr, haps, weight, n_haps)
    size = 2 * _PGEN_FIRST_EXTENSION
    while (hap_lens < length).any():
        ext_s = min(ext_e + 1, last_idx)
        new_e = min(ext_s + size - 1, last_idx)
        size *= 2
        if ext_s == new_e:
            break
        ext_e = new_e
        ptr, haps = buf.get(lo, ext_e + 1)  # never a later start: rows before it would go
        dist = int(sites.starts[ext_e]) - last_end
        weight = sites.ilens[ext_s : ext_e + 1]
        hap_lens = hap_lens + dist + _weighted_count(ptr[ext_s - lo :], haps, weight, n_haps)
        last_end = int(rec_ends[ext_e])
    return ext_e + 1
