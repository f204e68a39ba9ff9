"""A dataset whose variants come from a genoray SparseVar directory (``.svar``).

What genvarloader 0.43.1's ``gvl.write(path, bed, variants=<dir>.svar)`` writes, and so what
this module writes: ``genotypes/offsets.npy``, a headerless int64 array of shape
``(2, regions, samples, ploidy)`` holding, per region and haplotype, the start and the stop of
its slice of the SparseVar's own ``variant_idxs.npy``; and ``genotypes/svar_meta.json`` with
that shape and dtype. There is no ``variants.arrow`` and no ``variant_idxs.npy`` in the
dataset: ``metadata.json`` links back to the SparseVar directory (``svar_link``) and
``Dataset.open`` reads the variants from there, so the directory must stay where it is.

The offsets are genoray's own answer to "which of a haplotype's variants does this window
hold" (``SparseVar.read_ranges`` / ``read_ranges_with_length``, called one contig at a time
exactly as gvl.write calls their kernels): gvl.write's result depends on that kernel's
details, including how it orders windows whose first variant is the same, so only genoray
itself reproduces it byte for byte. genoray is imported lazily, only for a SparseVar source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from farm.errors import InputError
from farm.fingerprint import checksum
from farm.progress import NO_PROGRESS, Progress

if TYPE_CHECKING:
    from genoray import SparseVar

SUFFIX = ".svar"
# The files of a SparseVar directory that decide a dataset built from it: its samples,
# ploidy and contigs; its variant table; and each haplotype's variants.
SOURCE_FILES = ("metadata.json", "index.arrow", "variant_idxs.npy", "offsets.npy")
OFFSETS = "genotypes/offsets.npy"
SVAR_META = "genotypes/svar_meta.json"
_FIX = "write it with genoray's SparseVar.from_vcf or SparseVar.from_pgen"


def check_svar(svar_dir: Path) -> None:
    """Refuse, in one sentence, a directory that is not a usable SparseVar for gvl.write.

    Cheap: reads ``metadata.json``, the sizes of the genotype files, and the ALT column of
    the variant table; multi-allelic, symbolic and breakend variants are refused, as
    gvl.write refuses them.
    """
    svar_dir = Path(svar_dir)
    meta = _read_metadata(svar_dir)
    n_haps = len(meta["samples"]) * meta["ploidy"]
    offsets, idxs = svar_dir / "offsets.npy", svar_dir / "variant_idxs.npy"
    if offsets.stat().st_size != (n_haps + 1) * 8:
        raise InputError(
            f"SparseVar {svar_dir} has an offsets.npy of {offsets.stat().st_size} bytes where "
            f"its {len(meta['samples'])} samples of ploidy {meta['ploidy']} need "
            f"{(n_haps + 1) * 8}; {_FIX} again."
        )
    last = int(np.fromfile(offsets, np.int64, offset=n_haps * 8)[0])
    if idxs.stat().st_size < last * 4:
        raise InputError(
            f"SparseVar {svar_dir} has a variant_idxs.npy of {idxs.stat().st_size} bytes where "
            f"its offsets.npy needs {last * 4} (truncated or mixed up); {_FIX} again."
        )
    _reject_unsupported_variants(svar_dir)


def svar_samples(svar_dir: Path) -> list[str]:
    """The SparseVar's samples, in its own order (a dataset holds them sorted)."""
    return list(_read_metadata(Path(svar_dir))["samples"])


def svar_contigs(svar_dir: Path) -> list[str]:
    """The contigs the SparseVar holds variants of."""
    return [str(c) for c in _read_metadata(Path(svar_dir))["contigs"]]


def svar_ploidy(svar_dir: Path) -> int:
    """The SparseVar's ploidy: a dataset built from it records this as its ``ploidy``."""
    return int(_read_metadata(Path(svar_dir))["ploidy"])


def write_svar_genotypes(
    svar_dir: Path,
    contigs: list[str],
    table_rows: np.ndarray,
    samples: list[str],
    out_dir: Path,
    *,
    extend: bool,
    dataset_dir: Path | None = None,
    progress: Progress = NO_PROGRESS,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Write ``out_dir/genotypes/`` for a SparseVar source as gvl.write does.

    ``table_rows``: the dataset's sorted (n, 4) region table (contig index into ``contigs``,
    start and end already widened by the jitter, strand); its ends are extended in place as
    gvl.write extends them. ``samples``: the dataset's samples, sorted. ``extend``: gvl's
    ``extend_to_length``. Returns the ``svar_link`` for ``metadata.json`` and the checksums
    of the files written, by path relative to ``out_dir``.

    The link's ``relative_path`` is taken from ``dataset_dir`` (default ``out_dir``), where the
    dataset will be opened: the farm builds through a handle path on its staging directory,
    which says nothing of where the dataset ends up.
    """
    svar_dir = Path(svar_dir)
    check_svar(svar_dir)
    svar = _open(svar_dir)
    if not samples:
        raise InputError(f"No samples were asked of SparseVar {svar_dir}; name at least one.")
    have = set(svar.available_samples)
    if missing := [s for s in samples if s not in have]:
        raise InputError(
            f"Sample(s) {', '.join(missing[:5])} are not in SparseVar {svar_dir}; request only "
            "samples it holds."
        )
    n, n_s, ploidy = len(table_rows), len(samples), int(svar.ploidy)
    geno = out_dir / "genotypes"
    geno.mkdir(parents=True, exist_ok=True)
    shape = (2, n, n_s, ploidy)
    # gvl.write: json.dump({"shape": offsets.shape, "dtype": offsets.dtype.str}, f).
    (geno / "svar_meta.json").write_text(
        json.dumps({"shape": list(shape), "dtype": np.dtype(np.int64).str})
    )

    index = svar.index
    # A variant's end as gvl.write reckons it when extending windows: POS minus the
    # deletion length (1-based POS, so one past the last deleted base in 0-based terms).
    ilen0 = index["ILEN"].list.first().clip(upper_bound=0)
    v_ends = (index["POS"] - ilen0).to_numpy()
    data = svar.genos.data
    read = svar.read_ranges_with_length if extend else svar.read_ranges

    offsets = np.memmap(geno / "offsets.npy", np.int64, "w+", shape=shape)
    try:
        for c_i in dict.fromkeys(table_rows[:, 0].tolist()):
            rows = np.flatnonzero(table_rows[:, 0] == c_i)
            starts, ends = table_rows[rows, 1], table_rows[rows, 2]
            # One call per contig, as gvl.write makes: genoray's kernel answers depend on
            # the whole batch of windows (it sorts them by first variant).
            off = read(contigs[c_i], starts, ends, samples=samples).offsets
            off = np.asarray(off, np.int64).reshape(2, len(rows), n_s, ploidy)
            if (off == -1).all():
                # The contig is not in the SparseVar: genoray answers -1 throughout. gvl.write
                # leaves zeros (empty windows: reference haplotypes) when extending, and
                # crashes on the -1s when not; both get the zeros here.
                off = np.zeros_like(off)
            offsets[:, rows] = off
            table_rows[rows, 2] = _extended_ends(off, data, v_ends, ends)
            progress.advance(len(rows))
        offsets.flush()
    finally:
        del offsets

    resolved = svar_dir.resolve()
    link = {
        "relative_path": os.path.relpath(resolved, start=dataset_dir or out_dir).replace(
            os.sep, "/"
        ),
        "absolute_path": str(resolved),
        "fingerprint": {
            "n_variants": int(index.height),
            "variant_idxs_bytes": (resolved / "variant_idxs.npy").stat().st_size,
        },
    }
    sums = {rel: checksum(out_dir / rel) for rel in (OFFSETS, SVAR_META)}
    return link, sums


def _extended_ends(
    off: np.ndarray, data: np.ndarray, v_ends: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """Each window's end as gvl.write extends it: the end of the highest-numbered variant
    any of its haplotypes holds, when that is past the window's end.

    (gvl.write takes the variant with the largest index, not the one reaching furthest; a
    haplotype's variants are in index order, so its largest is its last.)
    """
    held = off[1] > off[0]  # (r, s, p)
    last = np.full(held.shape, -1, np.int64)
    if held.any():
        last[held] = data[off[1][held] - 1]
    top = last.max(axis=(1, 2))
    out = ends.astype(np.int64, copy=True)
    some = top >= 0
    # gvl.write keeps these ends as int32 before taking the max with the window's end.
    reach = v_ends[top[some]].astype(np.int32).astype(np.int64)
    out[some] = np.maximum(reach, out[some])
    return out


def _read_metadata(svar_dir: Path) -> dict[str, Any]:
    """``metadata.json`` of a SparseVar directory, with the files beside it checked present."""
    if not svar_dir.is_dir():
        raise InputError(
            f"Variant source {svar_dir} is not a directory; pass a genoray SparseVar directory "
            f"(*.svar), or {_FIX}."
        )
    if svar_dir.suffix != SUFFIX:
        raise InputError(
            f"Variant directory {svar_dir} is not named *.svar, which GenVarLoader requires of "
            "a SparseVar directory; rename it to end in .svar."
        )
    for name in SOURCE_FILES:
        if not (svar_dir / name).is_file():
            raise InputError(
                f"Directory {svar_dir} is not a genoray SparseVar (it has no {name}); {_FIX}."
            )
    try:
        meta = json.loads((svar_dir / "metadata.json").read_text())
    except (ValueError, UnicodeDecodeError):
        meta = None
    ok = (
        isinstance(meta, dict)
        and isinstance(meta.get("samples"), list)
        and all(isinstance(s, str) for s in meta["samples"])
        and isinstance(meta.get("ploidy"), int)
        and meta["ploidy"] >= 1
        and isinstance(meta.get("contigs"), list)
    )
    if not ok:
        raise InputError(
            f"SparseVar {svar_dir} has a metadata.json without samples, ploidy and contigs; "
            f"{_FIX} again."
        )
    assert isinstance(meta, dict)
    if len(set(meta["samples"])) != len(meta["samples"]):
        raise InputError(
            f"SparseVar {svar_dir} names a sample twice in its metadata.json; {_FIX} from a "
            "file whose sample names are unique."
        )
    return meta


def _genoray() -> None:
    """genoray reads SparseVar stores; it is an extra, so say how to get it."""
    try:
        import genoray  # noqa: F401
    except ImportError:
        raise InputError(
            "A SparseVar (.svar) variant source needs genoray, which is not installed; "
            "install the farm with its svar extra (pip install 'gvl-farm[svar]')."
        ) from None


def _reject_unsupported_variants(svar_dir: Path) -> None:
    """Count multi-allelic, symbolic and breakend variants over the whole variant table, as
    gvl.write does before writing (with genoray's own definitions of the three)."""
    _genoray()
    import polars as pl
    from genoray import exprs

    try:
        lf = pl.scan_ipc(svar_dir / "index.arrow")
        alt = lf.collect_schema()["ALT"]
        if alt == pl.Utf8:
            lf = lf.with_columns(pl.col("ALT").str.split(","))
        n_multi, n_sym, n_bnd = (
            lf.select(
                (pl.col("ALT").list.len() > 1).cast(pl.Int64).sum(),
                exprs.is_symbolic.cast(pl.Int64).sum().alias("s"),
                exprs.is_breakend.cast(pl.Int64).sum().alias("b"),
            )
            .collect()
            .row(0)
        )
    except (pl.exceptions.PolarsError, OSError, KeyError) as e:
        raise InputError(
            f"SparseVar {svar_dir} has an index.arrow that cannot be read as a variant table "
            f"({type(e).__name__}); {_FIX} again."
        ) from None
    if n_multi or n_sym or n_bnd:
        raise InputError(
            f"SparseVar {svar_dir} holds variants GenVarLoader cannot reconstruct ({n_multi} "
            f"multi-allelic, {n_sym} symbolic, {n_bnd} breakend); rebuild it from a VCF or PGEN "
            "split into bi-allelic records without symbolic or breakend alleles (bcftools norm "
            "-m-, then drop structural variants)."
        )


def _open(svar_dir: Path) -> SparseVar:
    _genoray()
    from genoray import SparseVar

    try:
        return SparseVar(svar_dir)
    except (ValueError, OSError) as e:
        raise InputError(
            f"Cannot open {svar_dir} as a genoray SparseVar ({type(e).__name__}); {_FIX} again."
        ) from None
