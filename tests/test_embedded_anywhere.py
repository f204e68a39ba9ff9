"""The embedded default serves its user from any directory, with one worker and no setting."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from farm.artifacts import gvlfa
from farm.artifacts.base import State
from farm.config import Settings
from tests.support.processes import farm_env
from tests.test_cli import farm

LAMBDA = "lambda_NC_001416.1.fa"
YEAST = "yeast_S288C_chrI_SGD2005.fa"


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    """A user's environment: no FARM_REDIS_URL, no FARM_ALLOWED_ROOTS."""
    env = farm_env("", tmp_path)
    del env["FARM_REDIS_URL"], env["FARM_ALLOWED_ROOTS"]
    env["FARM_STATE_DIR"] = str(tmp_path / "state")
    return env


def _place(genomes: Path, name: str, where: Path) -> Path:
    where.mkdir(parents=True)
    return Path(shutil.copy2(genomes / name, where / name))


def test_requests_from_four_directories_all_end_valid_first_time(
    embedded_env, genomes, tmp_path, monkeypatch
):
    """Started in one directory; a manifest from a second, `farm build` from a third (of a
    FASTA elsewhere) and the Python API from a fourth: every request valid, one worker."""
    first, second, third, fourth = (tmp_path / f"dir{i}" for i in range(1, 5))
    first.mkdir()
    try:
        assert farm(embedded_env, "server", "start", cwd=first).returncode == 0
        worker_pid = (tmp_path / "state" / "worker.pid").read_text()

        # A manifest of relative paths, submitted from the second directory.
        _place(genomes, LAMBDA, second)
        shutil.copy2(genomes / YEAST, second / YEAST)
        (second / "m.jsonl").write_text(
            json.dumps({"kind": "cache", "fasta": LAMBDA})
            + "\n"
            + json.dumps({"kind": "cache", "fasta": YEAST, "dest": "out/yeast.gvlfa"})
            + "\n"
        )
        submitted = farm(embedded_env, "submit", "--manifest", "m.jsonl", cwd=second)
        assert submitted.returncode == 0, submitted.stderr
        keys = submitted.stdout.split()
        waited = farm(embedded_env, "wait", *keys, "--timeout", "120", cwd=second)
        assert waited.returncode == 0, waited.stderr + waited.stdout

        # `farm build` from the third, of a FASTA outside it, published beside the FASTA.
        third.mkdir()
        elsewhere = _place(genomes, LAMBDA, tmp_path / "elsewhere")
        built = farm(embedded_env, "build", "cache", str(elsewhere), "--timeout", "120", cwd=third)
        assert built.returncode == 0, built.stderr
        assert built.stdout.strip() == f"{elsewhere}.gvlfa"

        # The Python API from the fourth, with the settings a user's environment gives.
        from farm.client import Farm
        from farm.kinds import CacheRequest

        _place(genomes, YEAST, fourth)
        monkeypatch.chdir(fourth)
        for name in list(os.environ):
            if name.upper().startswith("FARM_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("FARM_STATE_DIR", embedded_env["FARM_STATE_DIR"])
        with Farm.connect() as api:
            (submission,) = api.submit_many([CacheRequest(fasta=Path(YEAST))])
            (record,) = api.wait([submission.key], timeout_s=120)
        assert record is not None and record.status == "valid", record

        for dest in (
            second / f"{LAMBDA}.gvlfa",
            second / "out" / "yeast.gvlfa",
            Path(f"{elsewhere}.gvlfa"),
            fourth / f"{YEAST}.gvlfa",
        ):
            assert gvlfa.classify(dest, deep=True).state is State.FRESH, dest
        listed = [json.loads(r) for r in farm(embedded_env, "ls", "--json").stdout.splitlines()]
        assert len(listed) == 4 and {r["status"] for r in listed} == {"valid"}
        # One worker served all four directories: never restarted, never confined.
        assert (tmp_path / "state" / "worker.pid").read_text() == worker_pid
        for said in (submitted.stderr, waited.stderr, built.stderr):
            assert "FARM_ALLOWED_ROOTS" not in said and "allowed roots" not in said
    finally:
        farm(embedded_env, "server", "stop")


def test_only_the_embedded_default_writes_anywhere(tmp_path, monkeypatch):
    """A shared farm keeps the directory it runs in as its default root; a root set by hand
    is kept on either."""
    monkeypatch.chdir(tmp_path)
    assert Settings().roots == [Path("/")]
    assert Settings(redis_url="redis://localhost:6379/0").roots == [tmp_path.resolve()]
    assert Settings.from_env({"FARM_REDIS_URL": "redis://h/0"}).roots == [tmp_path.resolve()]
    assert Settings.from_env({"FARM_ALLOWED_ROOTS": "/srv"}).roots == [Path("/srv")]


def test_a_lost_embedded_redis_never_blames_farm_redis_url(monkeypatch):
    """The registry's sentence names FARM_REDIS_URL; a user of the embedded default never
    set it, so the command says which Redis it lost instead."""
    from farm.cli import _for_this_farm
    from farm.errors import BrokerError

    lost = BrokerError("Cannot reach the farm's Redis; check that FARM_REDIS_URL points at it.")
    lost.__cause__ = ConnectionRefusedError("Connection refused")
    monkeypatch.delenv("FARM_REDIS_URL", raising=False)
    said = _for_this_farm(lost)
    assert said.startswith("Lost the embedded Redis (Connection refused); run the command again")
    assert "FARM_" not in said
    monkeypatch.setenv("FARM_REDIS_URL", "redis://db:6379/0")
    assert _for_this_farm(lost) == str(lost)
