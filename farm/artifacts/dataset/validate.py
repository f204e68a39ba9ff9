"""Is a directory a usable dataset? GenVarLoader's own open-time checks, plus the farm's record.

Shallow validation mirrors what genvarloader 0.43.1 checks when it opens a dataset (format
gate, required files, ``regions.npy`` shape, exact ``offsets.npy`` size) and adds the cheap
ends of the genotype arrays. Deep validation reads every byte against the checksums recorded
in ``farm.json``, which is what catches a same-size corruption.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from farm.artifacts.base import Classification, State
from farm.artifacts.dataset.seal import damage
from farm.artifacts.dataset.svar import OFFSETS as SVAR_OFFSETS
from farm.artifacts.dataset.svar import SVAR_META
from farm.artifacts.dataset.tracks import FILES as TRACK_FILES
from farm.artifacts.dataset.writer import FARM_RECORD, GENOTYPE_FILES, REQUIRED
from farm.errors import ArtifactInvalidError, TooNewError
from farm.fingerprint import Fingerprint, checksum, fingerprint
from farm.versions import is_farm_link

SUPPORTED_MAJOR = 2
_REGEN = "rebuild the dataset"


def _invalid(dest: Path, what: str) -> ArtifactInvalidError:
    return ArtifactInvalidError(f"Dataset {dest}: {what}; {_REGEN}.")


def read_metadata(dest: Path) -> dict[str, Any]:
    try:
        meta = json.loads((dest / "metadata.json").read_text())
    except FileNotFoundError as e:
        raise _invalid(dest, "metadata.json is missing") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise _invalid(dest, "metadata.json is not valid JSON") from e
    if not isinstance(meta, dict):
        raise _invalid(dest, "metadata.json is not a JSON object")
    return meta


def _check_format(dest: Path, meta: dict[str, Any]) -> None:
    fv = meta.get("format_version")
    try:
        major = int(str(fv).split(".")[0]) if fv is not None else None
    except ValueError:
        major = None
    if major is None or major < SUPPORTED_MAJOR:
        raise ArtifactInvalidError(
            f"Dataset {dest} has format version {fv}, older than {SUPPORTED_MAJOR}.x; run "
            f"genvarloader.migrate({str(dest)!r}) or rebuild it."
        )
    if major > SUPPORTED_MAJOR:
        raise TooNewError(
            f"Dataset {dest} has format version {fv}, newer than this farm supports "
            f"({SUPPORTED_MAJOR}.x); upgrade gvl-farm."
        )


def validate_dataset(dest: Path, *, deep: bool = False) -> None:
    """Raise :class:`ArtifactInvalidError` (or :class:`TooNewError`) naming the first defect."""
    if not dest.is_dir():
        raise _invalid(dest, "it is not a directory")
    meta = read_metadata(dest)
    _check_format(dest, meta)
    for key in ("samples", "contigs", "n_regions"):
        if key not in meta:
            raise _invalid(dest, f"metadata.json has no {key!r}")
    for rel in REQUIRED:
        if not (dest / rel).is_file():
            raise _invalid(dest, f"required file {rel} is missing")
    n_regions, n_samples = int(meta["n_regions"]), len(meta["samples"])
    try:
        regions = np.load(dest / "regions.npy", mmap_mode="r")
    except (ValueError, OSError) as e:
        raise _invalid(dest, f"regions.npy is unreadable ({e})") from e
    if regions.shape != (n_regions, 4):
        raise _invalid(dest, f"regions.npy has shape {regions.shape}, expected ({n_regions}, 4)")
    if (dest / "genotypes").exists():
        _check_genotypes(dest, meta, n_regions, n_samples, deep)
    for kind, cells in (("intervals", n_regions * n_samples), ("annot_intervals", n_regions)):
        if (dest / kind).is_dir():
            for track in sorted((dest / kind).iterdir()):
                _check_track(dest, track, cells)
    if deep:
        _check_checksums(dest)


def _check_genotypes(
    dest: Path, meta: dict[str, Any], n_regions: int, n_samples: int, deep: bool
) -> None:
    ploidy = meta.get("ploidy")
    if not ploidy:
        raise _invalid(dest, "it has genotypes but metadata.json has no ploidy")
    if (dest / SVAR_META).exists():
        _check_svar_offsets(dest, meta, n_regions * int(ploidy) * n_samples)
        return
    for rel in GENOTYPE_FILES:
        if not (dest / rel).is_file():
            raise _invalid(dest, f"required file {rel} is missing")
    n_offsets = n_regions * int(ploidy) * n_samples + 1
    offsets_path = dest / "genotypes/offsets.npy"
    size = offsets_path.stat().st_size
    if size != n_offsets * 8:
        raise _invalid(
            dest,
            f"genotypes/offsets.npy is {size} bytes, expected {n_offsets * 8} "
            f"(n_regions * ploidy * n_samples + 1 int64)",
        )
    idx_bytes = (dest / "genotypes/variant_idxs.npy").stat().st_size
    if idx_bytes % 4:
        raise _invalid(dest, "genotypes/variant_idxs.npy is not a whole number of int32")
    offsets = np.memmap(offsets_path, np.int64, "r") if size else np.zeros(1, np.int64)
    # No variant on any haplotype: one padding entry, since GenVarLoader cannot map an empty file.
    held = max(int(offsets[-1]), 1)
    if offsets[0] != 0 or held != idx_bytes // 4:
        raise _invalid(
            dest,
            f"genotypes/offsets.npy runs from {offsets[0]} to {offsets[-1]} but "
            f"variant_idxs.npy holds {idx_bytes // 4} entries",
        )
    if deep and np.any(np.diff(offsets) < 0):
        raise _invalid(dest, "genotypes/offsets.npy is not non-decreasing")
    fp = meta.get("variants_fingerprint")
    if fp is not None:
        want = Fingerprint.model_validate(fp)
        if not want.matches(fingerprint(dest / GENOTYPE_FILES[0])):
            raise _invalid(dest, "genotypes/variants.arrow does not match its fingerprint")


def _check_svar_offsets(dest: Path, meta: dict[str, Any], n_haplotypes: int) -> None:
    """A SparseVar-backed dataset: a start and a stop per haplotype, and a link to its store."""
    if not meta.get("svar_link"):
        raise _invalid(dest, f"it has {SVAR_META} but metadata.json has no svar_link")
    try:
        size = (dest / SVAR_OFFSETS).stat().st_size
    except OSError:
        raise _invalid(dest, f"required file {SVAR_OFFSETS} is missing") from None
    if size != 2 * n_haplotypes * 8:
        raise _invalid(dest, f"{SVAR_OFFSETS} is {size} bytes, expected {2 * n_haplotypes * 8}")


def _check_track(dest: Path, track: Path, cells: int) -> None:
    """A track's four arrays: offsets over every cell, and as many intervals as they say (one
    padding entry when there are none: genvarloader cannot map an empty file)."""
    where = track.relative_to(dest).as_posix()
    sizes = {}
    for name in TRACK_FILES:
        try:
            sizes[name] = (track / name).stat().st_size
        except OSError:
            raise _invalid(dest, f"track file {where}/{name} is missing") from None
    if sizes["offsets.npy"] != (cells + 1) * 8:
        raise _invalid(
            dest,
            f"{where}/offsets.npy is {sizes['offsets.npy']} bytes, expected {(cells + 1) * 8}",
        )
    offsets = np.memmap(track / "offsets.npy", np.int64, "r")
    n = max(int(offsets[-1]), 1)
    if offsets[0] != 0 or any(sizes[f] != n * 4 for f in TRACK_FILES[:3]):
        raise _invalid(dest, f"{where} holds arrays of other lengths than its offsets say")


def read_record(dest: Path) -> dict[str, Any] | None:
    """The farm's ``farm.json`` record, or None for a dataset the farm did not build."""
    try:
        record = json.loads((dest / FARM_RECORD).read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as e:
        raise _invalid(dest, f"{FARM_RECORD} is not valid JSON") from e
    if not isinstance(record, dict) or not isinstance(record.get("checksums"), dict):
        raise _invalid(dest, f"{FARM_RECORD} has no checksums")
    if (why := damage(record)) is not None:
        raise _invalid(dest, f"{FARM_RECORD} {why}")
    return record


def _check_checksums(dest: Path) -> None:
    record = read_record(dest)
    if record is None:
        raise _invalid(dest, f"it has no {FARM_RECORD}, so its content cannot be verified")
    recorded: dict[str, str] = record["checksums"]
    present = {
        p.relative_to(dest).as_posix()
        for p in dest.rglob("*")
        if p.is_file() and p.name != FARM_RECORD
    }
    if missing := sorted(set(recorded) - present):
        raise _invalid(dest, f"{missing[0]} is missing")
    if extra := sorted(present - set(recorded)):
        raise _invalid(dest, f"{extra[0]} was not written by the farm")
    for rel, want in sorted(recorded.items()):
        if checksum(dest / rel) != want:
            raise _invalid(dest, f"{rel} does not match its recorded checksum (corrupted)")


def classify_dataset(dest: Path) -> Classification:
    """What is at ``dest``, and can it be used as is?"""
    if not dest.exists() and (not dest.is_symlink() or is_farm_link(dest)):
        return Classification(State.MISSING)  # a farm link whose version is gone: nothing
    if not dest.is_dir() or not (dest / "metadata.json").exists():
        return Classification(State.FOREIGN, f"{dest} is not a GenVarLoader dataset")
    try:
        validate_dataset(dest)
        record = read_record(dest)
    except TooNewError as e:
        return Classification(State.TOO_NEW, str(e))
    except ArtifactInvalidError as e:
        return Classification(State.CORRUPT, str(e))
    if record is None:
        return Classification(State.UNVALIDATED, "not built by the farm: no record of sources")
    sources: dict[str, Any] = record.get("sources") or {}
    gone = []
    for path, fp in sources.items():
        p = Path(path)
        if not p.is_file():
            gone.append(path)
            continue
        if not Fingerprint.model_validate(fp).matches(fingerprint(p)):
            return Classification(State.STALE, f"source {path} changed since the build")
    if gone:
        return Classification(State.UNVALIDATED, f"source {gone[0]} cannot be found")
    return Classification(State.FRESH)
