"""What the registry records about one requested artifact.

Its own module so that the registry's light readers (``farm status``) need no pydantic: the
registry imports this only where it turns stored JSON into records.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from farm.fingerprint import Fingerprint


class Status(StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    VALID = "valid"
    STALE = "stale"  # was valid; a source changed or a newer build superseded it
    INVALID = "invalid"  # the artifact on disk failed verification
    FAILED = "failed"  # the build failed; ``error`` says why

    @property
    def terminal(self) -> bool:
        return self not in (Status.QUEUED, Status.BUILDING)


class ArtifactRecord(BaseModel):
    """Everything a pipeline may ask about one requested artifact."""

    model_config = ConfigDict(frozen=True)

    # First field on purpose: the claim script turns the serialized prefix
    # ``{"rebuild":false`` into ``{"rebuild":true`` without a JSON round trip in Lua.
    # True when the artifact at the destination must not be reused (it was found invalid,
    # or belongs to a superseded request): validity is earned by a rebuild.
    rebuild: bool = False
    key: str
    kind: str
    dest: str
    request: dict[str, Any]
    sources: dict[str, Fingerprint]
    status: Status
    error: str | None = None
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    build_seconds: float | None = None
    size_bytes: int | None = None
    checksum: str | None = None
    worker: str | None = None
    action: str | None = None  # built, rebuilt, reused, migrated, reindexed, requeued...
    # The grant that published the artifact now at ``dest``, as the artifact records it: the
    # watchdog and ``farm verify`` compare the two to find a late builder's publish.
    generation: int | None = None

    def evolve(self, **changes: Any) -> ArtifactRecord:
        changes.setdefault("updated_at", time.time())
        return self.model_copy(update=changes)
