"""Atomic publish: durable before visible, one winner, nothing left behind, dead owners swept."""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm import publish as pub
from farm import versions
from farm.errors import DestinationError
from farm.orphans import find_orphans, remove_orphans
from farm.publish import (
    ASIDE_MARK,
    STAGING_MARK,
    Outcome,
    Owner,
    SkipPublish,
    build_and_publish,
    staging_path,
)
from farm.versions import Layout, PublishMode


def _leftovers(dest: Path) -> list[str]:
    return sorted(
        p.name for p in dest.parent.iterdir() if STAGING_MARK in p.name or ASIDE_MARK in p.name
    )


def _writer(content: bytes):
    def build(staged: Path) -> str:
        (staged / "sub").mkdir()
        (staged / "data.bin").write_bytes(content)
        (staged / "sub" / "meta.json").write_bytes(b"{}")
        return content.decode()

    return build


@pytest.fixture(autouse=True)
def _exchange_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from what the kernel says: a device found without exchange by an
    earlier test (which faked it) is not remembered."""
    monkeypatch.setattr(pub, "_NO_EXCHANGE", set())


@pytest.fixture
def owner() -> Iterator[Owner]:
    yield Owner.current("job-1")


def test_owner_tagged_names_parse_back(tmp_path: Path, owner: Owner) -> None:
    dest = tmp_path / "ref.fa.gvlfa"
    for path in (pub.staging_path(dest, owner), pub.aside_path(dest, owner)):
        assert path.parent == tmp_path and path.name.startswith(dest.name)
        assert Owner.parse(path.name) == owner
    assert Owner.parse(dest.name) is None
    assert Owner.current("a.b/c d").job == "a_b_c_d"  # dots would break parsing


@pytest.mark.parametrize("replace", [False, True])
def test_files_are_fsynced_before_the_rename_and_the_parent_after(
    tmp_path: Path, owner: Owner, monkeypatch: pytest.MonkeyPatch, replace: bool
) -> None:
    dest = tmp_path / "art"
    if replace:
        build_and_publish(dest, _writer(b"old"), owner=owner, replace=False)
    events: list[tuple[str, str]] = []
    real_fsync, real_rename, real_exchange = os.fsync, os.rename, pub._exchange

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(a: str, b: str, **dir_fds: int) -> None:
        events.append(("rename", b))
        real_rename(a, b, **dir_fds)

    def exchange(parent: pub.ConfinedParent, a: str, b: str) -> bool:
        events.append(("rename", b))
        return real_exchange(parent, a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(pub, "_exchange", exchange)
    outcome, _ = build_and_publish(dest, _writer(b"new"), owner=owner, replace=replace)

    assert outcome is (Outcome.REPLACED if replace else Outcome.PUBLISHED)
    publish_at = events.index(("rename", dest.name))
    synced_before = {path for kind, path in events[:publish_at] if kind == "fsync"}
    (staged,) = {p for p in synced_before if Owner.parse(Path(p).name) is not None}
    for rel in ("data.bin", "sub/meta.json", "sub"):
        assert f"{staged}/{rel}" in synced_before, rel
    assert ("fsync", str(tmp_path)) in events[publish_at + 1 :]
    assert (dest / "data.bin").read_bytes() == b"new"
    assert _leftovers(dest) == []


def test_first_writer_wins_and_the_loser_learns_it_lost(tmp_path: Path, owner: Owner) -> None:
    dest = tmp_path / "art"

    def build_while_another_publishes(staged: Path) -> str:
        # A rival publishes between our start and our rename: the race, made deterministic.
        assert build_and_publish(dest, _writer(b"rival"), owner=owner, replace=False)[0] is (
            Outcome.PUBLISHED
        )
        return _writer(b"ours")(staged)

    outcome, result = build_and_publish(
        dest, build_while_another_publishes, owner=owner, replace=False
    )
    assert (outcome, result) == (Outcome.LOST, None)
    assert (dest / "data.bin").read_bytes() == b"rival"
    assert _leftovers(dest) == []


@pytest.mark.parametrize("kernel_exchange", [True, False])
def test_replace_swaps_in_the_new_artifact(
    tmp_path: Path, owner: Owner, monkeypatch: pytest.MonkeyPatch, kernel_exchange: bool
) -> None:
    dest = tmp_path / "art"
    build_and_publish(dest, _writer(b"old"), owner=owner, replace=False)
    if not kernel_exchange:  # filesystems without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(pub, "_exchange", lambda _parent, _a, _b: False)
    outcome, result = build_and_publish(dest, _writer(b"new"), owner=owner, replace=True)
    assert (outcome, result) == (Outcome.REPLACED, "new")
    assert (dest / "data.bin").read_bytes() == b"new"
    assert _leftovers(dest) == []


def test_skip_publish_leaves_the_destination_alone(tmp_path: Path, owner: Owner) -> None:
    dest = tmp_path / "art"
    build_and_publish(dest, _writer(b"old"), owner=owner, replace=False)

    def skip(staged: Path) -> None:
        (staged / "half").write_bytes(b"x")
        raise SkipPublish

    assert build_and_publish(dest, skip, owner=owner, replace=True) == (Outcome.SKIPPED, None)
    assert (dest / "data.bin").read_bytes() == b"old"
    assert _leftovers(dest) == []


def test_a_failing_builder_leaves_no_staging_and_no_dest(tmp_path: Path, owner: Owner) -> None:
    dest = tmp_path / "art"

    def fail(staged: Path) -> None:
        (staged / "half").write_bytes(b"x" * 1000)
        raise RuntimeError("builder broke")

    with pytest.raises(RuntimeError, match="builder broke"):
        build_and_publish(dest, fail, owner=owner, replace=False)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_a_full_disk_is_a_destination_error_and_keeps_the_old_artifact(
    tmp_path: Path, owner: Owner, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    dest = tmp_path / "art"
    build_and_publish(dest, _writer(b"old"), owner=owner, replace=False)

    def no_space(*_args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    build = _writer(b"new")
    if where == "write":

        def build(staged: Path) -> None:
            (staged / "part").write_bytes(b"x")
            no_space()

    else:
        monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DestinationError) as info:
        build_and_publish(dest, build, owner=owner, replace=True)
    assert str(dest) in str(info.value) and "disk is full" in str(info.value)
    assert (dest / "data.bin").read_bytes() == b"old"
    assert _leftovers(dest) == []


_HOLD_STAGING = """
import sys, time
from pathlib import Path
from farm.publish import Owner, staging_path
staged = staging_path(Path(sys.argv[1]), Owner.current(sys.argv[2]))
staged.mkdir()
(staged / "partial.bin").write_bytes(b"half")
print(staged, flush=True)
time.sleep(120)
"""


@pytest.fixture
def staging_holders(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[str], Path]]]:
    """Two real builders, each holding a staging directory; both are ended at teardown."""
    procs: list[tuple[subprocess.Popen[str], Path]] = []
    for job in ("dead-job", "live-job"):
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD_STAGING, str(tmp_path / f"{job}.gvlfa"), job],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        procs.append((proc, Path(proc.stdout.readline().strip())))
    yield procs
    for proc, _ in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_orphans_of_killed_builders_are_removed_and_live_ones_kept(
    tmp_path: Path, staging_holders: list[tuple[subprocess.Popen[str], Path]]
) -> None:
    (dead, dead_dir), (live, live_dir) = staging_holders
    assert dead_dir.is_dir() and live_dir.is_dir()
    assert list(find_orphans(tmp_path)) == []  # both builders are running

    os.kill(dead.pid, signal.SIGKILL)
    os.waitid(os.P_PID, dead.pid, os.WEXITED | os.WNOWAIT)  # dead, but not reaped
    # A zombie keeps its pid until its parent reaps it, and must still count as gone.
    orphans = list(find_orphans(tmp_path))
    assert [o.path for o in orphans] == [dead_dir]
    assert orphans[0].owner.pid == dead.pid and orphans[0].owner.job == "dead-job"
    dead.wait()
    remove_orphans(find_orphans(tmp_path))

    assert not dead_dir.exists()
    assert live_dir.is_dir() and live.poll() is None


def test_a_reused_pid_does_not_keep_an_orphan_alive(tmp_path: Path) -> None:
    # Our own pid is alive, but this process started long after the directory was last
    # touched, so it cannot be the builder that wrote it.
    staged = staging_path(tmp_path / "x.gvlfa", Owner.current("old"))
    staged.mkdir()
    os.utime(staged, (1_000_000_000, 1_000_000_000))
    assert [o.path for o in find_orphans(tmp_path)] == [staged]


def _fenced_owner(
    may_publish=lambda: None, still_granted=lambda: True, job: str = "job-f"
) -> Owner:
    fence = pub.Fence("k", 1, may_publish=may_publish, still_granted=still_granted, lock_wait_s=1.0)
    return Owner.current(job, fence=fence)


def _inode(path: Path) -> int:
    return path.stat().st_ino


@pytest.mark.parametrize("kernel_exchange", [True, False])
def test_a_fenced_replace_swaps_out_only_what_it_saw_when_it_checked_its_grant(
    tmp_path: Path, owner: Owner, monkeypatch: pytest.MonkeyPatch, kernel_exchange: bool
) -> None:
    """A late publisher lands between our look and our swap: we swap it back out, look
    again, check our grant again, and replace what is there then. Ours ends in place, no
    reader ever saw the destination missing (exchange) and nothing is left over."""
    dest = tmp_path / "art"
    build_and_publish(dest, _writer(b"v0"), owner=owner, replace=False)
    if not kernel_exchange:
        monkeypatch.setattr(pub, "_exchange", lambda _parent, _a, _b: False)
    checks: list[int] = []

    def may_publish() -> None:
        checks.append(_inode(dest))
        if len(checks) == 1:  # right after our look: a frozen builder resumes and publishes
            late = tmp_path / "late"
            late.mkdir()
            (late / "data.bin").write_bytes(b"late")
            if kernel_exchange:
                assert pub._exchange(pub.ConfinedParent(dest, tmp_path), "late", "art")
            else:
                os.rename(dest, tmp_path / "gone")
                os.rename(late, dest)

    fenced = _fenced_owner(may_publish)
    outcome, result = build_and_publish(dest, _writer(b"ours"), owner=fenced, replace=True)
    assert (outcome, result) == (Outcome.REPLACED, "ours")
    assert (dest / "data.bin").read_bytes() == b"ours"
    assert len(checks) == 2, "the grant is checked again before the second swap"
    assert _leftovers(dest) == []


@pytest.mark.parametrize("kernel_exchange", [True, False])
def test_a_grant_lost_during_the_rename_puts_back_what_stood_before(
    tmp_path: Path, owner: Owner, monkeypatch: pytest.MonkeyPatch, kernel_exchange: bool
) -> None:
    dest = tmp_path / "art"
    build_and_publish(dest, _writer(b"newer"), owner=owner, replace=False)
    before = _inode(dest)
    if not kernel_exchange:
        monkeypatch.setattr(pub, "_exchange", lambda _parent, _a, _b: False)
    late = _fenced_owner(still_granted=lambda: False)
    with pytest.raises(pub.FencedOut):
        build_and_publish(dest, _writer(b"late"), owner=late, replace=True)
    assert _inode(dest) == before and (dest / "data.bin").read_bytes() == b"newer"
    assert _leftovers(dest) == []
    # Where nothing stood, nothing stands again.
    empty = tmp_path / "fresh"
    with pytest.raises(pub.FencedOut):
        build_and_publish(empty, _writer(b"late"), owner=late, replace=False)
    assert not empty.exists() and _leftovers(empty) == []


def test_a_refused_grant_publishes_nothing_and_a_fenced_build_always_replaces(
    tmp_path: Path, owner: Owner
) -> None:
    dest = tmp_path / "art"
    build_and_publish(dest, _writer(b"v0"), owner=owner, replace=False)

    def refused() -> None:
        raise pub.FencedOut("taken over")

    with pytest.raises(pub.FencedOut):
        build_and_publish(dest, _writer(b"late"), owner=_fenced_owner(refused), replace=True)
    assert (dest / "data.bin").read_bytes() == b"v0" and _leftovers(dest) == []
    # Holding the newest grant, what stands is older: replaced even without replace=True.
    outcome, _ = build_and_publish(dest, _writer(b"v1"), owner=_fenced_owner(), replace=False)
    assert outcome is Outcome.REPLACED and (dest / "data.bin").read_bytes() == b"v1"


# --- versions behind a link (filesystems without RENAME_EXCHANGE) ---------------------------


def _linked(job: str = "job-l", grace_s: float = 3600.0, fence: pub.Fence | None = None) -> Owner:
    return Owner.current(job, fence=fence, layout=Layout(PublishMode.LINK, grace_s))


def _versions(dest: Path) -> list[str]:
    return sorted(os.listdir(dest.with_name(versions.versions_dir(dest.name))))


def test_a_first_publish_by_link_is_a_relative_link_to_a_version(tmp_path: Path) -> None:
    dest = tmp_path / "art"
    outcome, _ = build_and_publish(dest, _writer(b"v1"), owner=_linked(), replace=False)
    assert outcome is Outcome.PUBLISHED
    (version,) = _versions(dest)
    assert os.readlink(dest) == f".art.farmv/{version}"  # relative: the tree can move
    assert (dest / "data.bin").read_bytes() == b"v1"
    assert (dest / "sub" / "meta.json").read_bytes() == b"{}"
    assert _leftovers(dest) == []
    # First writer wins as before: a second first publish loses, and leaves no version.
    assert build_and_publish(dest, _writer(b"v2"), owner=_linked(), replace=False)[0] is (
        Outcome.LOST
    )
    assert _versions(dest) == [version] and (dest / "data.bin").read_bytes() == b"v1"


def test_a_replace_by_link_keeps_the_old_version_for_its_grace_and_for_its_readers(
    tmp_path: Path,
) -> None:
    """A reader that opened and mapped the old version goes on reading it after the replace;
    the old version stays until its grace ends, and the current one is never removed."""
    dest = tmp_path / "art"
    build_and_publish(dest, _writer(b"old"), owner=_linked(), replace=False)
    old_real = dest.resolve()
    held = open(dest / "data.bin", "rb")  # noqa: SIM115 - held across the replace
    mapped = mmap.mmap(held.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        outcome, _ = build_and_publish(dest, _writer(b"new"), owner=_linked(), replace=True)
        assert outcome is Outcome.REPLACED
        assert (dest / "data.bin").read_bytes() == b"new"
        assert mapped[:] == b"old" and (old_real / "data.bin").read_bytes() == b"old"
        assert len(_versions(dest)) == 2 and _leftovers(dest) == []

        # Within its grace, neither gc nor the next publish removes it.
        assert list(find_orphans(tmp_path, version_grace_s=3600)) == []
        # Past it, gc removes the retired version, never the current one.
        (orphan,) = find_orphans(tmp_path, version_grace_s=0)
        assert orphan.path == old_real and orphan.owner is None
        remove_orphans([orphan])
        assert not old_real.exists() and mapped[:] == b"old"  # a local mapping outlives it
        assert _versions(dest) == [dest.resolve().name]
        assert list(find_orphans(tmp_path, version_grace_s=0)) == []
        assert (dest / "data.bin").read_bytes() == b"new"
    finally:
        mapped.close()
        held.close()


def test_a_version_that_became_current_again_is_not_removed_by_a_stale_find(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "art"
    build_and_publish(dest, _writer(b"a"), owner=_linked(), replace=False)
    first = os.readlink(dest)
    build_and_publish(dest, _writer(b"b"), owner=_linked(), replace=True)
    (orphan,) = find_orphans(tmp_path, version_grace_s=0)
    os.symlink(first, tmp_path / "relink")
    os.rename(tmp_path / "relink", dest)  # the link moved back after the orphan was found
    remove_orphans([orphan])
    assert (dest / "data.bin").read_bytes() == b"a"


def test_publishing_prunes_the_versions_past_their_grace(tmp_path: Path) -> None:
    dest = tmp_path / "art"
    for content in (b"1", b"2", b"3"):
        build_and_publish(dest, _writer(content), owner=_linked(grace_s=0), replace=True)
    assert _versions(dest) == [dest.resolve().name]
    assert (dest / "data.bin").read_bytes() == b"3"


def test_a_fenced_replace_by_link_swaps_out_only_the_link_it_saw(tmp_path: Path) -> None:
    """A late publisher relinks between our look and our swap: we look again, check our
    grant again, and replace what stands then."""
    dest = tmp_path / "art"
    build_and_publish(dest, _writer(b"v0"), owner=_linked(), replace=False)
    checks: list[str] = []

    def may_publish() -> None:
        checks.append(os.readlink(dest))
        if len(checks) == 1:
            build_and_publish(dest, _writer(b"late"), owner=_linked("late"), replace=True)

    fence = pub.Fence("k", 1, may_publish=may_publish, still_granted=lambda: True, lock_wait_s=1)
    outcome, _ = build_and_publish(dest, _writer(b"ours"), owner=_linked(fence=fence), replace=True)
    assert outcome is Outcome.REPLACED and (dest / "data.bin").read_bytes() == b"ours"
    assert len(checks) == 2 and checks[0] != checks[1]
    assert os.readlink(dest).split("/")[1].startswith("g1.")  # the version names its grant
    assert _leftovers(dest) == []


def test_a_grant_lost_during_the_relink_puts_the_old_link_back(tmp_path: Path) -> None:
    dest = tmp_path / "art"
    build_and_publish(dest, _writer(b"newer"), owner=_linked(), replace=False)
    before = os.readlink(dest)
    late = pub.Fence("k", 1, may_publish=lambda: None, still_granted=lambda: False, lock_wait_s=1)
    with pytest.raises(pub.FencedOut):
        build_and_publish(dest, _writer(b"late"), owner=_linked(fence=late), replace=True)
    assert os.readlink(dest) == before and (dest / "data.bin").read_bytes() == b"newer"
    assert len(_versions(dest)) == 2  # a reader may have opened the late one: its grace runs
    assert _leftovers(dest) == []
    empty = tmp_path / "fresh"
    with pytest.raises(pub.FencedOut):
        build_and_publish(empty, _writer(b"late"), owner=_linked(fence=late), replace=False)
    assert not empty.exists() and not empty.is_symlink() and _leftovers(empty) == []


def test_a_refused_grant_leaves_no_version(tmp_path: Path) -> None:
    dest = tmp_path / "art"

    def refused() -> None:
        raise pub.FencedOut("taken over")

    fence = pub.Fence("k", 1, may_publish=refused, still_granted=lambda: True, lock_wait_s=1)
    with pytest.raises(pub.FencedOut):
        build_and_publish(dest, _writer(b"late"), owner=_linked(fence=fence), replace=True)
    assert not dest.is_symlink() and _versions(dest) == [] and _leftovers(dest) == []


def test_a_link_to_a_version_gone_is_published_over(tmp_path: Path) -> None:
    dest = tmp_path / "art"
    build_and_publish(dest, _writer(b"v0"), owner=_linked(), replace=False)
    shutil.rmtree(dest.resolve())
    outcome, _ = build_and_publish(dest, _writer(b"v1"), owner=_linked(), replace=False)
    assert outcome is Outcome.PUBLISHED and (dest / "data.bin").read_bytes() == b"v1"


@pytest.mark.parametrize("kernel_exchange", [True, False])
def test_a_directory_becomes_a_link_when_first_replaced_by_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_exchange: bool
) -> None:
    """The transition: exchanged for the link where the filesystem can (never missing),
    renamed into the versions first where it cannot (the one window, once). The old tree is
    kept as a version for its grace either way."""
    dest = tmp_path / "art"
    build_and_publish(dest, _writer(b"dir"), owner=Owner.current("d"), replace=False)
    assert dest.is_dir() and not dest.is_symlink()
    inode = dest.stat().st_ino
    if not kernel_exchange:
        monkeypatch.setattr(pub, "_exchange", lambda _parent, _a, _b: False)
    outcome, _ = build_and_publish(dest, _writer(b"link"), owner=_linked(), replace=True)
    assert outcome is Outcome.REPLACED and dest.is_symlink()
    assert (dest / "data.bin").read_bytes() == b"link"
    old = [v for v in _versions(dest) if v != dest.resolve().name]
    assert [(dest.parent / ".art.farmv" / v).stat().st_ino for v in old] == [inode]
    assert _leftovers(dest) == []


def test_auto_switches_to_links_where_the_filesystem_refuses_exchange(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: Owner
) -> None:
    dest = tmp_path / "art"
    build_and_publish(dest, _writer(b"v0"), owner=owner, replace=False)
    monkeypatch.setattr(pub, "_exchange", lambda _parent, _a, _b: False)
    build_and_publish(dest, _writer(b"v1"), owner=owner, replace=True)
    assert dest.is_symlink() and (dest / "data.bin").read_bytes() == b"v1"
    # That device is remembered: a first publish beside it is a link at once.
    other = tmp_path / "other"
    build_and_publish(other, _writer(b"w"), owner=owner, replace=False)
    assert other.is_symlink()
    # Exchange mode keeps today's aside fallback (a directory).
    exchange = Owner.current("x", layout=Layout(PublishMode.EXCHANGE))
    third = tmp_path / "third"
    build_and_publish(third, _writer(b"a"), owner=exchange, replace=False)
    build_and_publish(third, _writer(b"b"), owner=exchange, replace=True)
    assert not third.is_symlink() and (third / "data.bin").read_bytes() == b"b"


@pytest.mark.parametrize("start", ["link", "directory"])
def test_a_reader_never_finds_a_linked_destination_missing(tmp_path: Path, start: str) -> None:
    """A reader stats and opens the destination in a tight loop while it is replaced again
    and again by link: every look finds a whole artifact."""
    dest = tmp_path / "art"
    first = _linked() if start == "link" else Owner.current("d")
    build_and_publish(dest, _writer(b"0"), owner=first, replace=False)
    stop = threading.Event()
    looks: list[int] = [0]
    misses: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                os.stat(dest)
                with open(dest / "data.bin", "rb") as f:
                    if not f.read():
                        misses.append("empty")
            except OSError as e:
                misses.append(f"{type(e).__name__}: {e}")
            looks[0] += 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(60):
            owner = _linked(grace_s=0.0)
            build_and_publish(dest, _writer(str(i).encode()), owner=owner, replace=True)
    finally:
        stop.set()
        reader.join()
    assert looks[0] > 100 and misses == []
    assert (dest / "data.bin").read_bytes() == b"59" and _leftovers(dest) == []


def test_a_link_layout_never_writes_or_removes_through_a_planted_link(tmp_path: Path) -> None:
    """A versions directory swapped for a link to elsewhere is refused, not written through;
    a destination that is a link of someone else's (not ``.NAME.farmv/<version>``) is
    replaced, and what it points at is neither read as a version nor removed by gc."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (elsewhere / "g1.0123abcd").mkdir()  # looks like a version
    dest = root / "art"
    (root / ".art.farmv").symlink_to(elsewhere)
    with pytest.raises(DestinationError, match="symlink"):
        build_and_publish(dest, _writer(b"x"), owner=_linked(), replace=False, root=root)
    assert sorted(os.listdir(elsewhere)) == ["g1.0123abcd"] and not dest.is_symlink()
    assert list(find_orphans(root, version_grace_s=0)) == []

    (root / ".art.farmv").unlink()
    dest.symlink_to(elsewhere)  # a foreign link at the destination
    assert versions.linked_version(dest) is None
    outcome, _ = build_and_publish(dest, _writer(b"y"), owner=_linked(), replace=True, root=root)
    assert outcome is Outcome.REPLACED and (dest / "data.bin").read_bytes() == b"y"
    assert sorted(os.listdir(elsewhere)) == ["g1.0123abcd"]
    remove_orphans(find_orphans(root, version_grace_s=0))
    assert sorted(os.listdir(elsewhere)) == ["g1.0123abcd"]
