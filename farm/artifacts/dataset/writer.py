"""Write a complete GenVarLoader dataset directory (format 2.0.0) from a request.

Layout (what genvarloader 0.43.1 reads; see the formats doc):
``metadata.json``, ``input_regions.arrow``, ``regions.npy`` and ``genotypes/`` with
``variants.arrow``, ``variant_idxs.npy`` (raw int32) and ``offsets.npy`` (raw int64), plus the
farm's own ``farm.json``: the request, source fingerprints and a checksum of every other file,
so a deep validation catches same-size corruption and the farm can rebuild from the record.

Memory is bounded by one region's window of decoded genotypes (plus the variant table's
positions for the BED's contigs): regions are processed in sorted order and each variant
record is decoded at most once, however many regions overlap it.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.ipc as ipc

import farm
from farm.artifacts.dataset.params import DatasetParams, contig_aliases, match_contig
from farm.artifacts.dataset.pgen import PgenFile
from farm.artifacts.dataset.rawfile import RawWriter
from farm.artifacts.dataset.regions import Regions, read_bed
from farm.artifacts.dataset.seal import sealed
from farm.artifacts.dataset.select import ContigSites, select_region
from farm.artifacts.dataset.sites import SiteTable
from farm.artifacts.dataset.split import Runs, write_split
from farm.artifacts.dataset.svar import svar_ploidy, write_svar_genotypes
from farm.artifacts.dataset.tracks import Windows, write_annotation, write_track
from farm.artifacts.dataset.vcf import VcfFile, threads
from farm.errors import InputError, SourceChangedError
from farm.fingerprint import (
    Fingerprint,
    SourceStamp,
    checksum,
    fingerprint,
)
from farm.progress import NO_PROGRESS, Progress

FORMAT_VERSION = "2.0.0"
_HASHERS = min(8, os.cpu_count() or 1)
# The genvarloader release whose layout this writer reproduces; readers take a version
# >= 0.18.0 to mean "POS in variants.arrow is 1-based".
GVL_VERSION = "0.43.1"
PLOIDY = 2
FARM_RECORD = "farm.json"
REQUIRED = ("metadata.json", "input_regions.arrow", "regions.npy")
NO_SITES = ContigSites(0, *(np.zeros(0, np.int64) for _ in range(3)))
GENOTYPE_FILES = ("genotypes/variants.arrow", "genotypes/variant_idxs.npy", "genotypes/offsets.npy")


def write_dataset(
    params: DatasetParams,
    out_dir: Path,
    *,
    expected: dict[str, Fingerprint] | None = None,
    progress: Progress = NO_PROGRESS,
    dest: Path | None = None,
    fence_token: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the dataset into the existing empty ``out_dir``; return its metadata.json content.
    ``dest``: where it will be published (default ``out_dir``), which a SparseVar source's link
    is relative to. ``fence_token``: the grant building it, recorded in ``farm.json``.

    Every source file is stamped before anything is read and checked after the last read
    (:class:`SourceStamp`), so a source that changes under the build fails it. ``expected``
    maps each role of :meth:`DatasetParams.source_roles` to the fingerprint the request was
    keyed with (None: no check); a source that no longer has it fails the build before
    anything is written.
    """
    stamps = _stamp_sources(params, expected)
    regions = read_bed(params.regions, params.strand_column)
    samples = params.dataset_samples(regions.contigs)
    table_rows = regions.sorted_table(params.max_jitter)
    n_track_dirs = len(params.tracks or {}) + len(params.annot_tracks or {})
    with_variants = params.variants is not None
    units = regions.n * (int(with_variants) + n_track_dirs)  # regions done, per output
    progress.start(units, "regions")

    sums: dict[str, str] = {}
    genotypes: dict[str, Any] = {"ploidy": None, "svar_link": None, "variants_fingerprint": None}
    if params.kind == "svar":
        assert params.variants is not None
        link, written = write_svar_genotypes(
            params.variants,
            regions.contigs,
            table_rows,
            samples,
            out_dir,
            extend=params.extend_to_length,
            dataset_dir=dest,
            progress=progress,
        )
        sums |= written
        genotypes |= {"ploidy": svar_ploidy(params.variants), "svar_link": link}
    elif with_variants:
        sums |= _write_genotypes(params, regions, samples, table_rows, out_dir, progress, units)
        # GenVarLoader checks this on open, so it too notices a replaced variant table.
        genotypes |= {
            "ploidy": PLOIDY,
            "variants_fingerprint": fingerprint(out_dir / GENOTYPE_FILES[0]).model_dump(),
        }
    # Tracks cover the final windows: after jitter, and after ends extended for deletions.
    np.save(out_dir / "regions.npy", table_rows.astype(np.int32))
    sums |= _write_tracks(params, regions, samples, table_rows, out_dir, progress)
    _write_input_regions(out_dir / "input_regions.arrow", regions)
    metadata: dict[str, Any] = {
        "samples": samples,
        "contigs": regions.contigs,
        "n_regions": regions.n,
        "ploidy": genotypes["ploidy"],
        "max_jitter": params.max_jitter,
        "version": GVL_VERSION,
        "format_version": FORMAT_VERSION,
        "svar_link": genotypes["svar_link"],
        "svar2_link": None,
        "variants_fingerprint": genotypes["variants_fingerprint"],
    }
    (out_dir / "metadata.json").write_text(json.dumps(metadata, separators=(",", ":")))

    with ThreadPoolExecutor(_HASHERS) as pool:  # hashing lets go of the GIL
        unchanged = list(pool.map(SourceStamp.unchanged, stamps))
    for stamp, same in zip(stamps, unchanged, strict=True):
        if not same:
            raise SourceChangedError(
                f"Input {stamp.path} of the dataset changed while it was being built; nothing "
                "was published, submit the build again once the file is final."
            )
    for rel in ("metadata.json", "input_regions.arrow", "regions.npy"):
        sums[rel] = checksum(out_dir / rel)
    record = {
        "kind": "dataset",
        "farm_version": farm.__version__,
        "format_version": FORMAT_VERSION,
        "request": params.canonical(),
        "sources": {str(s.path): s.fingerprint.model_dump() for s in stamps},
        "checksums": dict(sorted(sums.items())),
    }
    if fence_token is not None:
        record["fence"] = fence_token
    (out_dir / FARM_RECORD).write_text(json.dumps(sealed(record), indent=1))
    return metadata


def _write_genotypes(
    params: DatasetParams,
    regions: Regions,
    samples: list[str],
    table_rows: np.ndarray,
    out_dir: Path,
    progress: Progress,
    units: int,
) -> dict[str, str]:
    """``genotypes/``: the variant table, and each haplotype's variants per region. Extends
    ``table_rows``' ends in place where deletions need the haplotypes to reach past them.
    Progress: the variant file's sites as they are read, then ``units`` regions."""
    assert params.variants is not None
    source = PgenFile(params.variants) if params.kind == "pgen" else VcfFile(params.variants)
    geno = out_dir / "genotypes"
    geno.mkdir()
    table = SiteTable(params.variants, geno / "variants.arrow")
    table.keep_positions_for({alias for c in regions.contigs for alias in contig_aliases(c)})
    idx_out = RawWriter(geno / "variant_idxs.npy")
    off_out = RawWriter(geno / "offsets.npy")
    sums: dict[str, str] = {}
    try:
        source.read_sites(table, progress)
        per_contig = table.finish()
        progress.start(units, "regions")
        if isinstance(source, PgenFile):
            _check_pgen_count(source, table.n_variants)
        file_contigs = table.contigs
        contig_sites = {
            c_i: (f, per_contig.get(f, NO_SITES))
            for c_i, contig in enumerate(regions.contigs)
            # A contig with no records: its haplotypes are the reference, as in gvl.write.
            for f in [match_contig(contig, file_contigs) or contig]
        }
        runs = [
            (c_i, np.flatnonzero(table_rows[:, 0] == c_i)) for c_i in range(len(regions.contigs))
        ]

        def write(part: Runs, idx: RawWriter, off: RawWriter, total: int, report: Progress) -> int:
            for c_i, rows in part:
                file_contig, sites = contig_sites[c_i]
                total = _write_contig(
                    params, source, samples, sites, table_rows, rows, idx, off, total,
                    file_contig, report,
                )  # fmt: skip
            return total

        for _, sites in contig_sites.values():
            sites.prepare()  # before the fork: computed once, shared
        source.before_fork()
        total = write_split(runs, write, table_rows, idx_out, off_out, threads(), geno, progress)
        off_out.write(np.asarray([total], np.int64))
        if total == 0:
            # No haplotype carries a variant. GenVarLoader maps this file and cannot map an
            # empty one (gvl.write writes none, and then cannot open its dataset), so it
            # gets one entry that no offset reaches.
            idx_out.write(np.zeros(1, np.int32))
    finally:
        if isinstance(source, VcfFile):
            source.close()
        sums["genotypes/variant_idxs.npy"] = idx_out.close()
        sums["genotypes/offsets.npy"] = off_out.close()
    sums[GENOTYPE_FILES[0]] = checksum(out_dir / GENOTYPE_FILES[0])
    return sums


def _write_tracks(
    params: DatasetParams,
    regions: Regions,
    samples: list[str],
    table_rows: np.ndarray,
    out_dir: Path,
    progress: Progress,
) -> dict[str, str]:
    """``intervals/NAME/`` per per-sample track and ``annot_intervals/NAME/`` per annotation."""
    windows = Windows(
        contigs=[regions.contigs[c] for c in table_rows[:, 0]],
        starts=table_rows[:, 1].copy(),
        ends=table_rows[:, 2].copy(),
    )
    sums: dict[str, str] = {}
    for name, source in sorted((params.tracks or {}).items()):
        written = write_track(out_dir / "intervals" / name, windows, source, samples, progress)
        sums |= {f"intervals/{name}/{f}": c for f, c in written.items()}
    for name, path in sorted((params.annot_tracks or {}).items()):
        written = write_annotation(out_dir / "annot_intervals" / name, windows, path, progress)
        sums |= {f"annot_intervals/{name}/{f}": c for f, c in written.items()}
    return sums


def _stamp_sources(
    params: DatasetParams, expected: dict[str, Fingerprint] | None
) -> list[SourceStamp]:
    """Stamp every source before it is read; refuse any that is not the content asked for.

    With ``expected``, its roles must be exactly the sources' roles: a file that appeared or
    went away since the request was keyed (an index, say) changed the request too.
    """
    roles = params.source_roles()
    with ThreadPoolExecutor(_HASHERS) as pool:  # a track may have thousands of files
        stamps = dict(zip(roles, pool.map(SourceStamp.take, roles.values()), strict=True))
    if expected is not None:
        for role in sorted(stamps.keys() | expected.keys()):
            stamp, want = stamps.get(role), expected.get(role)
            if stamp is None or want is None or not stamp.fingerprint.matches(want):
                raise SourceChangedError(
                    f"Input {roles.get(role, params.variants)} of the dataset changed after it "
                    "was requested; nothing was published, submit the build again to build "
                    "from the current files."
                )
    return list(stamps.values())


def _check_pgen_count(source: PgenFile, n_pvar: int) -> None:
    import pgenlib

    try:
        reader = pgenlib.PgenReader(bytes(source.path), len(source.samples))
        n = reader.get_variant_ct()
        reader.close()
    except RuntimeError as e:
        raise InputError(
            f"Cannot open {source.path} as a PGEN file ({e}); it is truncated or corrupt: "
            f"regenerate it with plink2."
        ) from e
    if n != n_pvar:
        raise InputError(
            f"PGEN file {source.path} holds {n} variants but {source.pvar.name} lists "
            f"{n_pvar}; use the .pvar written with it."
        )


def _write_contig(
    params: DatasetParams,
    source: VcfFile | PgenFile,
    samples: list[str],
    sites: ContigSites,
    table_rows: np.ndarray,
    rows: np.ndarray,
    idx_out: RawWriter,
    off_out: RawWriter,
    total: int,
    file_contig: str,
    progress: Progress,
) -> int:
    n_haps = len(samples) * PLOIDY
    buf = source.buffer(file_contig, sites, samples) if sites.n else None
    for r in rows:
        q_start, q_end = int(table_rows[r, 1]), int(table_rows[r, 2])
        if buf is None:
            lengths = np.zeros(n_haps, np.int64)
        else:
            res = select_region(
                sites,
                buf,
                q_start,
                q_end,
                policy=source.policy,
                extend=params.extend_to_length,
                n_haps=n_haps,
            )
            idx_out.write(res.idxs)
            lengths = res.lengths
            table_rows[r, 2] = res.end
        starts = np.empty(n_haps, np.int64)
        starts[0] = total
        np.cumsum(lengths[:-1], out=starts[1:])
        starts[1:] += total
        off_out.write(starts)
        total += int(lengths.sum())
        progress.advance(1)
    return total


def _write_input_regions(path: Path, regions: Regions) -> None:
    """Every column of the BED as given (named and typed as GenVarLoader reads them) plus
    ``r_idx_map``: ``Dataset.open(..., splice_info=...)`` and region names read them."""
    table = regions.input_regions()
    with ipc.new_file(str(path), table.schema) as w:
        w.write_table(table)
