"""The GenVarLoader dataset (what ``gvl.write`` writes) as an artifact kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from farm.artifacts import dataset
from farm.artifacts.base import Classification, State
from farm.artifacts.dataset.regions import detect_strand_column
from farm.artifacts.dataset.validate import read_record
from farm.artifacts.dataset.writer import FARM_RECORD
from farm.errors import ArtifactInvalidError, FarmError, InputError, TooNewError
from farm.fingerprint import Fingerprint, checksum
from farm.kinds.base import Built, dir_size
from farm.limits import MAX_JITTER
from farm.progress import Progress
from farm.publish import Outcome, Owner
from farm.requests import BoundedPath, SampleNames, absolute_path


class DatasetRequest(BaseModel):
    """Build a GenVarLoader dataset from a variant file (VCF/BCF or PGEN) and a BED."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["dataset"] = "dataset"
    variants: BoundedPath
    regions: BoundedPath
    dest: BoundedPath
    samples: SampleNames = None
    max_jitter: int = Field(0, ge=0, le=MAX_JITTER)
    extend_to_length: bool = True
    # None: found from the BED when the request is prepared (see detect_strand_column).
    strand_column: int | None = Field(None, ge=0, le=1000)

    @property
    def format_version(self) -> str:
        return dataset.FORMAT_VERSION

    def params(self) -> dataset.DatasetParams:
        return dataset.DatasetParams(
            variants=self.variants,
            regions=self.regions,
            samples=self.samples,
            max_jitter=self.max_jitter,
            extend_to_length=self.extend_to_length,
            strand_column=6 if self.strand_column is None else self.strand_column,
        )

    def destination(self) -> Path:
        return self.dest

    def source_files(self) -> dict[str, Path]:
        """By role: the variant file, its index or .pvar/.psam, and the BED."""
        return self.params().source_roles()

    def canonical_params(self) -> dict[str, Any]:
        """Parameters only: paths enter the key through their contents, not their names."""
        canonical = self.params().canonical()
        return {k: v for k, v in canonical.items() if k not in ("variants", "regions")}

    def check_inputs(self) -> None:
        self.params().check()

    def absolute(self) -> DatasetRequest:
        """Absolute paths, and the strand column found from the BED when none was given, so
        the key says which column was used."""
        regions = absolute_path(self.regions)
        strand = self.strand_column
        return self.model_copy(
            update={
                "variants": absolute_path(self.variants),
                "regions": regions,
                "dest": absolute_path(self.dest),
                "strand_column": strand if strand is not None else detect_strand_column(regions),
            }
        )


class DatasetKind:
    name = "dataset"
    request_model = DatasetRequest
    marker = FARM_RECORD

    def ensure(
        self,
        request: DatasetRequest,
        owner: Owner,
        *,
        force: bool,
        expected: dict[str, Fingerprint] | None,
        root: Path | None,
        progress: Progress,
    ) -> Built:
        dest = request.destination()
        found = self.classify(request)
        if found.state is State.FRESH and not force and _built_from(dest, expected):
            return _built("reused", dest)
        if found.state is State.TOO_NEW:
            raise TooNewError(f"{found.reason}; upgrade gvl-farm, or remove {dest} to rebuild it.")
        if found.state is State.FOREIGN:
            raise InputError(f"{found.reason}; choose another destination for the dataset.")
        outcome, _ = dataset.build_dataset(
            request.params(),
            dest,
            owner=owner,
            replace=found.state is not State.MISSING,
            expected=expected,
            root=root,
            progress=progress,
        )
        if outcome is Outcome.LOST and self.classify(request).state is not State.FRESH:
            raise ArtifactInvalidError(
                f"Another builder published {dest} first and it is not a fresh dataset of this "
                "request; build again."
            )
        action = {Outcome.LOST: "reused", Outcome.REPLACED: "rebuilt"}.get(outcome, "built")
        return _built(action, dest)

    def classify(self, request: DatasetRequest, *, deep: bool = False) -> Classification:
        dest = request.destination()
        found = dataset.classify_dataset(dest)
        if found.state is State.FRESH:
            record = read_record(dest)
            if record is not None and record.get("request") != request.params().canonical():
                # Fresh sources, other parameters (samples, jitter...): not this request's.
                return Classification(State.STALE, f"{dest} was built from another request")
        if deep and found.state.usable:
            try:
                dataset.validate_dataset(dest, deep=True)
            except ArtifactInvalidError as e:
                return Classification(State.CORRUPT, str(e))
        return found

    def recorded_request(self, dest: Path) -> tuple[DatasetRequest, dict[str, Fingerprint]] | None:
        try:
            record = read_record(dest)
        except ArtifactInvalidError:
            return None
        if record is None or record.get("kind") != self.name:
            return None
        fields = dict(record["request"])
        if fields.get("samples") is not None:
            fields["samples"] = tuple(fields["samples"])
        request = DatasetRequest(dest=dest, **fields).absolute()
        by_path = {
            str(Path(path).resolve()): Fingerprint.model_validate(fp)
            for path, fp in record["sources"].items()
        }
        try:
            roles = {role: str(Path(p).resolve()) for role, p in request.source_files().items()}
        except FarmError:
            return None
        if set(roles.values()) != set(by_path):
            return None
        return request, {role: by_path[path] for role, path in roles.items()}


def _built_from(dest: Path, expected: dict[str, Fingerprint] | None) -> bool:
    """Whether the dataset at ``dest`` was built from the expected source contents (a fresh
    dataset of files that changed since the request was keyed is not this request's)."""
    if expected is None:
        return True
    record = read_record(dest) or {}
    recorded = {(fp["digest"], fp["size_bytes"]) for fp in (record.get("sources") or {}).values()}
    return recorded == {(fp.digest, fp.size_bytes) for fp in expected.values()}


def _built(action: str, dest: Path) -> Built:
    return Built(action, dir_size(dest), checksum(dest / FARM_RECORD))


DATASET = DatasetKind()
