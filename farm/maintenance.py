"""Keeping the registry honest: verify records against disk, rebuild them from disk, gc orphans."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from farm import kinds, versions
from farm.artifacts.base import State
from farm.errors import FarmError, InputError
from farm.fingerprint import fingerprint
from farm.kinds import parse_request
from farm.orphans import Orphan, find_orphans
from farm.publish import Owner
from farm.records import ArtifactRecord, Status
from farm.registry import Registry
from farm.requests import derive_key

_STATUS_OF = {
    State.FRESH: Status.VALID,
    State.STALE: Status.STALE,
    State.UNVALIDATED: Status.STALE,
}


def verify_record(record: ArtifactRecord) -> ArtifactRecord:
    """Re-check one record's artifact against its sources and its bytes (deeply)."""
    request = parse_request(record.request)
    for role, recorded in record.sources.items():
        path = request.source_files().get(role)
        try:
            current = fingerprint(path) if path is not None else None
        except OSError:
            current = None
        if current is None:
            return record.evolve(
                status=Status.STALE,
                error=f"its {role} source {path} is gone, so it cannot be checked or rebuilt.",
            )
        if not current.matches(recorded):
            return record.evolve(
                status=Status.STALE, error=f"its {role} source {path} changed since the build."
            )
    found = kinds.classify(request, deep=True)
    status = _STATUS_OF.get(found.state, Status.INVALID)
    error = None if status is Status.VALID else f"{found.reason or found.state}."
    if status is Status.VALID and (late := _another_grants(record)) is not None:
        status, error = Status.INVALID, late
    return record.evolve(status=status, error=error, rebuild=status is not Status.VALID)


def _another_grants(record: ArtifactRecord) -> str | None:
    """Why the artifact at the record's destination is not the one the record vouches for (a
    builder that lost its grant published it late), or None when it is."""
    if record.generation is None:
        return None  # recorded before fencing, or outside a worker: nothing to compare
    token = kinds.fence_of(Path(record.dest))
    if token is not None and (token.key, token.generation) == (record.key, record.generation):
        return None
    held = "no grant" if token is None else f"{token.key[:16]} generation {token.generation}"
    return (
        f"{record.dest} holds the artifact of another build ({held}, not generation "
        f"{record.generation}): a late builder published it; request it again to rebuild it."
    )


def verify(registry: Registry, keys: list[str] | None = None) -> Iterator[ArtifactRecord]:
    """Verify recorded artifacts (all terminal ones by default) and store the verdicts, one
    by one as they are checked."""
    records = _in_batches(registry, keys) if keys else registry.records()
    for record in records:
        if record is None or not record.status.terminal or record.status is Status.FAILED:
            continue
        verdict = verify_record(record)
        registry.put(verdict)
        yield verdict


def _in_batches(
    registry: Registry, keys: list[str], batch: int = 500
) -> Iterator[ArtifactRecord | None]:
    for i in range(0, len(keys), batch):
        yield from registry.get_many(keys[i : i + batch])


def find_artifacts(root: Path) -> Iterator[Path]:
    """Published artifact directories below ``root`` (staging and aside dirs are skipped),
    and destinations that are the farm's links to a version (by the link's path: the
    versions behind it are not artifacts of their own)."""
    for dirpath, dirnames, filenames in os.walk(root):
        if kinds.is_artifact_dir(filenames) and Owner.parse(os.path.basename(dirpath)) is None:
            yield Path(dirpath)
            dirnames[:] = []
            continue
        for name in dirnames:  # a link to a directory is listed here, and never walked into
            if versions.is_farm_link(Path(dirpath, name)):
                yield Path(dirpath, name)
        dirnames[:] = [
            d
            for d in dirnames
            if Owner.parse(d) is None and versions.dest_of_versions_dir(d) is None
        ]


def reindex(registry: Registry, root: Path, *, allowed: list[Path]) -> Iterator[ArtifactRecord]:
    """Rebuild records from the artifacts below ``root`` (they describe themselves), one by
    one as they are found. ``root`` must lie within the ``allowed`` roots (checked at the
    call): a sweep of someone else's tree would record their artifacts as the farm's.

    A key already recorded keeps what its record knew of the artifact (when it was built, by
    whom, in how long, its checksum) as long as the artifact on disk is still the one it
    describes; a key in flight is left to its builder. At the end the counts of records
    by status (``farm metrics``) are rebuilt from the records."""
    resolved = _within_allowed(root, allowed, "reindex")
    return _reindexed(registry, resolved)


def _reindexed(registry: Registry, root: Path) -> Iterator[ArtifactRecord]:
    for dest in find_artifacts(root):
        described = kinds.recorded_request(dest)
        if described is None:
            continue
        request, sources = described
        key = derive_key(request, sources)
        known = registry.get(key)
        if known is not None and not known.status.terminal:
            yield known  # queued or building: its builder writes the record
            continue
        # Validity is earned: an artifact its record calls invalid passes only a deep check.
        distrusted = known is not None and known.status is Status.INVALID
        found = kinds.classify(request, deep=distrusted)
        status = _STATUS_OF.get(found.state, Status.INVALID)
        # The key's next grant must be newer than the one this artifact records (a Redis
        # that lost its counters would hand the same number out again).
        token = kinds.fence_of(dest)
        generation = token.generation if token is not None and token.key == key else None
        if generation is not None:
            registry.raise_generation(key, generation)
        verdict = {
            "status": status,
            "error": None if status is Status.VALID else f"{found.reason or found.state}.",
            "rebuild": status is not Status.VALID,
            "size_bytes": kinds.dir_size(dest),
            "action": "reindexed",
            "generation": generation,
        }
        checksum = kinds.checksum(request)
        if known is not None and known.status is not Status.FAILED and known.checksum == checksum:
            record = known.evolve(**verdict)  # the very artifact its record describes
        else:
            now = time.time()
            record = ArtifactRecord(
                key=key,
                kind=request.kind,
                dest=str(request.destination()),
                request=request.model_dump(mode="json"),
                sources=sources,
                created_at=now,
                updated_at=now,
                checksum=checksum,
                **verdict,
            )
        registry.put(record)
        yield record
    # The counts behind `farm metrics` follow every write, but a registry rebuilt after a
    # loss may hold records written before counting existed: count them all once.
    registry.recount()


def _within_allowed(root: Path, allowed: list[Path], command: str) -> Path:
    """``root`` resolved, or one sentence refusing it when it lies outside the allowed roots."""
    resolved = root.resolve()
    if not any(resolved == a or resolved.is_relative_to(a) for a in allowed):
        listed = os.pathsep.join(str(a) for a in allowed)
        raise InputError(
            f"{root} is outside the allowed roots ({listed}), the only places {command} "
            "sweeps; name a directory below one of them."
        )
    return resolved


def gc(
    registry: Registry | None,
    roots: list[Path],
    *,
    grace_s: float,
    allowed: list[Path],
    version_grace_s: float | None = None,
) -> Iterator[Orphan]:
    """Find staging/aside directories of dead builders below ``roots``, each of which must
    lie within the ``allowed`` roots: gc never walks, let alone removes, anything else, and
    (given ``version_grace_s``) versions retired behind a destination's link longer ago than
    that. The roots are checked at the call; the orphans come as the walk finds them."""
    for root in roots:
        _within_allowed(root, allowed, "gc")

    def live(job: str) -> bool:
        if registry is None:
            return True  # without a registry, another host's job may still be running
        try:
            return registry.live_lease_for_job(job)
        except FarmError:
            return True

    return (
        orphan
        for root in roots
        for orphan in find_orphans(
            root, is_job_live=live, grace_seconds=grace_s, version_grace_s=version_grace_s
        )
    )
