"""The seam between requests and artifact kinds: how each kind is ensured and checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from farm.artifacts import gvlfa
from farm.artifacts.base import Classification
from farm.fingerprint import Fingerprint
from farm.publish import Owner
from farm.requests import BuildRequest, CacheRequest


@dataclass(frozen=True)
class Built:
    action: str  # built, rebuilt, reused, migrated
    size_bytes: int
    checksum: str | None


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ensure(request: BuildRequest, owner: Owner) -> Built:
    """Make the request's artifact valid on disk, building only what is missing or stale."""
    if isinstance(request, CacheRequest):
        result = gvlfa.ensure_cache(request.fasta, request.destination(), owner=owner)
        return Built(
            action=result.action,
            size_bytes=dir_size(result.dest),
            checksum=result.metadata.sequence_checksum,
        )
    raise TypeError(f"no builder for {type(request).__name__}")


def classify(request: BuildRequest, *, deep: bool = False) -> Classification:
    if isinstance(request, CacheRequest):
        return gvlfa.classify(request.destination(), deep=deep)
    raise TypeError(f"no classifier for {type(request).__name__}")


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
    return None
