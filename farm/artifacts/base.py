"""What every artifact kind reports about a directory on disk."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    MISSING = "missing"  # nothing at the destination
    FRESH = "fresh"  # complete, and its sources still match their recorded fingerprints
    STALE = "stale"  # complete, but a source changed since it was built: rebuild
    UNVALIDATED = "unvalidated"  # complete, but its sources cannot be found to compare
    CORRUPT = "corrupt"  # files missing, unreadable, of the wrong size or content
    TOO_NEW = "too_new"  # written in a format newer than this farm understands
    FOREIGN = "foreign"  # something that is not this kind of artifact is in the way

    @property
    def usable(self) -> bool:
        return self in (State.FRESH, State.UNVALIDATED)


@dataclass(frozen=True)
class Classification:
    state: State
    reason: str = ""
