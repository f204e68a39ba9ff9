"""The staging sweep on a real Redis: it looks only where builds staged, removes only dead
builders' leftovers inside the allowed roots, runs once per interval farm-wide, and forgets a
directory only once nothing is left in it (the real kill -9 is in tests/faults)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from farm import sweep
from farm.config import Settings
from farm.publish import Owner, staging_path
from farm.registry import Registry


def _settings(root: Path, **kw: object) -> Settings:
    base = {"redis_url": "redis://x", "allowed_roots": str(root), "lease_ttl_s": 3.0}
    return Settings(**{**base, "staging_sweep_interval_s": 60.0, **kw})  # type: ignore[arg-type]


def _dead_owner(job: str) -> Owner:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return Owner(job=job, pid=proc.pid, host=Owner.current().host)


def test_a_dead_builders_staging_is_removed_and_a_live_ones_kept(
    tmp_path: Path, registry: Registry
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = staging_path(out / "a.gvlfa", _dead_owner("k1"))
    live = staging_path(out / "b.gvlfa", Owner.current("k2"))
    dead.mkdir()
    live.mkdir()
    (dead / "partial").write_bytes(b"x")
    registry.note_staging_parent(str(out))
    done = sweep.sweep(registry, _settings(tmp_path), name="w1", now=time.time())
    assert done.swept and done.parents == 1
    assert [o.path for o in done.removed] == [dead]
    assert not dead.exists() and live.is_dir()
    # The lock is held for the interval: no other worker sweeps until it ends.
    again = sweep.sweep(registry, _settings(tmp_path), name="w2", now=time.time())
    assert not again.swept


def test_only_noted_directories_inside_the_allowed_roots_are_swept(
    tmp_path: Path, registry: Registry
) -> None:
    root = tmp_path / "root"
    elsewhere = tmp_path / "elsewhere"
    unnoted = root / "unnoted"
    for folder in (root, elsewhere, unnoted):
        folder.mkdir()
    leftovers = [staging_path(f / "a.gvlfa", _dead_owner("k")) for f in (elsewhere, unnoted)]
    for path in leftovers:
        path.mkdir()
    registry.note_staging_parent(str(elsewhere))  # noted, but outside this worker's roots
    registry.note_staging_parent("relative/dir")
    done = sweep.sweep(registry, _settings(root), name="w", now=time.time())
    assert done.swept and done.parents == 2 and done.removed == []
    assert all(p.is_dir() for p in leftovers)


def test_a_directory_is_forgotten_once_empty_and_not_noted_lately(
    tmp_path: Path, registry: Registry
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    live = staging_path(out / "b.gvlfa", Owner.current("k2"))
    live.mkdir()
    registry.note_staging_parent(str(out))
    later = time.time() + 10 * 3.0 + 1  # past FORGET_AFTER_LEASES lease periods
    settings = _settings(tmp_path, staging_sweep_interval_s=0.05)
    assert sweep.sweep(registry, settings, name="w", now=later).forgotten == 0  # still staged
    live.rmdir()
    time.sleep(0.1)
    assert sweep.sweep(registry, settings, name="w", now=time.time()).forgotten == 0  # recent
    time.sleep(0.1)
    assert sweep.sweep(registry, settings, name="w", now=later).forgotten == 1
    assert registry.staging_parents(10) == []


def test_a_directory_noted_again_during_a_sweep_is_kept(registry: Registry) -> None:
    registry.note_staging_parent("/d")
    ((_, noted_at),) = registry.staging_parents(10)
    time.sleep(0.01)
    registry.note_staging_parent("/d")  # a build stages there meanwhile
    assert not registry.drop_staging_parent("/d", noted_at)
    ((_, now_at),) = registry.staging_parents(10)
    assert registry.drop_staging_parent("/d", now_at)


def test_sweeping_is_off_with_a_zero_interval(tmp_path: Path, registry: Registry) -> None:
    settings = _settings(tmp_path, staging_sweep_interval_s=0)
    assert not sweep.sweep(registry, settings, name="w", now=time.time()).swept


def test_versions_retired_behind_a_link_go_after_their_grace_and_keep_the_directory_noted(
    tmp_path: Path, registry: Registry
) -> None:
    """A replaced version is a leftover too: kept for its grace (readers on other hosts may
    have it mapped), then swept; its directory stays noted until it is gone."""
    from farm.publish import build_and_publish
    from farm.versions import Layout, PublishMode

    out = tmp_path / "out"
    out.mkdir()
    dest = out / "a.gvlfa"

    def write(content: bytes):
        def writer(staging: Path) -> None:
            (staging / "data.bin").write_bytes(content)

        return writer

    linked = Owner.current("k", layout=Layout(PublishMode.LINK, 3600.0))
    build_and_publish(dest, write(b"old"), owner=linked, replace=False)
    old = dest.resolve()
    build_and_publish(dest, write(b"new"), owner=linked, replace=True)
    registry.note_staging_parent(str(out))
    later = time.time() + 10 * 3.0 + 1
    kept = sweep.sweep(
        registry, _settings(tmp_path, staging_sweep_interval_s=0.05), name="w", now=later
    )
    assert kept.removed == [] and kept.forgotten == 0 and old.is_dir()
    time.sleep(0.1)
    done = sweep.sweep(
        registry,
        _settings(tmp_path, staging_sweep_interval_s=0.05, version_grace_s=0),
        name="w",
        now=later,
    )
    assert [o.path for o in done.removed] == [old] and not old.exists()
    assert (dest / "data.bin").read_bytes() == b"new"
