"""The ``.gvlfa`` FASTA cache as an artifact kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from farm.artifacts import gvlfa
from farm.artifacts.base import Classification, State
from farm.fingerprint import Fingerprint, fingerprint
from farm.kinds.base import Built, FenceToken, dir_size
from farm.progress import Progress
from farm.publish import Owner
from farm.requests import BoundedPath, absolute_dest, absolute_path


class CacheRequest(BaseModel):
    """Build the ``.gvlfa`` cache of one FASTA."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["cache"] = "cache"
    fasta: BoundedPath
    dest: BoundedPath | None = None

    @property
    def format_version(self) -> str:
        return gvlfa.FORMAT_VERSION

    def destination(self) -> Path:
        return self.dest if self.dest is not None else gvlfa.default_dest(self.fasta)

    def source_files(self) -> dict[str, Path]:
        return {"fasta": self.fasta}

    def canonical_params(self) -> dict[str, Any]:
        return {}

    def check_inputs(self) -> list[str]:
        gvlfa.check_fasta(self.fasta)
        return []

    def absolute(self) -> CacheRequest:
        return self.model_copy(
            update={"fasta": absolute_path(self.fasta), "dest": absolute_dest(self.destination())}
        )


class CacheKind:
    name = "cache"
    request_model = CacheRequest
    marker = gvlfa.METADATA_FILE

    def ensure(
        self,
        request: CacheRequest,
        owner: Owner,
        *,
        force: bool,
        expected: dict[str, Fingerprint] | None,
        root: Path | None,
        progress: Progress,
    ) -> Built:
        result = gvlfa.ensure_cache(
            request.fasta,
            request.destination(),
            owner=owner,
            force=force,
            expected=expected.get("fasta") if expected is not None else None,
            root=root,
            progress=progress,
            lock_timeout=owner.fence.lock_wait_s if owner.fence else gvlfa.LOCK_TIMEOUT_S,
        )
        return Built(
            action=result.action,
            size_bytes=dir_size(result.dest),
            checksum=result.metadata.sequence_checksum,
        )

    def classify(self, request: CacheRequest, *, deep: bool = False) -> Classification:
        dest = request.destination()
        found = gvlfa.classify(dest, deep=deep)
        if found.state is State.FRESH and not fingerprint(request.fasta).matches(
            gvlfa.read_metadata(dest).fingerprint
        ):
            # Fresh for its own source, but that is another FASTA than this request's.
            return Classification(State.STALE, f"{dest} holds the cache of another FASTA")
        return found

    def fence_of(self, dest: Path) -> FenceToken | None:
        try:
            return FenceToken.parse(gvlfa.read_metadata(dest).farm_fence)
        except (OSError, ValueError):
            return None

    def recorded_request(self, dest: Path) -> tuple[CacheRequest, dict[str, Fingerprint]] | None:
        if not (dest.name.endswith(gvlfa.SUFFIX) or (dest / gvlfa.DATA_FILE).exists()):
            return None
        try:
            meta = gvlfa.read_metadata(dest)
        except (OSError, ValueError):
            return None
        source = gvlfa.resolve_source(dest, meta) or Path(meta.source.absolute_path)
        request = CacheRequest(fasta=source, dest=dest).absolute()
        return request, {"fasta": meta.fingerprint}

    def checksum(self, dest: Path) -> str | None:
        return gvlfa.read_metadata(dest).sequence_checksum


CACHE = CacheKind()
