"""The length walk (which calls past a region's end each haplotype keeps) on random windows,
against GenVarLoader's own per-haplotype walk (genoray's ``_length_walk_n_keep``, the kernel
``gvl.write`` runs). The farm's previous formulation (one walk over every call) was compared
here too before it was removed; the two agreed on every example.

Random sites pack records closely (ties, deletions spanning later records, records inside
carried deletions) so the closed form's exceptions come up often."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.artifacts.dataset import select
from farm.artifacts.dataset.select import (
    CarrierBuffer,
    ContigSites,
    calls_from_matrix,
    overlapping,
    select_region,
)

kernels = pytest.importorskip("genoray._svar._kernels")


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
    buf = _buffer(carriers)  # one buffer for the regions in order, as a build reads them
    for q_start in sorted(rng.integers(0, span, 6).tolist()):
        q_end = q_start + int(rng.integers(1, width + 1))
        got = select_region(sites, buf, q_start, q_end, policy=policy, extend=True, n_haps=n_haps)
        want, end = _expected(sites, carriers, q_start, q_end, policy)
        assert got.lengths.tolist() == [len(w) for w in want]
        assert got.idxs.tolist() == np.concatenate(want).tolist()
        assert got.end == end
