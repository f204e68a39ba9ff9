"""The kind seam: a new kind is one module and a registration, and the service, the registry
and maintenance handle it without knowing it (on a real Redis; the toy kind copies a file)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from farm import kinds, maintenance, service
from farm.artifacts.base import Classification, State
from farm.config import Settings
from farm.fingerprint import Fingerprint, checksum, fingerprint
from farm.kinds import FenceToken
from farm.kinds.base import Built, dir_size
from farm.progress import Progress
from farm.publish import Outcome, Owner, build_and_publish
from farm.records import Status
from farm.registry import Registry
from farm.requests import BoundedPath, absolute_path, prepare, request_key

RECORD = "copy.json"


class CopyRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["copy"] = "copy"
    source: BoundedPath
    dest: BoundedPath

    @property
    def format_version(self) -> str:
        return "1.0.0"

    def destination(self) -> Path:
        return self.dest

    def source_files(self) -> dict[str, Path]:
        return {"source": self.source}

    def canonical_params(self) -> dict[str, Any]:
        return {}

    def check_inputs(self) -> None:
        if not self.source.is_file():
            raise FileNotFoundError(self.source)

    def absolute(self) -> CopyRequest:
        return self.model_copy(
            update={"source": absolute_path(self.source), "dest": absolute_path(self.dest)}
        )


class CopyKind:
    name = "copy"
    request_model = CopyRequest
    marker = RECORD

    def ensure(
        self,
        request: CopyRequest,
        owner: Owner,
        *,
        force: bool,
        expected: dict[str, Fingerprint] | None,
        root: Path | None,
        progress: Progress,
    ) -> Built:
        dest = request.destination()
        if not force and self.classify(request).state is State.FRESH:
            return Built("reused", dir_size(dest), checksum(dest / "copy"))

        def build(staging: Path) -> None:
            shutil.copyfile(request.source, staging / "copy")
            record = {"source": str(request.source), "fp": fingerprint(request.source).model_dump()}
            (staging / RECORD).write_text(json.dumps(record))

        outcome, _ = build_and_publish(dest, build, owner=owner, replace=dest.exists(), root=root)
        action = "rebuilt" if outcome is Outcome.REPLACED else "built"
        return Built(action, dir_size(dest), checksum(dest / "copy"))

    def classify(self, request: CopyRequest, *, deep: bool = False) -> Classification:
        dest = request.destination()
        if not (dest / RECORD).is_file():
            return Classification(State.MISSING)
        if deep and (dest / "copy").read_bytes() != request.source.read_bytes():
            return Classification(State.CORRUPT, f"{dest}/copy differs from its source")
        return Classification(State.FRESH)

    def recorded_request(self, dest: Path) -> tuple[CopyRequest, dict[str, Fingerprint]] | None:
        if not (dest / RECORD).is_file():
            return None
        record = json.loads((dest / RECORD).read_text())
        request = CopyRequest(source=Path(record["source"]), dest=dest).absolute()
        return request, {"source": Fingerprint.model_validate(record["fp"])}

    def checksum(self, dest: Path) -> str | None:
        return checksum(dest / "copy")

    def fence_of(self, dest: Path) -> FenceToken | None:
        return None  # built by its own publish, outside the fenced workers' tests


@pytest.fixture
def copy_kind() -> Iterator[None]:
    before = list(kinds.KINDS.values())
    kinds.register(CopyKind())
    yield
    kinds.KINDS.clear()
    for kind in before:
        kinds.register(kind)


def test_a_registered_kind_is_parsed_built_recorded_verified_and_reindexed(
    copy_kind, tmp_path: Path, registry: Registry, farm_settings: Settings
) -> None:
    source = tmp_path / "notes.txt"
    source.write_text("a source of the toy kind\n")
    wire = CopyRequest(source=source, dest=tmp_path / "out" / "notes.copy").model_dump(mode="json")
    request = prepare(kinds.parse_request(wire), farm_settings.roots)
    assert isinstance(request, CopyRequest)
    key, sources = request_key(request)

    registry.claim_many([service.queued_record(request, key, sources)], send_grace_s=60)
    record = service.ensure(key, service.Context(registry, farm_settings, "w"))
    assert record.status is Status.VALID, record.error
    assert record.kind == "copy" and record.action == "built"
    assert (request.destination() / "copy").read_text() == source.read_text()
    assert record.sources == sources

    (request.destination() / "copy").write_text("a source of the toy kinD\n")
    [verdict] = maintenance.verify(registry, [key])
    assert verdict.status is Status.INVALID and "differs from its source" in verdict.error

    registry.forget([key])
    assert registry.get(key) is None
    [found] = maintenance.reindex(registry, tmp_path / "out", allowed=[tmp_path])
    assert found.key == key and found.kind == "copy"


def test_a_kind_is_unknown_until_registered() -> None:
    wire = {"kind": "copy", "source": "notes.txt", "dest": "notes.copy"}
    with pytest.raises(ValueError, match="copy"):
        kinds.parse_request(wire)
    assert "copy" not in kinds.KINDS
