"""The length walk (which calls past a region's end each haplotype keeps) on random windows,
against GenVarLoader's own per-haplotype walk (genoray's ``_length_walk_n_keep``, the kernel
``gvl.write`` runs) and against the farm's previous call-by-call formulation.

Random sites pack records closely (ties, deletions spanning later records, records inside
carried deletions) so the closed form's exceptions come up often."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from farm.artifacts.dataset import select
from farm.artifacts.dataset.select import (
    CarrierBuffer,
    ContigSites,
    RegionResult,
    calls_from_matrix,
    overlapping,
    select_region,
)

kernels = pytest.importorskip("genoray._svar._kernels")


# The farm's previous formulation (one walk over every call), kept until the new one has
# been compared with it on random windows.
def _rows_of(ptr: NDArray[np.int64], first: int) -> NDArray[np.int64]:
    """The row of every call of a window whose first row is ``first``."""
    return np.repeat(np.arange(first, first + len(ptr) - 1, dtype=np.int64), np.diff(ptr))


def _previous_select(
    sites: ContigSites,
    buf: CarrierBuffer,
    q_start: int,
    q_end: int,
    *,
    policy: str,
    extend: bool,
    n_haps: int,
) -> RegionResult:
    """Variants each haplotype keeps for one region, and the region's stored end."""
    rng = overlapping(sites, q_start, q_end)
    if rng.size == 0:
        return RegionResult(np.zeros(0, np.int32), np.zeros(n_haps, np.int64), q_end)
    lo, last = int(rng[0]), int(rng[-1])
    if extend:
        window_end = select._vcf_window_end if policy == "vcf" else select._pgen_window_end
        hi = window_end(sites, buf, rng, q_start, q_end, n_haps)
    else:
        hi = last + 1
    ptr, haps = buf.get(lo, hi)
    rows = _rows_of(ptr, lo)
    if len(rng) != last + 1 - lo:  # a non-overlapping SNV inside a spanning deletion
        in_range = np.ones(hi - lo, np.bool_)
        in_range[: last + 1 - lo] = False
        in_range[rng - lo] = True
        keep = in_range[rows - lo]
        rows, haps = rows[keep], haps[keep]
    # calls come row by row; a stable sort by haplotype makes them haplotype-major, each
    # haplotype's in row order (a radix sort for 16-bit keys), as the dataset stores them
    key = haps.astype(np.int16) if n_haps <= np.iinfo(np.int16).max else haps
    order = np.argsort(key, kind="stable")
    rows, haps = rows[order], haps[order]
    if extend:
        keep = _previous_walk(sites, rows, haps, q_start, q_end, n_haps)
        rows, haps = rows[keep], haps[keep]
    idxs = (rows + sites.base).astype(np.int32)
    lengths = np.bincount(haps, minlength=n_haps).astype(np.int64)
    end = q_end
    if rows.size:
        end = max(q_end, int(sites.overlap_ends[int(rows.max())]))
    return RegionResult(idxs, lengths, end)


def _previous_walk(
    sites: ContigSites,
    rows: NDArray[np.int64],
    haps: NDArray[np.int32],
    q_start: int,
    q_end: int,
    n_haps: int,
) -> NDArray[np.bool_]:
    """Per haplotype, the prefix of carried calls that reaches the region's length; calls
    come grouped by haplotype, in row order within each.

    Calls starting before the region's end are always kept; past the end, a haplotype stops
    at the first call where the length written so far (reference gaps plus ALT bases)
    reaches the region's length: before that call if the gap alone reaches it, else after.
    """
    vs = sites.starts[rows]
    past = vs >= q_end
    if not past.any():
        return np.ones(len(rows), np.bool_)
    # Without a carried deletion a haplotype is never short, so it stops at its first call
    # past the end; only haplotypes carrying a deletion and a call past the end need the
    # length walk.
    ilens = sites.ilens[rows]
    keep = ~past
    needy = np.zeros(n_haps, np.bool_)
    needy[haps[ilens < 0]] = True
    has_past = np.zeros(n_haps, np.bool_)
    has_past[haps[past]] = True
    needy &= has_past
    sel = needy[haps]
    if not sel.any():
        return keep
    if np.count_nonzero(sel) < len(sel) // 2:
        keep[sel] = _previous_walk_calls(vs[sel], ilens[sel], haps[sel], q_start, q_end)
        return keep
    # most calls need it: walk them all (each haplotype's walk is its own) and keep the
    # others' answer, rather than gather and scatter the needy ones
    return np.where(sel, _previous_walk_calls(vs, ilens, haps, q_start, q_end), keep)


def _previous_walk_calls(
    vs: NDArray[np.int64],
    il: NDArray[np.int64],
    haps: NDArray[np.int32],
    q_start: int,
    q_end: int,
) -> NDArray[np.bool_]:
    """The length walk over calls grouped by haplotype (row order within each): running
    maxima and sums restart at each haplotype's first call. Every call's added length is
    needed, but the stop test only at the calls past the end."""
    n = len(vs)
    q_len = q_end - q_start
    first = np.empty(n, np.bool_)
    first[0] = True
    np.not_equal(haps[1:], haps[:-1], out=first[1:])
    heads = np.flatnonzero(first)
    seg = np.cumsum(first)
    seg -= 1
    inq = vs >= q_start
    past = vs >= q_end
    # furthest end so far, per haplotype: one running maximum over values lifted per segment
    lift = seg * select._SEGMENT
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
    segs, i = np.unique(seg[hit], return_index=True)
    firsts = hit[i]
    gap = vs[firsts] - last_end[firsts]
    excl = (before[stop][i] + gap) >= q_len
    limit = np.full(len(heads), n, np.int64)
    limit[segs] = firsts + np.where(excl, 0, 1)
    return np.arange(n) < limit[seg]


def _sites(rng: np.random.Generator, n: int, base: int) -> ContigSites:
    starts = np.cumsum(rng.integers(0, 7, n)).astype(np.int64) + 3
    kind = rng.random(n)
    ilens = np.where(
        kind < 0.5, 0, np.where(kind < 0.7, rng.integers(1, 5, n), -rng.integers(1, 15, n))
    ).astype(np.int64)
    ref_lens = 1 - np.minimum(ilens, 0)
    return ContigSites(base, starts, ilens, ref_lens)


def _buffer(carriers: np.ndarray) -> CarrierBuffer:
    cols = np.arange(carriers.shape[1], dtype=np.int32)
    return CarrierBuffer(
        len(carriers),
        lambda a, b: calls_from_matrix(carriers[a:b], cols),
        lambda a, b: None,
    )


def _expected(
    sites: ContigSites, carriers: np.ndarray, q_start: int, q_end: int, policy: str
) -> tuple[list[np.ndarray], int]:
    """Per haplotype, the global indices GenVarLoader's walk keeps over the same window."""
    n_haps = carriers.shape[1]
    rng = overlapping(sites, q_start, q_end)
    if rng.size == 0:
        return [np.zeros(0, np.int64)] * n_haps, q_end
    last = int(rng[-1])
    end_of = select._vcf_window_end if policy == "vcf" else select._pgen_window_end
    hi = end_of(sites, _buffer(carriers), rng, q_start, q_end, n_haps)
    rows = np.concatenate([rng, np.arange(last + 1, hi)])
    v_starts = sites.starts.astype(np.int32)
    ilens = sites.ilens.astype(np.int32)
    out = []
    for h in range(n_haps):
        carried = rows[carriers[rows, h]].astype(np.int32)
        n = kernels._length_walk_n_keep(
            carried, v_starts, ilens, 0, len(carried), np.int32(q_start), np.int32(q_end)
        )
        out.append(carried[:n].astype(np.int64) + sites.base)
    kept = np.concatenate(out)
    end = q_end
    if kept.size:
        end = max(q_end, int(sites.overlap_ends[int(kept.max()) - sites.base]))
    return out, end


@settings(max_examples=400, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 80),
    n_haps=st.integers(1, 12),
    density=st.floats(0.05, 0.9),
    width=st.integers(1, 80),
    policy=st.sampled_from(["vcf", "pgen"]),
)
def test_the_walk_equals_genvarloaders(
    seed: int, n: int, n_haps: int, density: float, width: int, policy: str
) -> None:
    rng = np.random.default_rng(seed)
    sites = _sites(rng, n, base=int(rng.integers(0, 1000)))
    carriers = rng.random((n, n_haps)) < density
    span = int(sites.starts[-1]) + 20
    for q_start in rng.integers(0, span, 4).tolist():
        q_end = q_start + width
        got = select_region(
            sites, _buffer(carriers), q_start, q_end, policy=policy, extend=True, n_haps=n_haps
        )
        want, end = _expected(sites, carriers, q_start, q_end, policy)
        assert got.lengths.tolist() == [len(w) for w in want]
        assert got.idxs.tolist() == np.concatenate(want).tolist()
        assert got.end == end
        prev = _previous_select(
            sites, _buffer(carriers), q_start, q_end, policy=policy, extend=True, n_haps=n_haps
        )
        assert prev.idxs.tolist() == got.idxs.tolist()
        assert prev.lengths.tolist() == got.lengths.tolist()
        assert prev.end == got.end
