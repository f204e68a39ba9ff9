"""Nothing is created, renamed or removed outside the allowed root, whatever the path does:
`..`, symlinks below the root, and directories swapped for links between check and use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm import service
from farm.artifacts import gvlfa
from farm.config import Settings
from farm.confine import ConfinedParent
from farm.errors import DestinationError
from farm.kinds import CacheRequest
from farm.publish import Owner, build_and_publish
from farm.records import Status
from farm.registry import Registry
from farm.requests import prepare, request_key

LAMBDA = "lambda_NC_001416.1.fa"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    return tmp_path / "outside"


def _writer(staged: Path) -> None:
    (staged / "data.bin").write_bytes(b"artifact")


def test_a_symlink_below_the_root_is_never_followed(root: Path, outside: Path):
    (root / "link").symlink_to(outside)
    with pytest.raises(DestinationError, match="'link' on its way is a symlink"):
        build_and_publish(
            root / "link" / "a", _writer, owner=Owner.current(), replace=False, root=root
        )
    assert list(outside.iterdir()) == []


def test_dotdot_is_refused_before_anything_is_opened(root: Path, outside: Path):
    with pytest.raises(DestinationError, match="not a plain path"):
        ConfinedParent(root / ".." / "outside" / "a", root)
    assert list(outside.iterdir()) == []


def test_a_directory_swapped_for_a_link_before_the_build_is_refused(root: Path, outside: Path):
    (root / "swap").mkdir()
    dest = root / "swap" / "t"  # checked while 'swap' was a directory ...
    (root / "swap").rmdir()
    (root / "swap").symlink_to(outside)  # ... and a link by the time the build runs
    with pytest.raises(DestinationError):
        build_and_publish(dest, _writer, owner=Owner.current(), replace=False, root=root)
    assert list(outside.iterdir()) == []


def test_a_directory_swapped_for_a_link_during_the_build_cannot_redirect_it(
    root: Path, outside: Path
):
    (root / "swap").mkdir()
    dest = root / "swap" / "t"

    def build_then_swap(staged: Path) -> None:
        _writer(staged)
        (root / "swap").rename(root / "moved")
        (root / "swap").symlink_to(outside)

    build_and_publish(dest, build_then_swap, owner=Owner.current(), replace=False, root=root)
    assert list(outside.iterdir()) == []
    assert (root / "moved" / "t" / "data.bin").read_bytes() == b"artifact"  # still in the root


def test_a_staging_directory_swapped_for_a_link_is_not_published(root: Path, outside: Path):
    (outside / "victim").mkdir()

    def swap_own_staging(staged: Path) -> None:
        real = Path(os.readlink(staged))
        real.rename(root / "elsewhere")
        real.symlink_to(outside / "victim")
        _writer(staged)  # the handle still reaches the directory the builder owns

    with pytest.raises(DestinationError, match="staging directory was replaced"):
        build_and_publish(
            root / "t", swap_own_staging, owner=Owner.current(), replace=False, root=root
        )
    assert list((outside / "victim").iterdir()) == []
    assert (root / "elsewhere" / "data.bin").read_bytes() == b"artifact"


def test_a_planted_lock_link_is_never_followed(root: Path, outside: Path, genomes: Path):
    fasta = root / LAMBDA
    fasta.write_bytes((genomes / LAMBDA).read_bytes())
    victim = outside / "precious"
    victim.write_bytes(b"keep me")
    (root / f"{LAMBDA}.gvlfa.lock").symlink_to(victim)
    gvlfa.ensure_cache(fasta, root=root)
    assert victim.read_bytes() == b"keep me"
    assert gvlfa.classify(gvlfa.default_dest(fasta), deep=True).state.usable


@pytest.mark.parametrize("escape", ["dotdot", "link", "swapped"])
def test_a_worker_fails_a_message_whose_destination_escapes(
    escape: str, root: Path, outside: Path, genomes: Path, registry: Registry, redis_url: str
):
    """The three escapes measured through the broker: `ROOT/../outside/m`, `ROOT/link/m` where
    `link` points outside, and `ROOT/swap/m` submitted while `swap` was a directory."""
    settings = Settings(redis_url=redis_url, allowed_roots=str(root), state_dir=root / ".s")
    fasta = root / LAMBDA
    fasta.write_bytes((genomes / LAMBDA).read_bytes())
    if escape == "dotdot":
        request = CacheRequest(fasta=fasta, dest=root / ".." / "outside" / "m.gvlfa")
    elif escape == "link":
        (root / "link").symlink_to(outside)
        request = CacheRequest(fasta=fasta, dest=root / "link" / "m.gvlfa")
    else:
        (root / "swap").mkdir()
        request = prepare(CacheRequest(fasta=fasta, dest=root / "swap" / "m.gvlfa"), settings.roots)
        (root / "swap").rmdir()
        (root / "swap").symlink_to(outside)
    # Submitted by a client that does not confine (another's settings, or a forged record):
    # the worker checks the destination again before it writes anything.
    key, sources = request_key(request)
    registry.claim_many([service.queued_record(request, key, sources)], send_grace_s=60)
    record = service.ensure(key, service.Context(registry, settings, "w"))
    assert record.status is Status.FAILED
    assert (
        "not a plain absolute path" in record.error or "outside the allowed roots" in record.error
    )
    assert list(outside.iterdir()) == []


def test_gc_sweeps_only_inside_the_allowed_roots(root: Path, outside: Path):
    from farm import maintenance
    from farm.errors import InputError

    with pytest.raises(InputError, match="outside the allowed roots"):
        maintenance.gc(None, [outside], grace_s=0, allowed=[root])


def test_gc_removes_an_orphan_only_through_its_root(root: Path, outside: Path):
    """An orphan found below the root, whose directory is then swapped for a link to a
    same-named tree outside, is not removed through the link."""
    from farm.orphans import find_orphans, remove_orphans
    from farm.publish import staging_path

    (root / "d").mkdir()
    staged = staging_path(
        root / "d" / "x.gvlfa", Owner(job="gone", pid=1 << 22, host=Owner.current().host)
    )
    staged.mkdir()
    (orphan,) = find_orphans(root)
    (outside / "d").mkdir()
    (outside / "d" / staged.name).mkdir()  # what the swapped link would lead to
    (root / "d").rename(root / "d.old")
    (root / "d").symlink_to(outside / "d")
    remove_orphans([orphan])
    assert (outside / "d" / staged.name).is_dir()
