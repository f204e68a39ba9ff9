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
import warnings
from pathlib import Path
from typing import Annotated, Any, Protocol, Self

from pydantic import AfterValidator, ValidationError

from farm.confine import containing_root
from farm.errors import DestinationError, InputWarning
from farm.fingerprint import Fingerprint, fingerprint
from farm.limits import (
    MAX_DEST_NAME_BYTES,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    MAX_SAMPLE_NAME,
    MAX_SAMPLES,
)
from farm.versions import is_farm_link

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


def sample_names(samples: tuple[str, ...] | None) -> tuple[str, ...] | None:
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
SampleNames = Annotated[tuple[str, ...] | None, AfterValidator(sample_names)]


def describe(error: ValidationError) -> str:
    """A request's first validation error as a clause: which field, and what is wrong."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


class BuildRequest(Protocol):
    """What the farm needs of any kind's request (each kind's model in :mod:`farm.kinds`)."""

    @property
    def kind(self) -> str: ...

    @property
    def format_version(self) -> str: ...

    def destination(self) -> Path: ...

    def source_files(self) -> dict[str, Path]:
        """The files whose contents decide the artifact, by role: they key it."""
        ...

    def canonical_params(self) -> dict[str, Any]:
        """The build parameters in canonical form (no paths: those enter by content)."""
        ...

    def check_inputs(self) -> list[str] | None:
        """Raise :class:`InputError` with one sentence for inputs that cannot build; return a
        sentence for each thing that builds but not as the submitter may expect."""
        ...

    def absolute(self) -> Self:
        """The same request with absolute, symlink-free paths and defaults resolved."""
        ...

    def model_dump(self, *, mode: str = "python") -> dict[str, Any]: ...


def absolute_path(path: Path) -> Path:
    """Absolute and symlink-free, without requiring the path to exist yet."""
    return Path(os.path.realpath(os.path.expanduser(path)))


def absolute_dest(path: Path) -> Path:
    """A destination as :func:`absolute_path` makes it, but for the farm's own link at its
    end (a destination published as versions behind a link, :mod:`farm.versions`): that
    stays the link's path, which names the artifact whatever version it shows."""
    here = Path(os.path.abspath(os.path.expanduser(path)))
    kept = Path(os.path.realpath(here.parent)) / here.name
    return kept if is_farm_link(kept) else Path(os.path.realpath(here))


def prepare(request: BuildRequest, roots: list[Path]) -> BuildRequest:
    """Validate a request at submission and return it with absolute paths.

    Raises :class:`InputError` or :class:`DestinationError` with one sentence; nothing is
    queued for a request that fails here. What builds, but perhaps not as the submitter
    expects, is said to the submitter here, once, as an :class:`InputWarning` per sentence
    (the CLI prints each as one line on stderr).
    """
    request = request.absolute()
    said = request.check_inputs() or []
    check_destination(request, roots)
    for sentence in said:
        warnings.warn(sentence, InputWarning, stacklevel=2)
    return request


def check_destination(request: BuildRequest, roots: list[Path]) -> None:
    """Refuse a destination outside the allowed roots (clients and workers both ask).

    The destination must be canonical as well: absolute, with no ``..`` and no symlink on its
    way. A client makes it so (:func:`prepare`); a message that is not, forged or sent while a
    directory was swapped for a link, is refused rather than resolved somewhere else. The
    build itself never follows a link below the root either (:mod:`farm.confine`).
    """
    dest = request.destination()
    if not dest.is_absolute() or dest != absolute_dest(dest):
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
