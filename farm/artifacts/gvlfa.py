"""The ``.gvlfa`` FASTA cache: GenVarLoader's format 1.0.0, built, classified and ensured.

A cache is ``metadata.json`` plus ``sequence.bin`` (every contig upper-cased, concatenated in
file order). The farm writes the same bytes and the same metadata as GenVarLoader 0.43.1, plus
two extra keys that GenVarLoader ignores: ``farm_version`` (who built it) and
``sequence_checksum`` (a full content checksum, chunked CRC-32 so builder threads can compute
it, that lets a deep verify catch a same-size corruption the size check cannot see).

Building takes one of two paths: a FASTA with fixed-width lines (a plain one whose ``.fai``
is trustworthy or whose layout a scan infers, or a BGZF one whose ``.fai`` is trustworthy) is
copied in parallel fixed-width chunks (``copy_fixed_width``; BGZF blocks are inflated by the
chunk that needs them, on every core); everything else, and any file that departs from its
index, is streamed (``stream_contigs``). Both write the same bytes (tested).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from isal import isal_zlib
from pydantic import BaseModel, ConfigDict, ValidationError

import farm
from farm.artifacts.base import Classification, State
from farm.artifacts.fasta import (
    NotFixedWidth,
    copy_fixed_width,
    infer_layout,
    is_gzip,
    read_fai,
    stream_contigs,
)
from farm.confine import ConfinedParent, best_effort_lock, resolve_root
from farm.errors import ArtifactInvalidError, InputError, SourceChangedError, TooNewError
from farm.fingerprint import (
    CHECK_CHUNK,
    ChunkedCrc,
    Fingerprint,
    SourceStamp,
    chunk_crc_digest,
    content_matches,
    fingerprint,
)
from farm.progress import NO_PROGRESS, Progress
from farm.publish import Outcome, Owner, SkipPublish, build_and_publish

FORMAT_VERSION = "1.0.0"
SUPPORTED_MAJOR = 1
# GenVarLoader validates this field as strict semver and gates nothing on it. We write the
# release whose format we reproduce, so any reader that reasons about it sees exactly what
# GenVarLoader 0.43.1 would have written; who really built the cache is in ``farm_version``.
GENVARLOADER_VERSION = "0.43.1"
SUFFIX = ".gvlfa"
LEGACY_SUFFIX = ".gvl"
DATA_FILE = "sequence.bin"
METADATA_FILE = "metadata.json"
LOCK_TIMEOUT_S = 600.0


class SourceHints(BaseModel):
    model_config = ConfigDict(frozen=True)

    filename: str
    absolute_path: str
    relative_path: str


class CacheMetadata(BaseModel):
    """``metadata.json``; field order is the byte order GenVarLoader writes."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format_version: str
    genvarloader_version: str
    contigs: dict[str, int]
    source: SourceHints
    fingerprint: Fingerprint
    farm_version: str | None = None
    sequence_checksum: str | None = None
    farm_fence: dict[str, Any] | None = None  # the grant that built it (farm.publish.Fence)

    @property
    def total_length(self) -> int:
        return sum(self.contigs.values())

    def format_major(self) -> int:
        try:
            return int(self.format_version.split(".", 1)[0])
        except ValueError:
            return -1


def default_dest(fasta: Path) -> Path:
    return fasta.with_name(fasta.name + SUFFIX)


def legacy_path(fasta: Path) -> Path:
    return fasta.with_name(fasta.name + LEGACY_SUFFIX)


def source_hints(fasta: Path, dest: Path) -> SourceHints:
    source = fasta.resolve()
    return SourceHints(
        filename=source.name,
        absolute_path=str(source),
        relative_path=os.path.relpath(source, dest.resolve()),
    )


def read_metadata(dest: Path) -> CacheMetadata:
    return CacheMetadata.model_validate_json((dest / METADATA_FILE).read_bytes())


def resolve_source(dest: Path, meta: CacheMetadata) -> Path | None:
    """GenVarLoader's order: sibling by name, then relative to the cache, then absolute."""
    for candidate in (
        dest.parent / meta.source.filename,
        dest / meta.source.relative_path,
        Path(meta.source.absolute_path),
    ):
        if candidate.exists():
            return candidate.resolve()
    return None


# --- building -------------------------------------------------------------------------------


def _build_threads() -> int:
    """The most threads a build may use: the cores this process may run on. How many of them
    pay is measured as the build goes (:mod:`farm.artifacts.adaptive`): with a cold file on
    one disk, or cores taken by others, fewer threads can be faster."""
    return max(1, len(os.sched_getaffinity(0)))


def _write_sequence(fasta: Path, fd: int, progress: Progress) -> tuple[dict[str, int], str]:
    """Write ``sequence.bin`` to ``fd``; return the contigs and the content checksum.

    A plain FASTA takes the parallel fixed-width path, with the layout of its ``.fai`` when
    that is trustworthy, else the layout a quick scan infers; a bgzipped one takes it when
    its ``.fai`` is trustworthy. Any file that departs from that layout, a plain-gzip one and
    a bgzipped one with no index are streamed instead.
    """
    records = read_fai(fasta) if is_gzip(fasta) else (read_fai(fasta) or infer_layout(fasta))
    if records is not None:
        total = sum(r.length for r in records)
        crcs = [0] * -(-total // CHECK_CHUNK)
        progress.start(total, "bp")

        def record_crc(k: int, chunk: memoryview) -> None:
            crcs[k] = isal_zlib.crc32(chunk)  # zlib's CRC-32, 6x faster (SIMD)
            progress.advance(len(chunk))

        try:
            contigs = copy_fixed_width(
                fasta,
                records,
                fd,
                chunk_size=CHECK_CHUNK,
                on_chunk=record_crc,
                threads=_build_threads(),
            )
            return contigs, chunk_crc_digest(crcs)
        except NotFixedWidth:
            os.ftruncate(fd, 0)  # the streaming reader is the reference: start over
            os.lseek(fd, 0, os.SEEK_SET)
    running = ChunkedCrc()
    progress.start(0, "bp")

    def write(block: bytes) -> None:
        running.update(block)
        progress.advance(len(block))
        view = memoryview(block)
        while view:
            view = view[os.write(fd, view) :]

    return stream_contigs(fasta, write), running.hexdigest()


def write_cache(
    fasta: Path,
    out_dir: Path,
    dest: Path,
    *,
    expected: Fingerprint | None = None,
    progress: Progress = NO_PROGRESS,
    fence_token: dict[str, Any] | None = None,
) -> CacheMetadata:
    """Write ``sequence.bin`` and ``metadata.json`` for ``fasta`` into ``out_dir``.

    ``dest`` is where the cache will be published; the source hints are relative to it.
    The source is stamped before reading and checked after (:class:`SourceStamp`), so a
    source that changes under the build fails it instead of publishing a mix of old and new;
    one that is not ``expected`` fails it before anything is written.
    """
    stamp = _stamp(fasta, expected)
    fd = os.open(out_dir / DATA_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        contigs, digest = _write_sequence(fasta, fd, progress)
    finally:
        os.close(fd)
    _check_unchanged(stamp)
    if not any(contigs.values()):
        raise InputError(
            f"FASTA file {fasta} holds no sequence (only headers, or nothing a FASTA reader "
            "takes); point at a FASTA with at least one non-empty contig."
        )
    return _write_metadata(
        out_dir, fasta, dest, contigs, stamp.fingerprint, digest, fence_token=fence_token
    )


def _write_metadata(
    out_dir: Path,
    fasta: Path,
    dest: Path,
    contigs: dict[str, int],
    source_fingerprint: Fingerprint,
    sequence_checksum: str,
    *,
    fence_token: dict[str, Any] | None = None,
) -> CacheMetadata:
    meta = CacheMetadata(
        format_version=FORMAT_VERSION,
        genvarloader_version=GENVARLOADER_VERSION,
        contigs=contigs,
        source=source_hints(fasta, dest),
        fingerprint=source_fingerprint,
        farm_version=farm.__version__,
        sequence_checksum=sequence_checksum,
        farm_fence=fence_token,
    )
    (out_dir / METADATA_FILE).write_text(meta.model_dump_json())
    return meta


def _stamp(fasta: Path, expected: Fingerprint | None) -> SourceStamp:
    """Stamp the source before it is read; refuse it unless it is the content asked for.

    ``expected`` is the fingerprint the request was keyed with: a file that changed between
    the keying and the build would otherwise be built, and recorded, under the wrong key.
    """
    stamp = SourceStamp.take(fasta)
    if expected is not None and not stamp.fingerprint.matches(expected):
        raise SourceChangedError(
            f"FASTA file {fasta} changed after its cache was requested; nothing was "
            "published, submit the build again to build from the current file."
        )
    return stamp


def _check_unchanged(stamp: SourceStamp) -> None:
    if not stamp.unchanged():
        raise SourceChangedError(
            f"FASTA file {stamp.path} changed while its cache was being built; "
            "nothing was published, submit the build again once the file is final."
        )


# --- classifying ----------------------------------------------------------------------------


def classify(dest: Path, *, deep: bool = False) -> Classification:
    """What is at ``dest``, in GenVarLoader's terms plus ``corrupt``, ``too_new``, ``foreign``.

    ``deep`` re-reads ``sequence.bin`` against its recorded checksum (caches GenVarLoader
    built have none; their content cannot be verified beyond the size).
    """
    if not dest.exists():
        return Classification(State.MISSING)
    if not dest.is_dir():
        return Classification(State.FOREIGN, f"{dest} is a file, not a cache directory")
    extra = sorted(p.name for p in dest.iterdir() if p.name not in (METADATA_FILE, DATA_FILE))
    if extra:
        return Classification(
            State.FOREIGN, f"{dest} holds files that are not part of a cache ({', '.join(extra)})"
        )
    try:
        meta = read_metadata(dest)
    except FileNotFoundError:
        return Classification(State.CORRUPT, f"{dest / METADATA_FILE} is missing")
    except (ValidationError, ValueError, OSError) as e:
        return Classification(State.CORRUPT, f"{dest / METADATA_FILE} is unreadable ({e})")
    if meta.format_major() > SUPPORTED_MAJOR:
        return Classification(
            State.TOO_NEW,
            f"{dest} has format version {meta.format_version}, newer than this farm "
            f"supports ({FORMAT_VERSION})",
        )
    data = dest / DATA_FILE
    try:
        size = data.stat().st_size
    except FileNotFoundError:
        return Classification(State.CORRUPT, f"{data} is missing")
    if size != meta.total_length:
        return Classification(
            State.CORRUPT, f"{data} has {size} bytes, its contigs add up to {meta.total_length}"
        )
    if deep and meta.sequence_checksum and content_matches(data, meta.sequence_checksum) is False:
        return Classification(State.CORRUPT, f"{data} does not match its recorded checksum")
    source = resolve_source(dest, meta)
    if source is None:
        return Classification(State.UNVALIDATED, f"the source {meta.source.filename} is not found")
    if not fingerprint(source).matches(meta.fingerprint):
        return Classification(State.STALE, f"{source} changed since the cache was built")
    return Classification(State.FRESH)


def verify(dest: Path) -> None:
    """Raise :class:`ArtifactInvalidError` unless ``dest`` is a usable cache, checked deeply."""
    found = classify(dest, deep=True)
    if found.state is State.TOO_NEW:
        raise TooNewError(f"{found.reason}; upgrade gvl-farm to use it.")
    if not found.state.usable:
        raise ArtifactInvalidError(found.reason or f"{dest} is {found.state}")


# --- ensuring -------------------------------------------------------------------------------


Action = Literal["reused", "built", "rebuilt", "migrated"]


@dataclass(frozen=True)
class EnsureResult:
    dest: Path
    action: Action
    outcome: Outcome | None  # None when nothing was published by us
    metadata: CacheMetadata


def check_fasta(fasta: Path) -> None:
    """Refuse, with one sentence, a source that cannot be a FASTA before any work starts."""
    if not fasta.exists():
        raise InputError(f"FASTA file {fasta} does not exist; check the path.")
    if not fasta.is_file():
        raise InputError(f"{fasta} is not a regular file; name a FASTA file.")
    if not os.access(fasta, os.R_OK):
        raise InputError(f"Cannot read FASTA file {fasta}: permission denied.")
    if fasta.stat().st_size == 0:
        raise InputError(f"FASTA file {fasta} is empty; point at a FASTA with at least one contig.")


def ensure_cache(
    fasta: Path,
    dest: Path | None = None,
    *,
    owner: Owner | None = None,
    lock: bool = True,
    lock_timeout: float = LOCK_TIMEOUT_S,
    expected: Fingerprint | None = None,
    force: bool = False,
    root: Path | None = None,
    progress: Progress = NO_PROGRESS,
) -> EnsureResult:
    """Make ``dest`` (default ``FASTA.gvlfa``) a fresh cache of ``fasta``, building only if needed.

    A best-effort file lock keeps concurrent callers from building the same cache twice; the
    check is repeated inside the lock. The lock is only an optimisation: when it is a no-op
    (some network filesystems) or times out, every caller builds and the first rename wins,
    which is still correct because their bytes are identical.

    ``expected``: the source fingerprint the request was keyed with. A cache is reused only if
    it was built from it, and a source that no longer has it fails the build with
    :class:`SourceChangedError` before anything is written.

    ``force``: build even when a usable cache (or a legacy one to migrate) is there. The
    shortcut trusts a shallow check (sizes and the source fingerprint), which a same-size
    corruption of ``sequence.bin`` passes; forcing is how a caller that distrusts it gets a
    cache built from the source, swapped in atomically. The action is then ``rebuilt`` (or
    ``built`` where nothing was), never ``reused`` unless a concurrent builder published first.
    A foreign or too-new destination is still refused.

    ``root``: every directory and file written lies below it, reached without following a link
    (:mod:`farm.confine`); default, the nearest existing ancestor of ``dest``.
    """
    fasta = Path(fasta)
    root, dest = resolve_root(Path(dest) if dest is not None else default_dest(fasta), root)
    owner = owner or Owner.current()
    check_fasta(fasta)

    found = _usable_or_raise(dest, fasta, expected, force=force)
    if found is not None:
        return found
    with _best_effort_lock(dest, root, enabled=lock, timeout=lock_timeout):
        found = _usable_or_raise(dest, fasta, expected, force=force)
        if found is not None:
            return found
        state = classify(dest).state
        legacy = legacy_path(fasta)
        if (
            not force
            and state is State.MISSING
            and legacy.is_file()
            and dest == default_dest(fasta)
        ):
            migrated = _migrate_legacy(fasta, legacy, dest, root, owner, expected, progress)
            if migrated is not None:
                return migrated
        replace = force or state is not State.MISSING
        return _build(fasta, dest, root, owner, expected, replace=replace, progress=progress)


def _usable_or_raise(
    dest: Path, fasta: Path, expected: Fingerprint | None, *, force: bool = False
) -> EnsureResult | None:
    """A result when ``dest`` is a fresh cache *of* ``fasta``; None when it must be built.

    Fresh alone is not enough at a custom destination: the cache could be a fresh cache of
    another FASTA (its hints resolve to that one), so the requested file's fingerprint is
    compared too, and the ``expected`` one when given. ``force``: never usable, but a
    destination that must not be overwritten is still refused.
    """
    found = classify(dest)
    if found.state is State.TOO_NEW:
        raise TooNewError(
            f"{found.reason}; upgrade gvl-farm, or remove {dest} to rebuild it in format "
            f"{FORMAT_VERSION}."
        )
    if found.state is State.FOREIGN:
        raise InputError(f"{found.reason}; choose another destination for the cache.")
    if force or found.state is not State.FRESH:
        return None
    meta = read_metadata(dest)
    if not fingerprint(fasta).matches(meta.fingerprint):
        return None
    if expected is not None and not expected.matches(meta.fingerprint):
        return None  # the build then fails on the source that is not the expected one
    return EnsureResult(dest, "reused", None, meta)


def _build(
    fasta: Path,
    dest: Path,
    root: Path,
    owner: Owner,
    expected: Fingerprint | None,
    *,
    replace: bool,
    progress: Progress,
) -> EnsureResult:
    outcome, meta = build_and_publish(
        dest,
        lambda staged: write_cache(
            fasta,
            staged,
            dest,
            expected=expected,
            progress=progress,
            fence_token=owner.fence.token() if owner.fence is not None else None,
        ),
        owner=owner,
        replace=replace,
        root=root,
    )
    if outcome is Outcome.LOST:
        # Someone published first. Their cache is of the same source, so it is ours too,
        # provided it really is fresh.
        found = _usable_or_raise(dest, fasta, expected)
        if found is None:
            raise ArtifactInvalidError(
                f"Another builder published {dest} first and it is not a fresh cache of "
                f"{fasta}; build again."
            )
        return EnsureResult(dest, "reused", Outcome.LOST, found.metadata)
    assert meta is not None
    return EnsureResult(dest, "rebuilt" if outcome is Outcome.REPLACED else "built", outcome, meta)


def _migrate_legacy(
    fasta: Path,
    legacy: Path,
    dest: Path,
    root: Path,
    owner: Owner,
    expected: Fingerprint | None,
    progress: Progress = NO_PROGRESS,
) -> EnsureResult | None:
    """Reuse the bytes of a legacy flat ``X.gvl`` when they are the source's; None to build.

    A legacy file is validated by nothing but its mtime, so its bytes are adopted only once
    they equal the source's upper-cased sequence, compared in one streaming pass over both
    (flat memory) that also yields the contigs and the checksum recorded: a corrupt legacy
    file is left alone and the cache is built fresh. The source is stamped before the legacy
    file is touched and checked after the comparison, so a source that changes meanwhile
    fails the migration rather than reading as a mismatch. Racing migrators each hard-link
    the legacy bytes (nobody moves them out from under another), the first rename wins, and
    the legacy file is removed only after a publish.
    """
    stamp = _stamp(fasta, expected)
    lengths = _fai_lengths(fasta)
    try:
        size = legacy.stat().st_size
    except FileNotFoundError:
        return None
    if lengths is not None and size != sum(lengths.values()):
        return None  # stale or truncated legacy bytes: leave them alone, build fresh

    def write(staged: Path) -> CacheMetadata:
        data = staged / DATA_FILE
        try:
            os.link(legacy, data)
        except FileNotFoundError:
            raise SkipPublish from None  # a racing migrator finished and removed it
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(legacy, data)
        progress.start(size, "bp")
        try:
            contigs, checksum = _source_sequence_is(fasta, data, progress)
        finally:
            _check_unchanged(stamp)  # the bytes compared, and the fingerprint, are the file's
        token = owner.fence.token() if owner.fence is not None else None
        return _write_metadata(
            staged, fasta, dest, contigs, stamp.fingerprint, checksum, fence_token=token
        )

    try:
        outcome, meta = build_and_publish(dest, write, owner=owner, replace=False, root=root)
    except _NotTheSource:
        return None  # corrupt or of another source: leave it alone, build fresh
    if outcome in (Outcome.PUBLISHED, Outcome.REPLACED, Outcome.LOST):
        with ConfinedParent(dest, root) as parent:  # the legacy file lies beside the cache
            parent.remove(legacy.name)
    found = _usable_or_raise(dest, fasta, expected)
    if found is None:
        return None
    action: Action = "migrated" if outcome is Outcome.PUBLISHED else "reused"
    return EnsureResult(dest, action, outcome, meta if meta is not None else found.metadata)


class _NotTheSource(Exception):  # control flow: the legacy bytes are not the source's
    pass


def _source_sequence_is(fasta: Path, data: Path, progress: Progress) -> tuple[dict[str, int], str]:
    """The contigs and content checksum of ``data`` when it holds exactly the sequence a
    build of ``fasta`` writes; :class:`_NotTheSource` at the first byte that differs."""
    running = ChunkedCrc()
    with open(data, "rb") as held:

        def compare(block: bytes) -> None:
            if held.read(len(block)) != block:
                raise _NotTheSource
            running.update(block)
            progress.advance(len(block))

        contigs = stream_contigs(fasta, compare)
        if held.read(1) or not any(contigs.values()):
            raise _NotTheSource  # longer than the sequence, or no sequence to cache
    return contigs, running.hexdigest()


def _fai_lengths(fasta: Path) -> dict[str, int] | None:
    """Contig lengths from ``FASTA.fai`` when it is at least as new as the FASTA."""
    records = read_fai(fasta)
    return None if records is None else {r.name: r.length for r in records}


@contextlib.contextmanager
def _best_effort_lock(dest: Path, root: Path, *, enabled: bool, timeout: float):
    """``<dest>.lock``, the file GenVarLoader locks too; the rename keeps a build correct
    without it, the lock only saves duplicate work."""
    if not enabled:
        yield
        return
    with (
        ConfinedParent(dest, root) as parent,
        best_effort_lock(parent, f"{parent.name}.lock", timeout),
    ):
        yield
