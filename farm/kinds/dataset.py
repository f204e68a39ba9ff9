"""The GenVarLoader dataset (what ``gvl.write`` writes) as an artifact kind."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from farm.artifacts import dataset
from farm.artifacts.base import Classification, State
from farm.artifacts.dataset.params import check_sources
from farm.artifacts.dataset.regions import detect_strand_column
from farm.artifacts.dataset.validate import read_record
from farm.artifacts.dataset.writer import FARM_RECORD
from farm.errors import ArtifactInvalidError, FarmError, InputError, TooNewError
from farm.fingerprint import Fingerprint, checksum
from farm.kinds.base import Built, FenceToken, dir_size
from farm.limits import MAX_JITTER, MAX_TRACKS
from farm.progress import Progress
from farm.publish import Outcome, Owner
from farm.requests import BoundedPath, SampleNames, absolute_dest, absolute_path, sample_names


def _within_limits(tracks: dict[str, Any] | None) -> dict[str, Any] | None:
    """A request's tracks within the farm's limits (their shape: :func:`check_sources`)."""
    if tracks is None:
        return None
    if len(tracks) > MAX_TRACKS:
        raise ValueError(f"{len(tracks):,} tracks is over the limit of {MAX_TRACKS:,}")
    for source in tracks.values():
        if isinstance(source, dict) and source:
            sample_names(tuple(source))
    return tracks


class DatasetRequest(BaseModel):
    """Build a GenVarLoader dataset, as ``gvl.write`` does, from a BED-like file of regions
    and variants (VCF/BCF, PGEN or a SparseVar .svar), per-sample tracks, or both, with optional
    annotation tracks (bigWig or BED-like table)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["dataset"] = "dataset"
    variants: BoundedPath | None = None
    regions: BoundedPath
    dest: BoundedPath
    samples: SampleNames = None
    max_jitter: int = Field(0, ge=0, le=MAX_JITTER)
    extend_to_length: bool = True
    # None: found from the BED when the request is prepared (see detect_strand_column).
    strand_column: int | None = Field(None, ge=0, le=1000)
    # track name -> sample -> bigWig or table, or -> one long-form table (sample_id column);
    # annotation track name -> bigWig or BED-like table.
    tracks: Annotated[
        dict[str, dict[str, BoundedPath] | BoundedPath] | None, AfterValidator(_within_limits)
    ] = None
    annot_tracks: Annotated[dict[str, BoundedPath] | None, AfterValidator(_within_limits)] = None

    @model_validator(mode="after")
    def _sources(self) -> DatasetRequest:
        check_sources(self.variants, self.tracks, self.annot_tracks)
        return self

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
            tracks=self.tracks,
            annot_tracks=self.annot_tracks,
        )

    def destination(self) -> Path:
        return self.dest

    def source_files(self) -> dict[str, Path]:
        """By role: the variant file, its index or .pvar/.psam, the BED, the tracks' files."""
        return self.params().source_roles()

    def canonical_params(self) -> dict[str, Any]:
        """Parameters only: paths enter the key through their contents (and the tracks' names
        and samples through their sources' roles), not their names."""
        canonical = self.params().canonical()
        paths = ("variants", "regions", "tracks", "annot_tracks")
        return {k: v for k, v in canonical.items() if k not in paths}

    def check_inputs(self) -> list[str]:
        return self.params().check()

    def absolute(self) -> DatasetRequest:
        """Absolute paths, and the strand column found from the BED when none was given, so
        the key says which column was used."""
        regions = absolute_path(self.regions)
        strand = self.strand_column
        tracks = self.tracks and {
            name: (
                absolute_path(source)
                if isinstance(source, Path)
                else {sample: absolute_path(p) for sample, p in source.items()}
            )
            for name, source in self.tracks.items()
        }
        annot = self.annot_tracks and {n: absolute_path(p) for n, p in self.annot_tracks.items()}
        return self.model_copy(
            update={
                "variants": absolute_path(self.variants) if self.variants is not None else None,
                "regions": regions,
                "dest": absolute_dest(self.dest),
                "strand_column": strand if strand is not None else detect_strand_column(regions),
                "tracks": tracks,
                "annot_tracks": annot,
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

    def fence_of(self, dest: Path) -> FenceToken | None:
        try:
            record = read_record(dest)
        except (OSError, ArtifactInvalidError):
            return None
        return FenceToken.parse(record.get("fence")) if record is not None else None

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

    def checksum(self, dest: Path) -> str | None:
        return checksum(dest / FARM_RECORD)


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
