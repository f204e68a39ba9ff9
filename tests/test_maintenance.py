"""``farm reindex``: only the allowed roots are swept, and a record it already holds keeps what
it knew of its artifact (on a real Redis, from the shipped genomes)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from farm import kinds, maintenance, service
from farm.artifacts import gvlfa
from farm.artifacts.base import State
from farm.errors import InputError
from farm.orphans import remove_orphans
from farm.records import Status
from farm.registry import Registry
from farm.requests import prepare, request_key
from farm.versions import PublishMode
from tests.support.processes import farm_env
from tests.test_cli import farm
from tests.test_service import LAMBDA, _ensure, _prepared

KEPT = ("checksum", "worker", "build_seconds", "started_at", "finished_at", "created_at")


@pytest.fixture
def elsewhere(tmp_path_factory: pytest.TempPathFactory, genomes: Path) -> Path:
    """A genome with a valid cache beside it, outside the test's allowed root."""
    out = tmp_path_factory.mktemp("elsewhere")
    shutil.copy2(genomes / LAMBDA, out / LAMBDA)
    gvlfa.ensure_cache(out / LAMBDA)
    return out


def _keys(registry: Registry) -> list[bytes]:
    return sorted(registry._r.keys("*"))


def test_reindex_refuses_a_root_outside_the_allowed_roots(
    elsewhere: Path, tmp_path: Path, registry: Registry, farm_settings
) -> None:
    before = _keys(registry)
    link = tmp_path / "link"
    link.symlink_to(elsewhere)  # inside by its name, outside where it leads
    for root in (elsewhere, tmp_path.parent, link):
        with pytest.raises(InputError) as info:
            maintenance.reindex(registry, root, allowed=farm_settings.roots)
        message = str(info.value)
        assert message.startswith(f"{root} is outside the allowed roots")
        assert message.count(". ") == 0 and message.endswith(".")
    assert _keys(registry) == before


def test_farm_reindex_outside_the_allowed_roots_is_one_sentence(
    elsewhere: Path, redis_url: str, tmp_path: Path, registry: Registry
) -> None:
    before = _keys(registry)
    result = farm(farm_env(redis_url, tmp_path), "reindex", str(elsewhere))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and f"{elsewhere} is outside" in result.stderr
    assert _keys(registry) == before


def test_reindex_keeps_what_a_valid_record_knew(genomes: Path, registry: Registry, farm_settings):
    request, key = _prepared(genomes, farm_settings)
    built = _ensure(request, key, service.Context(registry, farm_settings, "w-built"))
    assert built.status is Status.VALID and built.build_seconds is not None

    (again,) = maintenance.reindex(registry, genomes, allowed=farm_settings.roots)
    assert again.key == key and again.status is Status.VALID and again.action == "reindexed"
    assert {f: getattr(again, f) for f in KEPT} == {f: getattr(built, f) for f in KEPT}
    assert again.worker == "w-built" and again.checksum is not None
    assert registry.get(key) == again

    # A record lost with the registry is found again, from the artifact alone.
    registry.forget([key])
    (found,) = maintenance.reindex(registry, genomes, allowed=farm_settings.roots)
    assert found.key == key and found.status is Status.VALID
    assert found.checksum == built.checksum and found.worker is None


def test_reindex_does_not_lend_a_record_to_an_artifact_it_does_not_describe(
    genomes: Path, registry: Registry, farm_settings
) -> None:
    request, key = _prepared(genomes, farm_settings)
    built = _ensure(request, key, service.Context(registry, farm_settings, "w-built"))
    # The cache is replaced by one GenVarLoader wrote: same source, no farm checksum.
    dest = Path(built.dest)
    meta = gvlfa.read_metadata(dest)
    stripped = meta.model_copy(update={"sequence_checksum": None, "farm_version": None})
    (dest / gvlfa.METADATA_FILE).write_text(stripped.model_dump_json())

    (again,) = maintenance.reindex(registry, genomes, allowed=farm_settings.roots)
    assert again.key == key and again.status is Status.VALID
    assert again.checksum is None and again.worker is None and again.build_seconds is None
    assert again.created_at > built.created_at


def test_reindex_leaves_a_key_in_flight_to_its_builder(
    genomes: Path, registry: Registry, farm_settings
) -> None:
    request, key = _prepared(genomes, farm_settings)
    gvlfa.ensure_cache(request.fasta)  # an artifact on disk, and its key queued again
    queued = service.queued_record(request, key, request_key(request)[1])
    registry.claim_many([queued], send_grace_s=60)
    (seen,) = maintenance.reindex(registry, genomes, allowed=farm_settings.roots)
    assert seen.key == key and seen.status is Status.QUEUED
    assert registry.get(key).status is Status.QUEUED


# --- farm verify: a damaged farm.json is invalid, a changed source stale -----------------------


def _digit_flipped(text: str, at: int) -> str:
    """``text`` with the hex digit at ``at`` replaced by another: same size, still JSON."""
    return text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :]


def _damages(text: str) -> dict[str, str]:
    record = json.loads(text)
    source = next(iter(record["sources"].values()))
    checksum = next(iter(record["checksums"].values()))
    return {
        "a source's digest": _digit_flipped(text, text.index(source["digest"]) + 7),
        "a source's size": text.replace(
            f'"size_bytes": {source["size_bytes"]}', f'"size_bytes": {source["size_bytes"] + 1}', 1
        ),
        "the request": text.replace('"max_jitter": 0', '"max_jitter": 5', 1),
        "a file's checksum": _digit_flipped(text, text.index(checksum) + 12),
        "the seal's name": text.replace('"seal"', '"sea1"', 1),
        "the seal": _digit_flipped(text, text.index('"seal"') + 20),
    }


def test_verify_tells_a_damaged_farm_json_from_a_changed_source(
    tmp_path: Path, registry: Registry, farm_settings
) -> None:
    from tests.support.dataset_data import DATA, SIRPB2, sirpb2_request

    inputs = tmp_path / "chr20"
    shutil.copytree(DATA, inputs)
    request = prepare(sirpb2_request(inputs, tmp_path / "ds.gvl"), farm_settings.roots)
    key = request_key(request)[0]
    built = _ensure(request, key, service.Context(registry, farm_settings, "w"))
    assert built.status is Status.VALID
    record_file = Path(built.dest) / "farm.json"
    pristine = record_file.read_text()
    assert (maintenance.verify_record(built)).status is Status.VALID

    for what, damaged in _damages(pristine).items():
        assert damaged != pristine, what
        record_file.write_text(damaged)
        verdict = maintenance.verify_record(built)
        assert verdict.status is Status.INVALID and verdict.rebuild, (what, verdict.error)
        assert "farm.json" in verdict.error, (what, verdict.error)
        record_file.write_text(pristine)

    # Reindex does not record a dataset from a damaged farm.json under any key.
    record_file.write_text(_damages(pristine)["the request"])
    registry.forget([key])
    assert list(maintenance.reindex(registry, tmp_path, allowed=farm_settings.roots)) == []
    record_file.write_text(pristine)

    # A source that really changed is stale, with farm.json intact or not.
    with open(inputs / SIRPB2, "a") as f:
        f.write("20\t1500000\t1500100\textra\t0\t+\t+\n")
    for text in (pristine, _damages(pristine)["a source's digest"]):
        record_file.write_text(text)
        verdict = maintenance.verify_record(built)
        assert verdict.status is Status.STALE and "changed" in verdict.error, verdict.error


# --- destinations that are links to versions (FARM_PUBLISH_MODE=link) --------------------------


def test_verify_reindex_and_gc_follow_a_destination_that_is_a_link(
    genomes: Path, registry: Registry, farm_settings
) -> None:
    settings = farm_settings.model_copy(update={"publish_mode": PublishMode.LINK})
    ctx = service.Context(registry, settings, "w-link")
    request, key = _prepared(genomes, settings)
    built = _ensure(request, key, ctx)
    dest = Path(built.dest)
    assert built.status is Status.VALID and dest.is_symlink()
    # Found invalid and requested again: a forced rebuild replaces it.
    registry.put(built.evolve(status=Status.INVALID, rebuild=True, error="damaged"))
    queued = service.queued_record(request, key, request_key(request)[1])
    assert registry.claim_many([queued.evolve(rebuild=True)], send_grace_s=60)[0].enqueue
    rebuilt = _ensure(request, key, ctx)
    assert rebuilt.action == "rebuilt" and rebuilt.generation == kinds.fence_of(dest).generation
    old = [v for v in os.listdir(genomes / f".{dest.name}.farmv") if v != dest.resolve().name]
    assert len(old) == 1  # kept for its grace

    (verdict,) = maintenance.verify(registry, [key])
    assert verdict.status is Status.VALID, verdict.error
    assert list(maintenance.find_artifacts(genomes)) == [dest]  # the link, not its versions
    (again,) = maintenance.reindex(registry, genomes, allowed=settings.roots)
    assert again.key == key and again.status is Status.VALID and again.dest == str(dest)
    assert again.generation == rebuilt.generation

    within = list(maintenance.gc(registry, [genomes], grace_s=0, allowed=settings.roots,
                                 version_grace_s=3600))  # fmt: skip
    assert within == []
    (orphan,) = maintenance.gc(
        registry, [genomes], grace_s=0, allowed=settings.roots, version_grace_s=0
    )
    assert orphan.path.name == old[0]
    remove_orphans([orphan])
    assert os.listdir(genomes / f".{dest.name}.farmv") == [dest.resolve().name]
    assert gvlfa.classify(dest, deep=True).state is State.FRESH
    (verdict,) = maintenance.verify(registry, [key])
    assert verdict.status is Status.VALID
