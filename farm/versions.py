"""Versioned directories behind a symlink: how a destination is replaced where the filesystem
cannot exchange two names atomically (NFS, Lustre and CephFS refuse ``renameat2`` flags).

The destination ``P/name`` is a symlink ``name -> .name.farmv/<version>`` (a relative target,
so the tree can be moved or mounted elsewhere). Publishing a new version moves the built
directory into ``P/.name.farmv/``, makes a new symlink beside the destination and renames it
over the old one: a plain rename of a symlink is atomic on every filesystem, NFS included, so
a reader finds the old version or the new one, never nothing. The old version stays in place
for a grace period (``FARM_VERSION_GRACE_S``): another host that opened or memory-mapped it
(GenVarLoader maps its datasets) keeps reading it, where removing it at once would give that
host ESTALE. Its grace starts when it is retired: its mtime is set just before the link that
replaces it is renamed in. The version a link points to is never removed.

Everything here works through directory handles opened without following links
(:mod:`farm.confine`), and a link is taken for the farm's only when its text is exactly
``.name.farmv/<version>``: its target stays inside the destination's parent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from farm.confine import ConfinedParent, DirHandle
from farm.errors import DestinationError

VERSIONS_MARK = ".farmv"
# A day: the grace must outlast the use a reader makes of a version it opened just before it
# was replaced (a GenVarLoader dataset stays mapped for the whole training job that opened
# it), and other hosts' cached lookups of the old link (NFS caches attributes up to 60 s).
# A replace is rare (a forced rebuild, a changed source), so one old copy per replaced
# destination for a day is the whole disk cost.
DEFAULT_GRACE_S = 86400.0
_VERSION = re.compile(r"g[0-9]+\.[0-9a-f]{8}\Z")


class PublishMode(StrEnum):
    AUTO = "auto"  # exchange where the filesystem can; versions behind a link where it cannot
    EXCHANGE = "exchange"  # always a real directory (renames aside where exchange is refused)
    LINK = "link"  # always versions behind a link


@dataclass(frozen=True)
class Layout:
    """How destinations are published: read from settings at the edge, carried by the
    builder's :class:`~farm.publish.Owner`."""

    mode: PublishMode = PublishMode.AUTO
    grace_s: float = DEFAULT_GRACE_S


def versions_dir(name: str) -> str:
    """The directory beside ``name`` that holds its versions."""
    return f".{name}{VERSIONS_MARK}"


def dest_of_versions_dir(dirname: str) -> str | None:
    """The destination name a versions directory belongs to, or None if it is not one."""
    if dirname.startswith(".") and dirname.endswith(VERSIONS_MARK):
        name = dirname[1 : -len(VERSIONS_MARK)]
        return name or None
    return None


def link_text(name: str, version: str) -> str:
    return f"{versions_dir(name)}/{version}"


def new_version(generation: int) -> str:
    """A version's name: the grant that built it (0 outside a worker) and 32 random bits."""
    return f"g{max(0, generation)}.{secrets.token_hex(4)}"


def is_version(name: str) -> bool:
    return _VERSION.match(name) is not None


def version_at(parent_fd: int, name: str) -> str | None:
    """The version ``name`` (in the directory ``parent_fd``) links to, when it is a link of
    the farm's layout; None when it is anything else or nothing."""
    try:
        text = os.readlink(name, dir_fd=parent_fd)
    except OSError:
        return None
    head, _, version = text.partition("/")
    if head != versions_dir(name) or not is_version(version):
        return None
    return version


def linked_version(dest: Path) -> str | None:
    """:func:`version_at` by path, for readers (maintenance)."""
    try:
        text = os.readlink(dest)
    except OSError:
        return None
    head, _, version = text.partition("/")
    return version if head == versions_dir(dest.name) and is_version(version) else None


def is_farm_link(dest: Path) -> bool:
    return linked_version(dest) is not None


class Versions(DirHandle):
    """The open versions directory of one destination (created if missing, never reached
    through a link)."""

    def __init__(self, parent: ConfinedParent, *, create: bool = True) -> None:
        self.parent = parent
        self.name = versions_dir(parent.name)
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.name, 0o755, dir_fd=parent.fd)
        try:
            self.fd = parent.open_dir(self.name)
        except OSError as e:
            if not create or e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise DestinationError(
                f"Cannot publish {parent.dest}: {self.name} beside it is a symlink or not a "
                "directory, and the farm never writes through a link below an allowed root; "
                "remove it."
            ) from e

    def text(self, version: str) -> str:
        return link_text(self.parent.name, version)

    def current(self) -> str | None:
        return version_at(self.parent.fd, self.parent.name)

    def move_in(self, name: str, version: str) -> None:
        """Move the directory ``name`` of the parent in as ``version``, fresh (its grace is
        counted from now), durably."""
        os.rename(name, version, src_dir_fd=self.parent.fd, dst_dir_fd=self.fd)
        self.touch(version)
        os.fsync(self.fd)
        self.parent.fsync()

    def move_out(self, version: str, name: str) -> None:
        os.rename(version, name, src_dir_fd=self.fd, dst_dir_fd=self.parent.fd)

    def touch(self, version: str) -> None:
        """Start ``version``'s grace now: it is about to be retired (or was just made)."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(version, dir_fd=self.fd, follow_symlinks=False)

    def identity(self, version: str) -> tuple[int, int] | None:
        try:
            st = os.stat(version, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def remove(self, version: str) -> None:
        """Remove one version at once: only for one no reader was ever shown."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(version, dir_fd=self.fd)

    def expired(self, grace_s: float, now: float | None = None) -> list[str]:
        """Versions retired longer than ``grace_s`` ago; never the one the link points to."""
        now = time.time() if now is None else now
        current = self.current()
        old = []
        for entry in os.scandir(self.fd):
            if entry.name == current or not is_version(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) and now - st.st_mtime > grace_s:
                old.append(entry.name)
        return old

    def remove_if_expired(self, version: str, grace_s: float) -> bool:
        """Remove ``version`` if it is still retired and past its grace (checked again here,
        just before: the link may have moved since it was found)."""
        if version not in self.expired(grace_s):
            return False
        self.remove(version)
        return True

    def prune(self, grace_s: float) -> list[str]:
        """Remove every version past its grace; returns their names."""
        removed = [v for v in self.expired(grace_s) if self.remove_if_expired(v, grace_s)]
        if removed:
            os.fsync(self.fd)
        return removed


def open_versions(parent: ConfinedParent) -> Versions | None:
    """The versions directory of ``parent.name`` if it has one."""
    try:
        return Versions(parent, create=False)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return None
        raise
