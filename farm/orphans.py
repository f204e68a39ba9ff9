"""Leftovers of builders that are gone: staging and aside directories of dead builders, and
versions retired behind a destination's link past their grace.

Found by their names (:class:`farm.publish.Owner` tags) and removed through handles opened
from their root, never a live builder's, never the version a link points to now. ``farm gc``
walks a tree (:func:`find_orphans`); the workers' sweep lists the directories builds staged in
(:func:`orphans_beside`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from farm import versions
from farm.confine import ConfinedParent
from farm.errors import DestinationError
from farm.publish import ASIDE_MARK, STAGING_MARK, Owner, host
from farm.versions import Versions


@dataclass(frozen=True)
class Orphan:
    path: Path
    owner: Owner | None  # None: a retired version (see farm.versions)
    reason: str
    root: Path  # the tree it was found in: it is removed without following a link below it
    grace_s: float | None = None  # a retired version's grace, checked again at removal


def find_orphans(
    root: Path,
    *,
    is_job_live: Callable[[str], bool] = lambda _job: False,
    grace_seconds: float = 3600.0,
    version_grace_s: float | None = None,
) -> Iterator[Orphan]:
    """Staging and aside directories below ``root`` whose builder is gone, and (given
    ``version_grace_s``) versions retired behind a destination's link longer ago than that.

    On this host a builder is gone when its pid is not running. On another host (a shared
    filesystem) the pid means nothing here, so a directory is an orphan only when its job
    holds no live lease and it has not been touched for ``grace_seconds``.
    """
    root = root.resolve()
    here = host()
    now = time.time()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            orphan = _orphan(Path(dirpath, name), root, here, now, is_job_live, grace_seconds)
            if orphan is not None:
                yield orphan
        held = [d for d in dirnames if versions.dest_of_versions_dir(d) is not None]
        if version_grace_s is not None:
            for d in held:
                yield from _expired_versions(Path(dirpath, d), root, version_grace_s)
        dirnames[:] = [d for d in dirnames if Owner.parse(d) is None and d not in held]


def orphans_beside(
    parent: Path,
    root: Path,
    *,
    is_job_live: Callable[[str], bool] = lambda _job: False,
    grace_seconds: float = 3600.0,
    version_grace_s: float | None = None,
) -> tuple[list[Orphan], int]:
    """As :func:`find_orphans`, in ``parent`` alone (where builds of destinations in it stage):
    one directory listing, however large the tree around it. Also says how many leftovers it
    holds, removable or not yet (staging and aside directories, retired versions)."""
    here = host()
    now = time.time()
    try:
        with os.scandir(parent) as entries:
            names = [e.name for e in entries]
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return [], 0
    staged = [n for n in names if STAGING_MARK in n or ASIDE_MARK in n]
    found = [_orphan(parent / n, root, here, now, is_job_live, grace_seconds) for n in staged]
    orphans = [o for o in found if o is not None]
    held = len(staged)
    if version_grace_s is not None:
        for name in names:
            if versions.dest_of_versions_dir(name) is None:
                continue
            folder = parent / name
            held += sum(1 for _ in _expired_versions(folder, root, float("-inf")))
            orphans.extend(_expired_versions(folder, root, version_grace_s))
    return orphans, held


def _orphan(
    path: Path,
    root: Path,
    here: str,
    now: float,
    is_job_live: Callable[[str], bool],
    grace_seconds: float,
) -> Orphan | None:
    owner = Owner.parse(path.name)
    if owner is None:
        return None
    if owner.host == here:
        if not _builder_alive(owner.pid, path):
            return Orphan(path, owner, f"its builder (pid {owner.pid}) is gone", root)
    elif not is_job_live(owner.job) and _untouched_for(path, now, grace_seconds):
        return Orphan(path, owner, "no live lease and untouched", root)
    return None


def _untouched_for(path: Path, now: float, seconds: float) -> bool:
    try:
        return now - path.lstat().st_mtime > seconds
    except FileNotFoundError:
        return False


def _builder_alive(pid: int, path: Path) -> bool:
    """Whether ``pid`` on this host can still be the builder that owns ``path``.

    A bare ``pid_exists`` is fooled twice: by a killed builder its parent has not reaped yet
    (a zombie holds its pid) and by an unrelated process that got the pid back later (it
    started after the directory was last touched, so it cannot be the one writing it).
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
        touched = path.lstat().st_mtime
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, FileNotFoundError):
        return True  # cannot tell (or already gone): never remove what may be live
    return started <= touched + 1.0  # create_time is rounded; a second of slack


def _expired_versions(folder: Path, root: Path, grace_s: float) -> Iterator[Orphan]:
    try:
        with _versions_of(folder, root) as found:
            old = found.expired(grace_s) if found is not None else []
    except (OSError, DestinationError):
        return
    why = f"a retired version, past its grace of {grace_s:g} s"
    for version in old:
        yield Orphan(folder / version, None, why, root, grace_s)


@contextlib.contextmanager
def _versions_of(folder: Path, root: Path) -> Iterator[Versions | None]:
    """The versions directory ``folder``, reached from ``root`` without following a link."""
    dest = folder.parent / (versions.dest_of_versions_dir(folder.name) or "")
    with ConfinedParent(dest, root, create=False) as parent:
        found = versions.open_versions(parent)
        if found is None:
            yield None
            return
        with found:
            yield found


def remove_orphans(orphans: Iterable[Orphan]) -> None:
    """Remove each orphan through a handle opened from its root: a directory on its way that
    was swapped for a link since it was found cannot lead the removal outside. A retired
    version is checked again just before: never the one its destination links to now."""
    for orphan in orphans:
        try:
            if orphan.grace_s is not None:
                _remove_version(orphan)
                continue
            with ConfinedParent(orphan.path, orphan.root, create=False) as parent:
                parent.remove(parent.name)
        except (FileNotFoundError, DestinationError):
            continue  # gone already, or no longer reachable without a link: leave it


def _remove_version(orphan: Orphan) -> None:
    assert orphan.grace_s is not None
    with _versions_of(orphan.path.parent, orphan.root) as found:
        if found is not None:
            found.remove_if_expired(orphan.path.name, orphan.grace_s)
