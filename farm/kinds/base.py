"""What every artifact kind provides, so the rest of the farm never asks which kind it holds.

A kind is one module: its request model (the fields a client sends, the parts of its key) and
a :class:`Kind` that builds, classifies, verifies and recognises its artifacts. Register it in
:mod:`farm.kinds` and the queue, workers, registry, maintenance and CLI handle it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from farm.artifacts.base import Classification
from farm.fingerprint import Fingerprint
from farm.progress import Progress
from farm.publish import Owner
from farm.requests import BuildRequest


@dataclass(frozen=True)
class Built:
    action: str  # built, rebuilt, reused, migrated
    size_bytes: int
    checksum: str | None


@dataclass(frozen=True)
class FenceToken:
    """The grant an artifact on disk records it was built under (see farm.publish.Fence)."""

    key: str
    generation: int

    @classmethod
    def parse(cls, raw: Any) -> FenceToken | None:
        if not isinstance(raw, dict):
            return None
        key, generation = raw.get("key"), raw.get("generation")
        if not isinstance(key, str) or type(generation) is not int:
            return None
        return cls(key, generation)


RequestT = TypeVar("RequestT", contravariant=True)


class Kind(Protocol[RequestT]):
    """One kind of artifact. ``name`` is the ``kind`` field of its requests; a directory
    holding a file named ``marker`` may be one of its artifacts (reindex looks there)."""

    name: str
    request_model: type[BaseModel]
    marker: str

    def ensure(
        self,
        request: RequestT,
        owner: Owner,
        *,
        force: bool,
        expected: dict[str, Fingerprint] | None,
        root: Path | None,
        progress: Progress,
    ) -> Built:
        """Make the request's artifact valid on disk, building only what is missing or stale."""
        ...

    def classify(self, request: RequestT, *, deep: bool = False) -> Classification:
        """What is at the request's destination, for this request; ``deep`` reads every byte."""
        ...

    def recorded_request(self, dest: Path) -> tuple[BuildRequest, dict[str, Fingerprint]] | None:
        """The request that built ``dest`` and its sources' fingerprints, read from the
        artifact's own files; None when ``dest`` is not an artifact of this kind."""
        ...

    def fence_of(self, dest: Path) -> FenceToken | None:
        """The grant the artifact at ``dest`` records it was built under; None when it is
        not an artifact of this kind or records none (built outside a worker, or before)."""
        ...

    def checksum(self, dest: Path) -> str | None:
        """The checksum a build records for the artifact now at ``dest``, read cheaply from its
        own files (None when it has none), so a record can tell whether it still describes it."""
        ...


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
