"""A build's progress in the registry, and its cancellation: a real builder, a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from farm import progress, service
from farm.artifacts import gvlfa
from farm.errors import BuildCancelled
from farm.progress import RegistryProgress
from farm.records import Status
from farm.registry import Registry
from tests.support.processes import PROJECT, farm_env
from tests.test_registry import claim as claim_key
from tests.test_registry import record

YEAST = "yeast_S288C_chrI_SGD2005.fa"


def reporter(registry: Registry, key: str, claim: str = "c1") -> RegistryProgress:
    """A builder's reporter under a real grant of ``key`` (claimed first if need be)."""
    if registry.get(key) is None:
        claim_key(registry, record(key))
    started = registry.start(key, "builder", 30)
    assert started.leased
    return RegistryProgress(
        registry,
        key,
        holder="builder",
        generation=started.generation,
        claim=claim,
        what="the cache",
        ttl_s=30,
        every_s=0,
    )


def test_a_builder_reports_its_progress_in_the_registry(registry: Registry, genomes: Path):
    fasta = genomes / YEAST
    gvlfa.ensure_cache(fasta, progress=reporter(registry, "k-progress"))
    ((_, figures),) = registry.get_many_raw(["k-progress"])
    lengths = gvlfa.read_metadata(gvlfa.default_dest(fasta)).contigs
    assert figures["unit"] == "bp" and figures["total"] == sum(lengths.values())
    assert figures["done"] == figures["total"]
    assert progress.describe(figures).startswith(f"100% of {figures['total']:,} bp")


def test_a_cancelled_build_stops_and_publishes_nothing(registry: Registry, genomes: Path):
    fasta = genomes / YEAST
    registry.request_cancel("k-cancel", "c1", ttl_s=60)
    with pytest.raises(BuildCancelled, match="cancelled"):
        gvlfa.ensure_cache(fasta, progress=reporter(registry, "k-cancel"))
    assert not gvlfa.default_dest(fasta).exists()
    assert [p.name for p in genomes.iterdir() if ".farmtmp." in p.name] == []


def test_a_cancellation_of_an_earlier_claim_does_not_stop_a_new_one(
    registry: Registry, genomes: Path
):
    registry.request_cancel("k-later", "an earlier claim", ttl_s=60)
    result = gvlfa.ensure_cache(genomes / YEAST, progress=reporter(registry, "k-later"))
    assert result.action == "built"


def test_cancel_fails_a_queued_key_and_status_shows_a_builds_progress(
    registry: Registry, redis_url: str, tmp_path: Path
):
    queued, building = "ab" * 32, "cd" * 32
    registry.put(record(queued))
    registry.put(record(building, Status.BUILDING))
    gen = registry.start(building, "builder", 60).generation
    figures = {"done": 25, "total": 100, "unit": "regions", "started_at": 0.0, "updated_at": 5.0}
    assert registry.report_progress(building, "builder", gen, figures, ttl_s=60) == (True, None)
    env = farm_env(redis_url, tmp_path)

    def farm(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "farm.cli", *args]
        return subprocess.run(argv, env=env, cwd=PROJECT, capture_output=True, text=True)

    shown = farm("status", building[:10], "--json")
    assert json.loads(shown.stdout)["progress"] == figures
    table = farm("status", building).stdout
    assert "25% of 100 regions, 5 regions/s, 15 s left" in table

    cancelled = farm("cancel", queued[:8])
    assert cancelled.returncode == 0, cancelled.stderr
    after = registry.get(queued)
    assert after is not None and after.status is Status.FAILED and "cancelled" in after.error
    # the building key is asked to stop: its builder raises at its next report
    service.request_cancel(registry, building, ttl_s=60)
    claim = service.claim_id(registry.get(building))
    builder = reporter(registry, building, claim)
    builder.start(10, "bp")  # the first report is due after every_s (here 0), not at once
    with pytest.raises(BuildCancelled):
        builder.advance(1)


def test_help_and_status_load_no_heavy_library(redis_url: str, tmp_path: Path):
    """Start-up time is measured in bench/; here, what makes it: neither `--help` nor
    `status` may load pydantic, numpy, celery or the builders."""
    heavy = ("pydantic", "numpy", "celery", "pyarrow", "farm.artifacts", "farm.client")
    probe = (
        "import sys; from farm.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        f"print([m for m in sys.modules if m.startswith({heavy!r})], file=sys.stderr)"
    )
    env = farm_env(redis_url, tmp_path)
    for args in (["--help"], ["status", "0" * 64]):
        ran = subprocess.run(
            [sys.executable, "-c", probe, *args], env=env, cwd=PROJECT, capture_output=True,
            text=True,
        )  # fmt: skip
        assert ran.stderr.strip().splitlines()[-1] == "[]", (args, ran.stderr)
