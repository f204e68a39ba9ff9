"""A partition, as an adversary makes one: a worker in a network namespace of its own (a host,
as far as the network goes) reaches Redis over a veth link, which is cut for several lease
periods while the key it builds is taken over, then healed. Its commands sent while cut off
are delivered after the heal (TCP retransmits them); none may undo the takeover.

Needs root and iproute2 (CI runs as root); skipped with the reason elsewhere. The namespace,
the link and its addresses are private to the test and removed at the end."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.kinds import CacheRequest
from tests.faults.harness import Cluster, Figures, settle
from tests.faults.test_fencing import PHASES, _check_after, _lives_on, _published

pytestmark = pytest.mark.faults

CUT_S = 7.0  # three and a half lease periods of the fault suite (FAST: 2 s)


class Link:
    """A veth pair between this namespace and a new one; ``cut`` and ``heal`` take the host
    side down and up (no RST is sent: the far side's packets just go nowhere)."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{random.randrange(100)}"
        self.ns, self.host_if, self.ns_if = f"gvlf{tag}", f"gvh{tag}", f"gvn{tag}"
        octet = random.randrange(1, 250)
        self.host_ip, self.ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
        _ip("netns", "add", self.ns)
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.ns)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            for args in (
                ("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if),
                ("link", "set", self.ns_if, "up"),
                ("link", "set", "lo", "up"),
            ):
                _ip("netns", "exec", self.ns, "ip", *args)
        except BaseException:
            self.remove()
            raise

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def link() -> Iterator[Link]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a partition needs root and iproute2 (ip netns); CI runs as root")
    try:
        made = Link()
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot make a network namespace here: {e.stderr.strip()}")
    yield made
    made.remove()


@pytest.fixture
def split_cluster(tmp_path: Path, link: Link) -> Iterator[Cluster]:
    port = random.randrange(20000, 60000)
    c = Cluster(tmp_path, redis_tcp=(link.host_ip, port))
    c.partitioned_url = f"redis://{link.host_ip}:{port}/0"  # type: ignore[attr-defined]
    yield c
    c.close()


# Each phase with the destination lock shared; per host (locks that do not cross the cut, as
# on NFS `nolock`) only where the cut-off builder holds it longest, between its grant check
# and its rename: enough to show the takeover never rests on the lock.
CASES = [(phase, "shared") for phase in PHASES] + [("fenced", "per-host")]


@pytest.mark.parametrize(("phase", "lock"), CASES)
def test_a_partitioned_builder_never_undoes_the_takeover(
    split_cluster: Cluster, link: Link, phase: str, lock: str
):
    cluster = split_cluster
    figures = Figures(f"builder cut off for {CUT_S:g} s at {phase}, then healed, {lock} lock")
    started = time.monotonic()
    per_host = lock == "per-host"
    far = cluster.worker(
        netns=link.ns,
        redis_url=cluster.partitioned_url,  # type: ignore[attr-defined]
        **({"test_lock_host": "far"} if per_host else {}),
    )
    fasta = cluster.genome()
    dest = fasta.parent / "partitioned.gvlfa"
    key = cluster.submit_paused(CacheRequest(fasta=fasta, dest=dest), phase, 0.5)
    figures.jobs = figures.rounds = 1
    cluster.marker(phase, key)
    link.cut()
    try:
        # The worker that takes over, on this side of the cut.
        cluster.worker(**({"test_lock_host": "near"} if per_host else {}))
        (record,) = settle(cluster, [key], figures, timeout=60)
        assert record is not None and not record.worker.startswith(far.name)
        before = _published(dest)
        remaining = CUT_S - (time.monotonic() - started)
        time.sleep(max(0.0, remaining))
    finally:
        link.heal()
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and "lost its grant" not in far.log.read_text():
        time.sleep(0.2)
    assert "lost its grant" in far.log.read_text(), "the cut-off builder never came back"
    time.sleep(1.0)
    assert _published(dest) == before, "the cut-off builder swapped the destination"
    _check_after(cluster, figures, far, {key: record})
    if per_host:
        assert cluster.log_count(f"{dest}.lock.") >= 2  # each side took its own lock
    _lives_on(cluster, far, fasta, figures)
    figures.seconds = time.monotonic() - started
    figures.report()
    figures.assert_healed()
