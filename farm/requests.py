"""Build requests, their validation at submission, and their idempotency keys.

The key is the SHA-256 of a canonical JSON document (sorted keys, no spaces) of:

- ``key_schema``: the version of this recipe, so a change to it never aliases old keys;
- ``kind`` and ``format_version``: a cache and a dataset, or two formats, never share a key;
- ``sources``: for every source file, by role (``fasta``, ``variants``, ``index``, ``regions``
  ...), its fingerprint's digest and size. Contents, not paths: the same bytes under another
  path are the same input, and a changed source gives a new key;
- ``params``: the build parameters in canonical form (defaults filled in, order fixed);
- ``dest``: the absolute, symlink-resolved destination, because two destinations are two
  artifacts even from the same inputs.

Nothing machine-specific enters (no host, pid, time or mtime), so the same request gives the
same key on every machine that sees the same files at the same paths.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from farm.artifacts import dataset, gvlfa
from farm.artifacts.dataset.regions import detect_strand_column
from farm.confine import containing_root
from farm.errors import DestinationError
from farm.fingerprint import Fingerprint, fingerprint
from farm.limits import (
    MAX_DEST_NAME_BYTES,
    MAX_JITTER,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    MAX_SAMPLE_NAME,
    MAX_SAMPLES,
)

KEY_SCHEMA = 1


def _bounded(path: Path) -> Path:
    """A path the filesystem can take: no NUL byte, no component over NAME_MAX, not over
    PATH_MAX (checked before anything touches the filesystem)."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        shown = raw.decode("utf-8", "backslashreplace")[:200]
        raise ValueError(
            f"the path {shown} is not valid UTF-8, and the farm records paths as JSON; "
            "rename the file"
        ) from None
    if b"\0" in raw:
        raise ValueError(f"the path {str(path)[:200]!r} holds a NUL byte; give a real file name")
    if len(raw) > MAX_PATH_BYTES:
        raise ValueError(
            f"the path {str(path)[:100]!r}... is {len(raw)} bytes long, over the "
            f"{MAX_PATH_BYTES}-byte limit; use a shorter path"
        )
    for part in path.parts:
        if len(os.fsencode(part)) > MAX_NAME_BYTES:
            raise ValueError(
                f"the name {part[:60]!r}... in {str(path)[:100]!r} is over {MAX_NAME_BYTES} "
                "bytes, more than a filesystem takes; use a shorter name"
            )
    return path


def _sample_names(samples: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if samples is None:
        return None
    if not samples:
        raise ValueError("samples names no sample; name at least one, or leave it out for all")
    if len(samples) > MAX_SAMPLES:
        raise ValueError(f"{len(samples):,} samples is over the limit of {MAX_SAMPLES:,}")
    seen: set[str] = set()
    for name in samples:
        if not name or len(name) > MAX_SAMPLE_NAME or not name.isprintable():
            raise ValueError(
                f"sample name {name[:60]!r} is empty, over {MAX_SAMPLE_NAME} characters or "
                "holds control characters; name the samples as the variant file does"
            )
        if name in seen:
            raise ValueError(f"sample {name!r} is listed twice; list each sample once")
        seen.add(name)
    return samples


BoundedPath = Annotated[Path, AfterValidator(_bounded)]
SampleNames = Annotated[tuple[str, ...] | None, AfterValidator(_sample_names)]


def describe(error: ValidationError) -> str:
    """A request's first validation error as a clause: which field, and what is wrong."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


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

    def check_inputs(self) -> None:
        gvlfa.check_fasta(self.fasta)

    def absolute(self) -> CacheRequest:
        return self.model_copy(
            update={"fasta": _absolute(self.fasta), "dest": _absolute(self.destination())}
        )


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
        regions = _absolute(self.regions)
        strand = self.strand_column
        return self.model_copy(
            update={
                "variants": _absolute(self.variants),
                "regions": regions,
                "dest": _absolute(self.dest),
                "strand_column": strand if strand is not None else detect_strand_column(regions),
            }
        )


BuildRequest = Annotated[CacheRequest | DatasetRequest, Field(discriminator="kind")]
_REQUEST = TypeAdapter(BuildRequest)


def parse_request(data: dict[str, Any] | str | bytes) -> BuildRequest:
    """Decode a request from JSON text or a decoded JSON object."""
    if isinstance(data, str | bytes):
        return _REQUEST.validate_json(data)
    return _REQUEST.validate_python(data)


def _absolute(path: Path) -> Path:
    """Absolute and symlink-free, without requiring the path to exist yet."""
    return Path(os.path.realpath(os.path.expanduser(path)))


def prepare(request: BuildRequest, roots: list[Path]) -> BuildRequest:
    """Validate a request at submission and return it with absolute paths.

    Raises :class:`InputError` or :class:`DestinationError` with one sentence; nothing is
    queued for a request that fails here.
    """
    request = request.absolute()
    request.check_inputs()
    check_destination(request, roots)
    return request


def check_destination(request: BuildRequest, roots: list[Path]) -> None:
    """Refuse a destination outside the allowed roots (clients and workers both ask).

    The destination must be canonical as well: absolute, with no ``..`` and no symlink on its
    way. A client makes it so (:func:`prepare`); a message that is not, forged or sent while a
    directory was swapped for a link, is refused rather than resolved somewhere else. The
    build itself never follows a link below the root either (:mod:`farm.confine`).
    """
    dest = request.destination()
    if not dest.is_absolute() or str(dest) != os.path.realpath(dest):
        raise DestinationError(
            f"Destination {dest} is not a plain absolute path (it holds '..' or a symlink, or "
            "one was swapped in after it was submitted); submit it again with a path inside "
            "the allowed roots that has neither."
        )
    if len(os.fsencode(dest.name)) > MAX_DEST_NAME_BYTES:
        raise DestinationError(
            f"The destination name {dest.name[:60]!r}... is over {MAX_DEST_NAME_BYTES} bytes (the "
            "farm adds a staging suffix to it); choose a shorter --dest."
        )
    if containing_root(dest, roots) is None:
        allowed = os.pathsep.join(str(r) for r in roots)
        raise DestinationError(
            f"Destination {dest} is outside the allowed roots ({allowed}); choose a destination "
            "below one of them or add its root to FARM_ALLOWED_ROOTS."
        )


def fingerprints(request: BuildRequest) -> dict[str, Fingerprint]:
    return {role: fingerprint(path) for role, path in request.source_files().items()}


def derive_key(request: BuildRequest, sources: dict[str, Fingerprint]) -> str:
    """The idempotency key of an absolute request whose sources have these fingerprints."""
    document = {
        "key_schema": KEY_SCHEMA,
        "kind": request.kind,
        "format_version": request.format_version,
        "sources": {
            role: {"digest": fp.digest, "size_bytes": fp.size_bytes}
            for role, fp in sorted(sources.items())
        },
        "params": request.canonical_params(),
        "dest": str(request.destination()),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def request_key(request: BuildRequest) -> tuple[str, dict[str, Fingerprint]]:
    sources = fingerprints(request)
    return derive_key(request, sources), sources
