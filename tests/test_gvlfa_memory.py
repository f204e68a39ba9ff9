"""The builder streams: its memory is bounded by its buffers, not by the genome."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# Runs in a fresh interpreter and samples its own anonymous memory (RssAnon) while it builds.
# Not ru_maxrss: on Linux a child keeps the high-water mark of the test run it was forked from,
# so a build that stays below it would measure as growing by nothing. Not VmHWM either: it
# counts the pages of the FASTA mapped to find its layout, page cache the kernel reclaims.
_MEASURE = """
import json, sys, threading
from pathlib import Path
from farm.artifacts import gvlfa
def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
fasta, out = Path(sys.argv[1]), Path(sys.argv[2])
if sys.argv[3] == "streaming":  # no layout, from an index or a scan: the streaming reader
    gvlfa.read_fai = gvlfa.infer_layout = lambda _path: None
if sys.argv[3] == "migration":  # a legacy X.gvl, compared with the source before adoption
    gvlfa.ensure_cache(fasta, out)
    (out / gvlfa.DATA_FILE).rename(gvlfa.legacy_path(fasta))
    for leftover in out.iterdir():
        leftover.unlink()
    out.rmdir()
    build = lambda: gvlfa.ensure_cache(fasta).metadata
else:
    out.mkdir()
    build = lambda: gvlfa.write_cache(fasta, out, out)
base = peak = anon_kib()
done = threading.Event()
def sample():
    global peak
    while not done.wait(0.002):
        peak = max(peak, anon_kib())
sampler = threading.Thread(target=sample)
sampler.start()
meta = build()
done.set()
sampler.join()
peak = max(peak, anon_kib())
if sys.argv[3] == "migration":
    assert gvlfa.default_dest(fasta).exists() and not gvlfa.legacy_path(fasta).exists()
print(json.dumps({"base_kib": base, "peak_kib": peak, "total": meta.total_length}))
"""

_LINES_PER_CHUNK = 1 << 16


@pytest.fixture
def big_fasta(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """~200 MB of 60-column mixed-case FASTA in 4 contigs, written 4 MB at a time."""
    rng = np.random.default_rng(1)
    alphabet = np.frombuffer(b"ACGTacgtN", np.uint8)
    lines = alphabet[rng.integers(0, len(alphabet), (_LINES_PER_CHUNK, 61))]
    lines[:, 60] = ord("\n")
    chunk = lines.tobytes()
    path = tmp_path / "big.fa"
    chunks_per_contig = 13
    with open(path, "wb") as f:
        for i in range(4):
            f.write(f">chr{i}\n".encode())
            for _ in range(chunks_per_contig):
                f.write(chunk)
    yield path, 4 * chunks_per_contig * _LINES_PER_CHUNK * 60
    path.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["streaming", "fixed-width", "migration"])
def test_peak_memory_is_bounded_by_buffers_not_genome(
    big_fasta: tuple[Path, int], tmp_path: Path, path: str
) -> None:
    fasta, expected_length = big_fasta
    genome_mib = fasta.stat().st_size / 2**20
    assert genome_mib > 190
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(fasta), str(tmp_path / "out"), path],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(run.stdout)
    assert report["total"] == expected_length
    grown_mib = (report["peak_kib"] - report["base_kib"]) / 1024
    assert grown_mib > 0, "the measure saw no growth at all: it measures nothing"
    assert grown_mib < 120, f"peak grew {grown_mib:.0f} MiB building a {genome_mib:.0f} MiB genome"
