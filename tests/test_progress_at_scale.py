"""Progress of a build at lab scale: it moves while every stage works (the variant sites
pass, regions written by forked processes), and a person reads a stage and a time left."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from farm import progress
from farm.artifacts.dataset import split
from farm.artifacts.dataset.rawfile import RawWriter
from farm.artifacts.dataset.sites import SITES_STAGE
from tests.support.dataset_data import copy_inputs
from tests.support.processes import PROJECT, farm_env

SLOW_APP = "tests.support.slow_app"


class _Recorded(progress.Progress):
    def __init__(self) -> None:
        self.steps: list[tuple[float, int]] = []

    def advance(self, n: int) -> None:
        self.steps.append((time.monotonic(), n))


def test_regions_written_by_forked_processes_are_reported_while_they_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent finishes its own part at once; the other part's regions still count up
    while the parent waits for it, not in one step when it is merged."""
    monkeypatch.setattr(split, "_POLL_S", 0.05)
    parent = os.getpid()
    n = 4 * split.MIN_REGIONS_PER_PART
    runs = [(0, np.arange(n))]
    table_rows = np.zeros((n, 3), np.int64)
    table_rows[:, 2] = np.arange(n)
    finished: list[float] = []

    def write(part, idx: RawWriter, off: RawWriter, total: int, report) -> int:
        for _, rows in part:
            for _r in rows:
                if os.getpid() != parent:
                    time.sleep(0.01)  # the forked part is the slow one
                off.write(np.asarray([total], np.int64))
                report.advance(1)
        if os.getpid() == parent:
            finished.append(time.monotonic())
        return total

    recorded = _Recorded()
    idx, off = RawWriter(tmp_path / "idx"), RawWriter(tmp_path / "off")
    split.write_split(runs, write, table_rows, idx, off, 2, tmp_path, recorded)
    idx.close()
    off.close()
    assert sum(n for _, n in recorded.steps) == n  # every region once, none twice
    (own_done,) = finished
    while_waiting = [k for t, k in recorded.steps if t > own_done and k]
    assert len(while_waiting) >= 5, recorded.steps  # it moved in steps, not in one


def test_a_stage_bytes_and_a_time_left_read_as_a_person_would() -> None:
    figures = {"done": 4_000_000_000, "total": 10_000_000_000, "unit": "B",
               "stage": SITES_STAGE, "started_at": 0.0, "updated_at": 4.0}  # fmt: skip
    assert progress.describe(figures) == "variant sites: 40% of 10.0 GB, 1.0 GB/s, 6 s left"
    figures = {"done": 10, "total": 10_000, "unit": "regions", "stage": None,
               "started_at": 0.0, "updated_at": 10.0}  # fmt: skip
    assert progress.describe(figures) == "0% of 10,000 regions, 1 regions/s, 2.8 h left"


def test_a_dataset_build_on_a_worker_reports_every_stage_and_a_time_left(
    start_workers, redis_url: str, tmp_path: Path
) -> None:
    """A real worker builds a dataset slowed down at each progress report (so a small input
    lasts long enough to watch); ``farm status`` shows the sites pass, then regions counting
    up with a time left."""
    inputs = copy_inputs(tmp_path / "inputs")
    start_workers(1, app=SLOW_APP, test_progress_delay_s=0.05, test_sites_delay_s=2.0)
    env = farm_env(redis_url, tmp_path)
    dest = str(tmp_path / "t.gvl")
    submitted = _farm(env, "submit", "dataset", "--variants", str(inputs["vcf"]),
                      "--regions", str(inputs["tiles"]), "--dest", dest)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    key = submitted.stdout.split()[0]
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        shown = _farm(env, "status", key)
        _key, _kind, status, _dest, detail = shown.stdout.rstrip("\n").split("\t")
        if status in ("valid", "failed"):
            break
        seen.append(detail)
        time.sleep(0.2)
    assert status == "valid", (status, detail)
    sites = [d for d in seen if d.startswith(f"{SITES_STAGE}: ")]
    assert sites and re.match(r"variant sites: \d+% of [\d.]+ MB, ", sites[-1]), seen
    regions = [int(m[1]) for d in seen if (m := re.match(r"(\d+)% of 200 regions, .* left", d))]
    assert len(set(regions)) >= 3, seen  # it moved, with a time left, report after report
    assert regions == sorted(regions)


def _farm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env, cwd=PROJECT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
