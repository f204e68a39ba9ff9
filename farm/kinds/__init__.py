"""The registered artifact kinds, and the calls that reach a request's kind without asking
which it is. Adding a kind: a module beside these two, and its name in ``_REGISTERED``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from farm.artifacts.base import Classification
from farm.fingerprint import Fingerprint
from farm.kinds.base import Built, FenceToken, Kind, dir_size
from farm.kinds.cache import CACHE, CacheRequest
from farm.kinds.dataset import DATASET, DatasetRequest
from farm.progress import NO_PROGRESS, Progress
from farm.publish import Owner
from farm.requests import BuildRequest

__all__ = [
    "KINDS",
    "Built",
    "CacheRequest",
    "DatasetRequest",
    "FenceToken",
    "Kind",
    "checksum",
    "classify",
    "dir_size",
    "ensure",
    "fence_of",
    "is_artifact_dir",
    "parse_request",
    "recorded_request",
    "register",
]

KINDS: dict[str, Kind[Any]] = {}
_any_request: TypeAdapter[Any]


def register(kind: Kind[Any]) -> None:
    """Make ``kind`` known to parsing, building, checking and reindexing."""
    global _any_request
    KINDS[kind.name] = kind
    models = tuple(k.request_model for k in KINDS.values())
    union = Union[models] if len(models) > 1 else models[0]  # noqa: UP007
    _any_request = TypeAdapter(Annotated[union, Field(discriminator="kind")])


for _kind in (CACHE, DATASET):
    register(_kind)


def parse_request(data: dict[str, Any] | str | bytes) -> BuildRequest:
    """Decode a request of any registered kind from JSON text or a decoded JSON object."""
    if isinstance(data, str | bytes):
        return _any_request.validate_json(data)
    return _any_request.validate_python(data)


def is_artifact_dir(filenames: list[str]) -> bool:
    """Whether a directory holding these files may be an artifact of some kind."""
    return any(kind.marker in filenames for kind in KINDS.values())


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
    return KINDS[request.kind].ensure(
        request, owner, force=force, expected=expected, root=root, progress=progress
    )


def classify(request: BuildRequest, *, deep: bool = False) -> Classification:
    return KINDS[request.kind].classify(request, deep=deep)


def checksum(request: BuildRequest) -> str | None:
    """The checksum a build records for what is now at the request's destination."""
    try:
        return KINDS[request.kind].checksum(request.destination())
    except (OSError, ValueError):
        return None


def recorded_request(dest: Path) -> tuple[BuildRequest, dict[str, Fingerprint]] | None:
    """Rebuild, from an artifact's own files, the request that made it and the fingerprints
    it was built from; None when ``dest`` is no artifact the farm knows."""
    for kind in KINDS.values():
        found = kind.recorded_request(dest)
        if found is not None:
            return found
    return None


def fence_of(dest: Path) -> FenceToken | None:
    """The grant the artifact at ``dest`` records it was built under, whatever its kind."""
    for kind in KINDS.values():
        found = kind.fence_of(dest)
        if found is not None:
            return found
    return None
