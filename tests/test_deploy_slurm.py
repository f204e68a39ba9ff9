"""The Slurm array script (docker/slurm/gvl-farm-workers.sbatch) runs a worker that drains
before the walltime: its functions are run in bash with the inputs Slurm would give (no
Slurm needed), and the whole script with a `farm` that records how it was called."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from farm.config import Settings
from tests.support.manifests import SBATCH, check_cli


def _bash(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``script`` run in bash after sourcing the sbatch file (which then only defines)."""
    return subprocess.run(
        ["bash", "-c", f"source {shlex.quote(str(SBATCH))}\n{script}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], **env},
    )


def _sbatch_option(name: str) -> str:
    [value] = re.findall(rf"^#SBATCH --{name}=(\S+)", SBATCH.read_text(), re.MULTILINE)
    return value


def test_sbatch_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(SBATCH, os.X_OK)


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        ("12:00:00", 43200),
        ("1-00:00:00", 86400),
        ("2-03:04:05", 183845),
        ("59:30", 3570),
        ("45", 45),
        ("08:09:07", 29347),
    ],
)
def test_slurm_durations_are_read_as_squeue_prints_them(duration: str, seconds: int) -> None:
    result = _bash(f"slurm_duration_s {duration}")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == seconds


@pytest.mark.parametrize("duration", ["UNLIMITED", "NOT_SET", "", "1:2:3:4"])
def test_a_job_without_a_known_end_has_no_duration(duration: str) -> None:
    assert _bash(f"slurm_duration_s {shlex.quote(duration)}").returncode != 0


@pytest.mark.parametrize("walltime", ["00:15:00", "01:00:00", "12:00:00", "7-00:00:00"])
@pytest.mark.parametrize("task", ["1", "8", "1000"])
def test_the_worker_ends_inside_the_walltime(walltime: str, task: str) -> None:
    margin, stagger = 125, 600
    left = int(_bash(f"slurm_duration_s {walltime}").stdout)
    result = _bash(f"worker_lifetime_s {left} {margin} {stagger} {task}")
    assert result.returncode == 0, result.stderr
    lifetime = int(result.stdout)
    assert left - margin - stagger <= lifetime <= left - margin


def test_array_tasks_started_together_end_apart() -> None:
    ends = {int(_bash(f"worker_lifetime_s 43200 125 600 {task}").stdout) for task in range(1, 9)}
    assert len(ends) == 8


def test_a_walltime_shorter_than_the_margin_is_refused_with_a_sentence() -> None:
    result = _bash("worker_lifetime_s 100 125 600 1")
    assert result.returncode != 0
    assert "ask for a longer --time" in result.stderr


def test_the_end_comes_from_slurm_or_from_squeue(tmp_path: Path) -> None:
    result = _bash("seconds_left", SLURM_JOB_END_TIME="100000", GVL_FARM_NOW="90000")
    assert result.stdout.strip() == "10000"
    # Without SLURM_JOB_END_TIME (older Slurm): the time left, as squeue prints it.
    fake = tmp_path / "bin"
    fake.mkdir()
    squeue = fake / "squeue"
    squeue.write_text(
        '#!/bin/sh\n[ "$*" = "--noheader --jobs 42 --format %L" ] && echo 1-02:00:00\n'
    )
    squeue.chmod(0o755)
    result = _bash(
        "seconds_left", SLURM_JOB_ID="42", PATH=f"{fake}{os.pathsep}{os.environ['PATH']}"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(26 * 3600)


def test_the_defaults_leave_every_task_of_the_array_time_to_build() -> None:
    walltime = int(_bash(f"slurm_duration_s {_sbatch_option('time')}").stdout)
    last_task = _sbatch_option("array").rpartition("-")[2]
    # The script's default: the farm's default stop grace + 120 s.
    default_margin = int(Settings.model_fields["stop_grace_s"].default) + 120
    result = _bash(f"worker_lifetime_s {walltime} {default_margin} 600 {last_task}")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > walltime / 2


def _run_sbatch(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The script as Slurm runs it, with a `farm` that records how it was called."""
    calls = tmp_path / "farm-argv"
    fake = tmp_path / "farm"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$FARM_STATE_DIR" "$@" > {calls}\n')
    fake.chmod(0o755)
    base = {
        "PATH": os.environ["PATH"],
        "GVL_FARM_BIN": str(fake),
        "FARM_REDIS_URL": "redis://redis-host:6379/0",
        "FARM_ALLOWED_ROOTS": "/shared/genomics",
        "SLURM_JOB_ID": "4242",
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", str(SBATCH)], capture_output=True, text=True, timeout=60, env={**base, **env}
    )
    return result, calls.read_text().splitlines() if calls.exists() else []


def test_sbatch_runs_a_worker_that_drains_before_the_walltime(tmp_path: Path) -> None:
    end = int(time.time()) + 12 * 3600
    result, called = _run_sbatch(
        tmp_path,
        SLURM_JOB_END_TIME=str(end),
        SLURM_ARRAY_TASK_ID="3",
        SLURM_CPUS_PER_TASK="4",
        FARM_STOP_GRACE_S="30",
    )
    assert result.returncode == 0, result.stderr
    state_dir, *argv = called
    assert state_dir == str(tmp_path / "gvl-farm-4242")
    assert argv[0] == "worker"
    lifetime = argv[argv.index("--lifetime") + 1]
    seconds = int(lifetime.removesuffix("s"))
    assert 12 * 3600 - 150 - 600 <= seconds <= 12 * 3600 - 150  # the margin: grace + 120 s
    assert argv[argv.index("--concurrency") + 1] == "4"
    check_cli(["farm", *argv])


def test_sbatch_without_the_redis_url_names_it(tmp_path: Path) -> None:
    result, called = _run_sbatch(tmp_path, FARM_REDIS_URL="", SLURM_JOB_END_TIME="1")
    assert result.returncode != 0 and not called
    assert "set FARM_REDIS_URL" in result.stderr


def test_sbatch_with_no_time_left_starts_no_worker(tmp_path: Path) -> None:
    result, called = _run_sbatch(tmp_path, SLURM_JOB_END_TIME=str(int(time.time()) + 60))
    assert result.returncode != 0 and not called
    assert "ask for a longer --time" in result.stderr
