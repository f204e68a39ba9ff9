"""Build beside the destination, make it durable, publish it with one rename.

Improves on GenVarLoader's ``atomic_dir`` where it has gaps:
- files and directories are fsynced before the rename and the parent after it, so a power cut
  leaves the old artifact or the new one, never a renamed directory of empty files;
- staging and aside directories carry their owner (job, pid, host) in their name, so
  :mod:`farm.orphans` can remove those of dead builders and never a live one's;
- replacing uses ``renameat2(RENAME_EXCHANGE)`` where the kernel has it: the destination is
  never missing, not even between two renames; where the filesystem refuses it (NFS, Lustre,
  CephFS), the destination is a symlink to versioned directories, replaced by renaming a new
  link over it, old versions kept for a grace period (:mod:`farm.versions`);
- the loser of a first-writer-wins race is told it lost (:attr:`Outcome.LOST`);
- a build that runs under a grant (:class:`Fence`) publishes only while its grant is the
  newest, and replaces by compare-and-swap: it swaps out only the artifact it saw when it
  checked its grant, else it swaps back and looks again. A grant found gone just after the
  rename (the one gap no filesystem can fence) undoes the publish at once; if the builder
  freezes inside that gap, the watchdog finds and repairs what it left.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import secrets
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from farm import versions
from farm.confine import ConfinedParent, fd_path, resolve_root
from farm.errors import DestinationError, FencedOut
from farm.limits import JOB_TAG_LEN
from farm.versions import Layout, PublishMode, Versions

STAGING_MARK = ".farmtmp."
ASIDE_MARK = ".farmold."
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
T = TypeVar("T")


class Outcome(StrEnum):
    PUBLISHED = "published"  # nothing was there; ours is now
    REPLACED = "replaced"  # an old artifact was swapped for ours
    LOST = "lost"  # another writer published first; ours was discarded
    SKIPPED = "skipped"  # the builder found a valid artifact already there


class SkipPublish(Exception):  # control flow, not an error
    """Raised by a builder that found, after all, a valid artifact in place."""


@dataclass(frozen=True)
class Fence:
    """The grant a build runs under: checked by the registry just before and just after the
    rename that publishes, and recorded in the artifact (:meth:`token`)."""

    key: str
    generation: int
    may_publish: Callable[[], None]  # raises FencedOut unless the grant may publish now
    still_granted: Callable[[], bool]  # asked just after the rename
    lock_wait_s: float  # a lock held by a frozen peer must not outlast the lease

    def token(self) -> dict[str, Any]:
        """What the artifact records of the grant that built it."""
        return {"key": self.key, "generation": self.generation}


@dataclass(frozen=True)
class Owner:
    """Who is building: enough to tell, later, whether that builder is still alive."""

    job: str
    pid: int
    host: str
    fence: Fence | None = field(default=None, compare=False)
    layout: Layout = field(default=Layout(), compare=False)

    @classmethod
    def current(
        cls, job: str = "local", fence: Fence | None = None, layout: Layout | None = None
    ) -> Owner:
        job = _TAG_UNSAFE.sub("_", job)[:JOB_TAG_LEN] or "local"
        return cls(job=job, pid=os.getpid(), host=host(), fence=fence, layout=layout or Layout())

    def tag(self) -> str:
        return f"{self.job}.{self.pid}.{secrets.token_hex(4)}.{self.host}"

    @classmethod
    def parse(cls, name: str) -> Owner | None:
        for mark in (STAGING_MARK, ASIDE_MARK):
            if mark in name:
                parts = name.rsplit(mark, 1)[1].split(".", 3)
                if len(parts) == 4 and parts[1].isdigit():
                    return cls(job=parts[0], pid=int(parts[1]), host=parts[3])
        return None


def host() -> str:
    """This host's name as staging and aside directories carry it."""
    return _TAG_UNSAFE.sub("_", socket.gethostname()) or "host"


def staging_path(dest: Path, owner: Owner) -> Path:
    return dest.with_name(f"{dest.name}{STAGING_MARK}{owner.tag()}")


def aside_path(dest: Path, owner: Owner) -> Path:
    return dest.with_name(f"{dest.name}{ASIDE_MARK}{owner.tag()}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file, then every directory bottom-up, so the rename publishes real bytes."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def _exchange(parent: ConfinedParent, a: str, b: str) -> bool:
    """Atomically swap two names in ``parent``. False when the kernel or filesystem cannot."""
    if _renameat2 is None:
        return False
    fd = parent.fd
    rc = _renameat2(fd, os.fsencode(a), fd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(parent.dest))


# How often a publish looks again when the destination changed between its look and its swap.
_CAS_ROUNDS = 8
Identity = tuple[int, int]  # (st_dev, st_ino) of what stands at a name


def publish(
    parent: ConfinedParent, staged: str, staged_fd: int, *, replace: bool, owner: Owner
) -> Outcome:
    """Move the fully built directory ``staged`` (open as ``staged_fd``) to the destination.

    With ``replace=False`` the first writer wins and a later one gets :attr:`Outcome.LOST`;
    with ``replace=True`` an existing destination is swapped out and removed. A fenced build
    (``owner.fence``) always replaces: holding the newest grant, whatever stands there is
    older than what it built. It checks its grant just before each swap and swaps out only
    what it saw then (compare-and-swap); see the module's docstring. ``owner.layout`` says
    whether the destination is a directory (exchanged) or a link to versions.
    """
    fsync_tree(fd_path(staged_fd))
    if _links_wanted(parent, owner.layout):
        return _publish_linked(parent, staged, staged_fd, replace=replace, owner=owner)
    try:
        return _publish_exchanging(parent, staged, staged_fd, replace=replace, owner=owner)
    except _NoExchange:
        _NO_EXCHANGE.add(os.fstat(parent.fd).st_dev)
        return _publish_linked(parent, staged, staged_fd, replace=replace, owner=owner)


def _publish_exchanging(
    parent: ConfinedParent, staged: str, staged_fd: int, *, replace: bool, owner: Owner
) -> Outcome:
    dest = parent.name
    fence = owner.fence
    replace = replace or fence is not None
    ours = _fd_identity(staged_fd)
    for _ in range(_CAS_ROUNDS):
        seen = _identity(parent, dest)
        if fence is not None:
            fence.may_publish()
        if seen is None:
            try:
                parent.rename(staged, dest)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
                if not replace:
                    return Outcome.LOST
                continue  # something was published since we looked: look again
            _check_published(parent, staged_fd)
            parent.fsync()
            _confirm_or_undo(parent, staged, None, ours, fence)
            return Outcome.PUBLISHED
        if not replace:
            return Outcome.LOST
        swapped = _swap(parent, staged, dest, seen, ours, owner)
        if swapped is None:
            continue
        _check_published(parent, staged_fd)
        parent.fsync()
        _confirm_or_undo(parent, staged, swapped, ours, fence)
        parent.remove(swapped)  # now holds the old artifact
        return Outcome.REPLACED
    raise _kept_replacing(parent)


def _kept_replacing(parent: ConfinedParent) -> DestinationError:
    return DestinationError(
        f"Cannot publish {parent.dest}: other builders kept replacing it while this one tried "
        f"{_CAS_ROUNDS} times; build it again."
    )


class _NoExchange(Exception):  # control flow: this filesystem refuses RENAME_EXCHANGE
    pass


# Devices found to refuse RENAME_EXCHANGE in this process, and the filesystems known to
# (statfs magic numbers): NFS, Lustre, CephFS, CIFS/SMB, 9p, FUSE (only some daemons have
# rename2), GPFS. On these, ``auto`` publishes a first artifact as a link already, so its
# first replace needs no transition from a directory.
_NO_EXCHANGE: set[int] = set()
_NO_EXCHANGE_FS = {
    0x6969, 0x0BD00BD0, 0x00C36400, 0xFF534D42, 0xFE534D42, 0x517B, 0x01021997,
    0x65735546, 0x47504653,
}  # fmt: skip
_fstatfs = getattr(_libc, "fstatfs", None)


def _fs_magic(fd: int) -> int | None:
    """The filesystem type of ``fd`` (``f_type`` of ``struct statfs``, its first field)."""
    if _fstatfs is None:
        return None
    buf = ctypes.create_string_buffer(256)
    if _fstatfs(fd, buf) != 0:
        return None
    return int.from_bytes(buf.raw[: ctypes.sizeof(ctypes.c_long)], "little", signed=True)


def _links_wanted(parent: ConfinedParent, layout: Layout) -> bool:
    """Whether this destination is published as a link to versions (see :mod:`farm.versions`)."""
    if layout.mode is PublishMode.LINK:
        return True
    if layout.mode is PublishMode.EXCHANGE:
        return False
    if versions.version_at(parent.fd, parent.name) is not None:
        return True  # a link already: keep the layout (and the grace of its old versions)
    if _renameat2 is None or os.fstat(parent.fd).st_dev in _NO_EXCHANGE:
        return True
    return _fs_magic(parent.fd) in _NO_EXCHANGE_FS


@dataclass
class _Seen:
    """What stood at the destination when the grant was checked."""

    identity: Identity  # of the name itself (the link's own inode, never its target's)
    is_dir: bool
    link: str | None  # a symlink's text
    version: str | None  # the version it names, when it is a link of the farm's layout
    retired: str | None = None  # a directory's version name, once moved behind the link


def _seen(parent: ConfinedParent) -> _Seen | None:
    try:
        st = os.stat(parent.name, dir_fd=parent.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    link = None
    if stat.S_ISLNK(st.st_mode):
        with contextlib.suppress(OSError):
            link = os.readlink(parent.name, dir_fd=parent.fd)
    version = versions.version_at(parent.fd, parent.name) if link is not None else None
    return _Seen((st.st_dev, st.st_ino), stat.S_ISDIR(st.st_mode), link, version)


def _publish_linked(
    parent: ConfinedParent, staged: str, staged_fd: int, *, replace: bool, owner: Owner
) -> Outcome:
    """Publish as a link to a new version (:mod:`farm.versions`); the same compare-and-swap
    and fencing as an exchange, on the link's own identity."""
    fence = owner.fence
    replace = replace or fence is not None
    with Versions(parent) as layout:
        version = versions.new_version(fence.generation if fence is not None else 0)
        layout.move_in(staged, version)
        shown = [False]  # once linked, readers may hold it: only the grace may remove it
        try:
            outcome = _link_rounds(parent, layout, version, staged_fd, replace, owner, shown)
        except BaseException:
            if not shown[0]:
                layout.remove(version)
            raise
        if outcome is Outcome.LOST:
            layout.remove(version)
        with contextlib.suppress(OSError):
            layout.prune(owner.layout.grace_s)
        return outcome


def _link_rounds(
    parent: ConfinedParent,
    layout: Versions,
    version: str,
    staged_fd: int,
    replace: bool,
    owner: Owner,
    shown: list[bool],
) -> Outcome:
    fence = owner.fence
    text = layout.text(version)
    for _ in range(_CAS_ROUNDS):
        seen = _seen(parent)
        if fence is not None:
            fence.may_publish()
        # A farm link to a version that is gone stands for nothing published.
        dangling = seen is not None and seen.version is not None
        dangling = dangling and not layout.exists(seen.version)  # type: ignore[arg-type]
        if seen is None:
            try:
                os.symlink(text, parent.name, dir_fd=parent.fd)
            except FileExistsError:
                if not replace:
                    return Outcome.LOST
                continue  # something was published since we looked: look again
        else:
            if not replace and not dangling:
                return Outcome.LOST
            if seen.version is not None:
                layout.touch(seen.version)  # its grace counts from its retirement
            if not _link_over(parent, layout, text, seen, owner):
                continue
        shown[0] = True
        _check_published(parent, staged_fd, follow=True)
        parent.fsync()
        _confirm_or_relink(parent, layout, version, seen, fence, owner)
        return Outcome.PUBLISHED if seen is None or dangling else Outcome.REPLACED
    raise _kept_replacing(parent)


def _link_over(
    parent: ConfinedParent, layout: Versions, text: str, seen: _Seen, owner: Owner
) -> bool:
    """Put a link with ``text`` at the destination if it still holds ``seen``; False (nothing
    changed) when it holds something else by now. A link or a file is replaced by one rename.
    A directory (published before the link layout) is exchanged for the link where the
    filesystem can, and is otherwise renamed into the versions first: the one moment, once
    per destination, when a reader can find it missing."""
    tmp = staging_path(parent.dest, owner).name
    os.symlink(text, tmp, dir_fd=parent.fd)
    try:
        if not seen.is_dir:
            if _identity(parent, parent.name) != seen.identity:
                return False
            parent.rename(tmp, parent.name)
            return True
        retired = versions.new_version(0)
        if _exchange(parent, tmp, parent.name):
            if _identity(parent, tmp) != seen.identity:
                _exchange(parent, tmp, parent.name)  # not what we meant to replace: back
                return False
            layout.move_in(tmp, retired)
            seen.retired = retired
            return True
        try:
            os.rename(parent.name, retired, src_dir_fd=parent.fd, dst_dir_fd=layout.fd)
        except FileNotFoundError:
            return False
        if layout.identity(retired) != seen.identity:
            layout.move_out(retired, parent.name)
            return False
        try:
            parent.rename(tmp, parent.name)
        except OSError:
            layout.move_out(retired, parent.name)  # never leave the destination empty
            raise
        layout.touch(retired)
        seen.retired = retired
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.path.islink(parent.path(tmp)):
                os.unlink(tmp, dir_fd=parent.fd)  # our link, if it was not renamed in


def _confirm_or_relink(
    parent: ConfinedParent,
    layout: Versions,
    version: str,
    seen: _Seen | None,
    fence: Fence | None,
    owner: Owner,
) -> None:
    """After the rename, as :func:`_confirm_or_undo`: if the grant was lost meanwhile, put
    back what stood before (nothing, a link with the old text, or a link to the directory
    that stood there, now a version) and raise. Our version stays for its grace: a reader
    may have opened it."""
    if fence is None or fence.still_granted():
        return
    if versions.version_at(parent.fd, parent.name) == version:
        layout.touch(version)
        if seen is None:
            os.unlink(parent.name, dir_fd=parent.fd)
        else:
            text = layout.text(seen.retired) if seen.retired is not None else seen.link
            if text is not None:
                tmp = staging_path(parent.dest, owner).name
                os.symlink(text, tmp, dir_fd=parent.fd)
                parent.rename(tmp, parent.name)
        parent.fsync()
    raise FencedOut(
        f"The build of {parent.dest} lost its grant while publishing (another builder took "
        "it over); its artifact was taken back out."
    )


def _swap(
    parent: ConfinedParent, staged: str, dest: str, seen: Identity, ours: Identity, owner: Owner
) -> str | None:
    """Put ``staged`` at ``dest`` if ``dest`` still holds ``seen``; return the name that now
    holds what was swapped out, or None (nothing changed) when ``dest`` held something else.

    ``renameat2(RENAME_EXCHANGE)`` where the filesystem has it: ``dest`` is never missing.
    Elsewhere (NFS, Lustre, CephFS refuse the flag) the old artifact is renamed aside first.
    """
    if _exchange(parent, staged, dest):
        if _identity(parent, staged) == seen:
            return staged
        # Not what we meant to replace (someone published in between): swap it back.
        if _identity(parent, dest) == ours:
            _exchange(parent, staged, dest)
        return None
    if owner.layout.mode is PublishMode.AUTO:
        raise _NoExchange  # nothing changed yet: publish as a link to versions instead
    aside = aside_path(parent.dest, owner).name
    try:
        parent.rename(dest, aside)
    except FileNotFoundError:
        return None  # someone else moved it meanwhile: look again
    if _identity(parent, aside) != seen:
        with contextlib.suppress(OSError):
            parent.rename(aside, dest)
        return None
    try:
        parent.rename(staged, dest)
    except OSError:
        # Put the old artifact back rather than leave the destination empty.
        with contextlib.suppress(OSError):
            parent.rename(aside, dest)
        raise
    return aside


def _confirm_or_undo(
    parent: ConfinedParent, staged: str, old: str | None, ours: Identity, fence: Fence | None
) -> None:
    """After the rename: if the grant was lost while it ran, put back what stood before (the
    artifact held under ``old``, or nothing), our artifact back under ``staged``, and raise
    :class:`FencedOut`. If ours was already replaced, there is nothing to undo."""
    if fence is None or fence.still_granted():
        return
    dest = parent.name
    if _identity(parent, dest) == ours:
        if old == staged:
            _exchange(parent, staged, dest)
        else:
            parent.rename(dest, staged)
            if old is not None:
                parent.rename(old, dest)
        parent.fsync()
    raise FencedOut(
        f"The build of {parent.dest} lost its grant while publishing (another builder took "
        "it over); its artifact was taken back out."
    )


def _identity(parent: ConfinedParent, name: str) -> Identity | None:
    try:
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _fd_identity(fd: int) -> Identity:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _check_published(parent: ConfinedParent, staged_fd: int, *, follow: bool = False) -> None:
    """What now stands at the destination must be the directory we built, not something
    swapped in for the staging name while we built (a link, another directory); ``follow``:
    through the farm's link to it."""
    here = os.stat(parent.name, dir_fd=parent.fd, follow_symlinks=follow)
    built = os.fstat(staged_fd)
    if (here.st_dev, here.st_ino) != (built.st_dev, built.st_ino):
        raise DestinationError(
            f"Cannot publish {parent.dest}: its staging directory was replaced while it was "
            "being built; nothing of it was kept, build again."
        )


def build_and_publish(
    dest: Path,
    build: Callable[[Path], T],
    *,
    owner: Owner,
    replace: bool,
    root: Path | None = None,
) -> tuple[Outcome, T | None]:
    """Run ``build(staging_dir)`` and publish the result; nothing partial is ever at ``dest``.

    Every directory created, renamed or removed lies below ``root`` (default: the nearest
    existing ancestor of ``dest``), reached without following a link (:mod:`farm.confine`);
    ``build`` gets a handle-path on the staging directory itself. Whatever happens (an
    exception, :class:`SkipPublish`, a lost race) the staging directory is gone when this
    returns. OS errors that a user can fix (no space, no permission, read-only filesystem)
    become :class:`DestinationError` sentences.
    """
    root, dest = resolve_root(dest, root)
    try:
        parent = ConfinedParent(dest, root)
    except OSError as e:
        if isinstance(e, DestinationError):
            raise
        if e.errno == errno.EEXIST or e.errno in _ALWAYS_ABOUT_WRITING | _ABOUT_PATH:
            raise _destination_error(e, dest) from e
        raise
    with parent:
        staged = staging_path(dest, owner).name
        try:
            os.mkdir(staged, dir_fd=parent.fd)
            staged_fd = parent.open_dir(staged)
        except OSError as e:
            if e.errno in _ALWAYS_ABOUT_WRITING | _ABOUT_PATH:
                raise _destination_error(e, dest) from e
            raise
        try:
            result = build(fd_path(staged_fd))
            outcome = publish(parent, staged, staged_fd, replace=replace, owner=owner)
        except SkipPublish:
            return Outcome.SKIPPED, None
        except OSError as e:
            if _about_destination(e, dest, staged_fd):
                raise _destination_error(e, dest) from e
            raise
        finally:
            os.close(staged_fd)
            parent.remove(staged)
    return outcome, (result if outcome is not Outcome.LOST else None)


_ALWAYS_ABOUT_WRITING = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_ABOUT_PATH = {errno.EACCES, errno.EPERM, errno.ENOTDIR}


def _about_destination(e: OSError, dest: Path, staged_fd: int) -> bool:
    """True for OS errors a user fixes at the destination (not at a source being read)."""
    if e.errno in _ALWAYS_ABOUT_WRITING:
        return True
    where = str(e.filename or "")
    return e.errno in _ABOUT_PATH and (
        where.startswith(str(dest.parent)) or where.startswith(str(fd_path(staged_fd)))
    )


def _destination_error(e: OSError, dest: Path) -> DestinationError:
    reason = {
        errno.ENOSPC: "the disk is full; free space there or choose another destination",
        errno.EDQUOT: "the disk quota is exhausted; free space or choose another destination",
        errno.EROFS: "the filesystem is read-only; choose a writable destination",
        errno.EFBIG: "a file would exceed the builder's file-size limit (ulimit -f); raise it",
        errno.ENOTDIR: "a parent of it is not a directory; choose another destination",
    }.get(e.errno or 0, "permission denied; choose a destination you can write to")
    return DestinationError(f"Cannot write {dest}: {reason}.")
