"""Real processes racing for one cache: one valid result, nothing left over, lock or no lock."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from farm.artifacts import gvlfa
from farm.fingerprint import checksum
from farm.publish import Owner

# Each racer imports everything, says "ready", then spins on a start file so that all of them
# enter ensure_cache within a millisecond of each other.
_RACER = """
import json, sys, time
from pathlib import Path
from farm.artifacts.gvlfa import ensure_cache
fasta, go, lock = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
print("ready", flush=True)
while not go.exists():
    time.sleep(0.0005)
r = ensure_cache(fasta, lock=lock)
print(json.dumps({"action": r.action, "outcome": r.outcome}), flush=True)
"""


def _race(fasta: Path, n: int, *, lock: bool, tmp_path: Path) -> list[dict[str, str | None]]:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(fasta), str(go), "1" if lock else "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * n, [err for _, err in outs]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def _write_synthetic_fasta(path: Path, *, contigs: int, length: int, seed: int = 0) -> Path:
    """Mixed-case sequence with N runs in 60-column lines; big enough that builds overlap."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"ACGTacgtNn", np.uint8)
    with open(path, "wb") as f:
        for i in range(contigs):
            seq = alphabet[rng.integers(0, len(alphabet), length)]
            pad = (-length) % 60
            lines = np.concatenate([seq, np.zeros(pad, np.uint8)]).reshape(-1, 60)
            body = np.concatenate([lines, np.full((len(lines), 1), 10, np.uint8)], axis=1)
            f.write(f">contig{i} synthetic\n".encode())
            raw = body.tobytes()
            f.write(raw[: len(raw) - pad - 1] + b"\n" if pad else raw)
    return path


@pytest.fixture
def racing_fasta(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A ~24 MB FASTA and the checksum of its cache built by one process alone."""
    race_dir = tmp_path / "race"
    race_dir.mkdir()
    fasta = _write_synthetic_fasta(race_dir / "synthetic.fa", contigs=4, length=6_000_000)
    alone = gvlfa.ensure_cache(fasta, tmp_path / "alone.gvlfa")
    yield fasta, checksum(alone.dest / gvlfa.DATA_FILE)


def _assert_one_clean_cache(fasta: Path, expected_checksum: str) -> None:
    dest = gvlfa.default_dest(fasta)
    gvlfa.verify(dest)
    assert checksum(dest / gvlfa.DATA_FILE) == expected_checksum
    around = sorted(p.name for p in fasta.parent.iterdir())
    assert around == sorted([fasta.name, dest.name, dest.name + ".lock"]) or around == sorted(
        [fasta.name, dest.name]
    )
    assert all(Owner.parse(name) is None for name in around)


@pytest.mark.slow
@pytest.mark.parametrize("lock", [True, False], ids=["lock", "no-lock"])
def test_eight_processes_ensuring_one_cache_leave_one_valid_cache(
    racing_fasta: tuple[Path, str], tmp_path: Path, lock: bool
) -> None:
    fasta, expected = racing_fasta
    results = _race(fasta, 8, lock=lock, tmp_path=tmp_path)
    actions = [r["action"] for r in results]
    assert set(actions) <= {"built", "reused"}
    # Exactly one rename publishes. With the lock the others wait and reuse it without
    # building; without it several build, and those that lose the rename are told so.
    assert actions.count("built") == 1
    reused_outcomes = {r["outcome"] for r in results if r["action"] == "reused"}
    assert reused_outcomes <= ({None} if lock else {None, "lost"})
    _assert_one_clean_cache(fasta, expected)


@pytest.mark.slow
@pytest.mark.parametrize("lock", [True, False], ids=["lock", "no-lock"])
def test_four_processes_migrating_one_legacy_cache_all_succeed(
    racing_fasta: tuple[Path, str], tmp_path: Path, lock: bool
) -> None:
    fasta, expected = racing_fasta
    legacy = gvlfa.legacy_path(fasta)
    legacy.write_bytes((tmp_path / "alone.gvlfa" / gvlfa.DATA_FILE).read_bytes())
    results = _race(fasta, 4, lock=lock, tmp_path=tmp_path)
    actions = [r["action"] for r in results]
    assert actions.count("migrated") == 1, actions
    assert set(actions) <= {"migrated", "reused", "built"}
    assert not legacy.exists()
    _assert_one_clean_cache(fasta, expected)
