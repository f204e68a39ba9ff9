"""The seam between requests and artifact kinds: how each kind is ensured and checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from farm.artifacts import dataset, gvlfa
from farm.artifacts.base import Classification, State
from farm.artifacts.dataset.validate import read_record
from farm.artifacts.dataset.writer import FARM_RECORD
from farm.errors import ArtifactInvalidError, FarmError, InputError, TooNewError
from farm.fingerprint import Fingerprint, checksum, fingerprint
from farm.progress import NO_PROGRESS, Progress
from farm.publish import Outcome, Owner
from farm.requests import BuildRequest, CacheRequest, DatasetRequest


@dataclass(frozen=True)
class Built:
    action: str  # built, rebuilt, reused, migrated
    size_bytes: int
    checksum: str | None


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ensure(
    request: BuildRequest,
    owner: Owner,
    *,
    force: bool = False,
    expected: dict[str, Fingerprint] | None = None,
    root: Path | None = None,
    progress: Progress = NO_PROGRESS,
) -> Built:
    """Make the request's artifact valid on disk, building only what is missing or stale.

    ``force``: never reuse what is at the destination (it failed verification, or belongs to
    a superseded request). ``expected``: the sources' fingerprints by role, as keyed; a source
    that no longer has them fails the build before anything is written. ``root``: the
    allowed root the destination lies below; nothing is written outside it, whatever happens
    to the path (:mod:`farm.confine`).
    """
    if isinstance(request, CacheRequest):
        result = gvlfa.ensure_cache(
            request.fasta,
            request.destination(),
            owner=owner,
            force=force,
            expected=expected.get("fasta") if expected is not None else None,
            root=root,
            progress=progress,
        )
        return Built(
            action=result.action,
            size_bytes=dir_size(result.dest),
            checksum=result.metadata.sequence_checksum,
        )
    return _ensure_dataset(
        request, owner, force=force, expected=expected, root=root, progress=progress
    )


def _ensure_dataset(
    request: DatasetRequest,
    owner: Owner,
    *,
    force: bool,
    expected: dict[str, Fingerprint] | None,
    root: Path | None,
    progress: Progress,
) -> Built:
    dest = request.destination()
    found = classify(request)
    if found.state is State.FRESH and not force and _built_from(dest, expected):
        return _dataset_built("reused", dest)
    if found.state is State.TOO_NEW:
        raise TooNewError(f"{found.reason}; upgrade gvl-farm, or remove {dest} to rebuild it.")
    if found.state is State.FOREIGN:
        raise InputError(f"{found.reason}; choose another destination for the dataset.")
    replace = found.state is not State.MISSING
    outcome, _ = dataset.build_dataset(
        request.params(),
        dest,
        owner=owner,
        replace=replace,
        expected=expected,
        root=root,
        progress=progress,
    )
    if outcome is Outcome.LOST and classify(request).state is not State.FRESH:
        raise ArtifactInvalidError(
            f"Another builder published {dest} first and it is not a fresh dataset of this "
            "request; build again."
        )
    action = {Outcome.LOST: "reused", Outcome.REPLACED: "rebuilt"}.get(outcome, "built")
    return _dataset_built(action, dest)


def _built_from(dest: Path, expected: dict[str, Fingerprint] | None) -> bool:
    """Whether the dataset at ``dest`` was built from the expected source contents (a fresh
    dataset of files that changed since the request was keyed is not this request's)."""
    if expected is None:
        return True
    record = read_record(dest) or {}
    recorded = {(fp["digest"], fp["size_bytes"]) for fp in (record.get("sources") or {}).values()}
    return recorded == {(fp.digest, fp.size_bytes) for fp in expected.values()}


def _dataset_built(action: str, dest: Path) -> Built:
    return Built(action, dir_size(dest), checksum(dest / FARM_RECORD))


def classify(request: BuildRequest, *, deep: bool = False) -> Classification:
    dest = request.destination()
    if isinstance(request, CacheRequest):
        found = gvlfa.classify(dest, deep=deep)
        if found.state is State.FRESH and not fingerprint(request.fasta).matches(
            gvlfa.read_metadata(dest).fingerprint
        ):
            # Fresh for its own source, but that is another FASTA than this request's.
            return Classification(State.STALE, f"{dest} holds the cache of another FASTA")
        return found
    found = dataset.classify_dataset(dest)
    if found.state is State.FRESH:
        record = read_record(dest)
        if record is not None and record.get("request") != request.params().canonical():
            # Fresh sources, other parameters (samples, jitter...): not this request's dataset.
            return Classification(State.STALE, f"{dest} was built from another request")
    if deep and found.state.usable:
        try:
            dataset.validate_dataset(dest, deep=True)
        except ArtifactInvalidError as e:
            return Classification(State.CORRUPT, str(e))
    return found


def recorded_request(dest: Path) -> tuple[BuildRequest, dict[str, Fingerprint]] | None:
    """Rebuild, from an artifact's own files, the request that made it and the fingerprints
    it was built from; None when ``dest`` is no artifact the farm knows."""
    if dest.name.endswith(gvlfa.SUFFIX) or (dest / gvlfa.DATA_FILE).exists():
        try:
            meta = gvlfa.read_metadata(dest)
        except (OSError, ValueError):
            return None
        source = gvlfa.resolve_source(dest, meta) or Path(meta.source.absolute_path)
        request = CacheRequest(fasta=source, dest=dest).absolute()
        return request, {"fasta": meta.fingerprint}
    return _recorded_dataset(dest)


def _recorded_dataset(dest: Path) -> tuple[DatasetRequest, dict[str, Fingerprint]] | None:
    try:
        record = read_record(dest)
    except ArtifactInvalidError:
        return None
    if record is None or record.get("kind") != "dataset":
        return None
    fields = dict(record["request"])
    if fields.get("samples") is not None:
        fields["samples"] = tuple(fields["samples"])
    request = DatasetRequest(dest=dest, **fields).absolute()
    by_path = {
        str(Path(path).resolve()): Fingerprint.model_validate(fp)
        for path, fp in record["sources"].items()
    }
    roles = {role: str(Path(path).resolve()) for role, path in _roles(request).items()}
    if set(roles.values()) != set(by_path):
        return None
    return request, {role: by_path[path] for role, path in roles.items()}


def _roles(request: DatasetRequest) -> dict[str, Path]:
    try:
        return request.source_files()
    except FarmError:
        return {}
