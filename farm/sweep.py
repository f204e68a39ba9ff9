"""The staging sweep: workers remove the staging and aside directories of dead builders, and
versions retired behind a link past their grace, on a schedule, so a killed builder's leftovers
go without anyone running ``farm gc``.

Where to look: not the allowed roots (on the embedded default they are ``/``, and a walk of a
shared filesystem is hours), but the directories builds staged in. A builder notes its
destination's parent in the registry (one sorted set, scored by when a build last staged there)
just before it creates its staging directory, and a sweep lists each such directory once,
without descending. The set holds the parents of recent builds and of leftovers not yet
removable: a parent is dropped once it holds no staging directory and no build noted it for
:data:`FORGET_AFTER_LEASES` lease periods (a builder notes it just before it stages, and one
stalled longer than that has lost its grant). Its size is the number of destination directories
in use, not of artifacts; a sweep reads at most :data:`MAX_PARENTS`, least recently noted first.

One sweep runs farm-wide per interval: the first worker to take the lock (SET NX PX, held for
the interval and never released early) sweeps; the others find the lock taken, one round trip.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from farm.config import Settings
from farm.confine import containing_root
from farm.errors import FarmError
from farm.orphans import Orphan, orphans_beside, remove_orphans
from farm.registry import Registry

log = logging.getLogger(__name__)

LOCK = "staging-sweep"
MAX_PARENTS = 10_000
FORGET_AFTER_LEASES = 10


@dataclass
class SweepResult:
    """What one sweep did, for logs and tests."""

    swept: bool = False  # False: another worker holds this interval's sweep
    parents: int = 0
    removed: list[Orphan] = field(default_factory=list)
    forgotten: int = 0  # parents dropped from the set


def sweep(registry: Registry, settings: Settings, *, name: str, now: float) -> SweepResult:
    """Remove leftovers of dead builders in the directories builds staged in, if no other
    worker swept within ``staging_sweep_interval_s``. Only below this worker's allowed roots."""
    result = SweepResult()
    interval = settings.staging_sweep_interval_s
    if interval <= 0 or not registry.try_lock(LOCK, name, interval):
        return result
    result.swept = True

    def live(job: str) -> bool:
        try:
            return registry.live_lease_for_job(job)
        except FarmError:
            return True  # cannot tell: keep it

    roots = settings.roots
    forget_before = now - FORGET_AFTER_LEASES * settings.lease_ttl_s
    for parent, noted_at in registry.staging_parents(MAX_PARENTS):
        result.parents += 1
        folder = Path(parent)
        root = containing_root(folder / "x", roots) if folder.is_absolute() else None
        if root is None:
            continue  # outside this worker's roots: a worker allowed there sweeps it
        orphans, staged = orphans_beside(
            folder,
            root,
            is_job_live=live,
            grace_seconds=settings.staging_grace_s,
            version_grace_s=settings.version_grace_s,
        )
        remove_orphans(orphans)
        gone = [o for o in orphans if not os.path.lexists(o.path)]
        for orphan in gone:
            log.warning("staging sweep: removed %s (%s)", orphan.path, orphan.reason)
        result.removed.extend(gone)
        if staged == len(gone) and noted_at < forget_before:
            result.forgotten += registry.drop_staging_parent(parent, noted_at)
    return result
