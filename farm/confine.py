"""Writes confined below an allowed root, whatever happens to the path after it was checked.

A destination is checked against the allowed roots when a request is parsed (on the client and
again on the worker), but a directory on the way can be swapped for a symlink between that check
and the build. So the farm never writes through the destination's path. It opens the
destination's parent one component at a time from the root, refusing symlinks (``O_NOFOLLOW``)
and creating missing directories, and does every mkdir, rename and removal relative to that
directory handle. Builders write through a handle on the staging directory itself
(``/proc/self/fd/N`` names the very directory opened, not a path looked up again), so a swapped
name cannot redirect them either. Linux only, like the rest of the farm's publishing.

The root itself is taken as configured and resolved once (it may be reached through symlinks,
such as a mount point); only what lies below it is confined.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from farm.errors import DestinationError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NO_FOLLOW = _DIR_FLAGS | os.O_NOFOLLOW


def fd_path(fd: int, name: str | None = None) -> Path:
    """A path that reaches what ``fd`` is open on, without looking its old path up again."""
    base = Path(f"/proc/self/fd/{fd}")
    return base / name if name else base


def containing_root(dest: Path, roots: list[Path]) -> Path | None:
    """The deepest allowed root ``dest`` lies strictly below (lexically: ``dest`` must already
    be absolute and free of ``..``)."""
    below = [r for r in roots if dest != r and dest.is_relative_to(r)]
    return max(below, key=lambda r: len(r.parts), default=None)


class DirHandle:
    """An open directory descriptor that names its entries without following links, closed
    on exit."""

    fd: int

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True


class ConfinedParent(DirHandle):
    """An open handle on a destination's parent directory, reached from ``root`` without
    following a symlink; the destination is :attr:`name` inside it."""

    def __init__(self, dest: Path, root: Path, *, create: bool = True) -> None:
        if not dest.is_absolute() or ".." in dest.parts or not dest.is_relative_to(root):
            raise DestinationError(
                f"Destination {dest} is not a plain path below {root}; give an absolute path "
                "without '..' inside the allowed roots."
            )
        parts = dest.relative_to(root).parts
        if not parts:
            raise DestinationError(f"Destination {dest} is the root itself; name a path below it.")
        self.dest = dest
        self.name = parts[-1]
        self.fd = os.open(root, _DIR_FLAGS)
        try:
            for part in parts[:-1]:
                child = _step(self.fd, part, dest, create=create)
                os.close(self.fd)
                self.fd = child
        except BaseException:
            self.close()
            raise

    def path(self, name: str | None = None) -> Path:
        return fd_path(self.fd, name)

    def open_dir(self, name: str) -> int:
        """A handle on the directory ``name`` inside, refusing a symlink in its place."""
        return os.open(name, _NO_FOLLOW, dir_fd=self.fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def remove(self, name: str) -> None:
        """Remove ``name`` (a tree, a file or a symlink) inside, never following a link."""
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=self.fd)
            else:
                os.unlink(name, dir_fd=self.fd)

    def fsync(self) -> None:
        os.fsync(self.fd)


def _step(fd: int, part: str, dest: Path, *, create: bool) -> int:
    """Open the directory ``part`` below ``fd`` (creating it if asked), never through a link."""
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, dir_fd=fd)
        return os.open(part, _NO_FOLLOW, dir_fd=fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise DestinationError(
                f"Cannot write {dest}: '{part}' on its way is a symlink or not a directory, and "
                "the farm never writes through a link below an allowed root; choose a plain "
                "directory."
            ) from e
        raise


def resolve_root(dest: Path, root: Path | None) -> tuple[Path, Path]:
    """``root`` and ``dest`` as :class:`ConfinedParent` takes them. With no root (a library
    caller with no allowed roots), the nearest existing ancestor of ``dest``, resolved."""
    if root is not None:
        return root, dest
    dest = Path(os.path.abspath(dest))
    ancestor = dest.parent
    while not ancestor.is_dir() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    resolved = ancestor.resolve()
    return resolved, resolved / dest.relative_to(ancestor)


@contextlib.contextmanager
def best_effort_lock(parent: ConfinedParent, name: str, timeout: float) -> Iterator[bool]:
    """An exclusive ``flock`` on the file ``name`` in ``parent`` (created, never followed if it
    is a link), the lock GenVarLoader's ``filelock`` takes on the same file. Yields whether it
    was taken: the lock only saves duplicate work, so a timeout or a filesystem without locks
    goes on unlocked."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=parent.fd)  # fmt: skip
    except OSError:
        yield False
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
            except OSError:
                yield False
                return
        yield True
    finally:
        os.close(fd)  # closing drops the flock
