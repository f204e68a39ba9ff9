"""``service.ensure``, the whole of a worker's job, on a real Redis with no broker involved."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from farm import service
from farm.artifacts import gvlfa
from farm.config import Settings
from farm.kinds import CacheRequest
from farm.records import ArtifactRecord, Status
from farm.registry import Registry
from farm.requests import BuildRequest, prepare, request_key

LAMBDA = "lambda_NC_001416.1.fa"


def _prepared(genomes: Path, settings: Settings, name: str = LAMBDA, **kw) -> tuple:
    request = prepare(CacheRequest(fasta=genomes / name, **kw), settings.roots)
    return request, request_key(request)[0]


def _ensure(request: BuildRequest, key: str, ctx: service.Context, **kw) -> ArtifactRecord:
    """A worker's delivery of ``key``, submitted first if it is not recorded yet (a worker
    builds only what was submitted: the request is read from the key's record)."""
    if ctx.registry.get(key) is None:
        record = service.queued_record(request, key, request_key(request)[1])
        ctx.registry.claim_many([record], send_grace_s=60)
    record = service.ensure(key, ctx, **kw)
    assert record is not None
    return record


def test_builds_records_and_then_reuses(genomes: Path, registry: Registry, farm_settings):
    request, key = _prepared(genomes, farm_settings)
    ctx = service.Context(registry, farm_settings, "test-worker")
    record = _ensure(request, key, ctx)
    assert record.status is Status.VALID
    assert record.action == "built"
    assert record.worker == "test-worker"
    dest = Path(record.dest)
    meta = gvlfa.read_metadata(dest)
    assert record.checksum == meta.sequence_checksum
    assert record.size_bytes == sum(p.stat().st_size for p in dest.iterdir())
    assert record.sources["fasta"] == meta.fingerprint
    assert registry.get(key) == record
    inode = (dest / gvlfa.DATA_FILE).stat().st_ino

    again = _ensure(request, key, ctx)
    assert again.status is Status.VALID
    assert (dest / gvlfa.DATA_FILE).stat().st_ino == inode  # not rebuilt
    assert registry.lease_holder(key) is None


def test_an_artifact_valid_on_disk_is_adopted_not_rebuilt(genomes, registry, farm_settings):
    request, key = _prepared(genomes, farm_settings)
    gvlfa.ensure_cache(request.fasta, request.destination())
    inode = (request.destination() / gvlfa.DATA_FILE).stat().st_ino
    record = _ensure(request, key, service.Context(registry, farm_settings, "w"))
    assert record.status is Status.VALID and record.action == "reused"
    assert (request.destination() / gvlfa.DATA_FILE).stat().st_ino == inode


def test_bad_input_fails_the_job_with_one_sentence(genomes, registry, farm_settings):
    not_fasta = genomes / "notes.fa"
    not_fasta.write_text("this is a text file, not a FASTA\n")
    request, key = _prepared(genomes, farm_settings, "notes.fa")
    record = _ensure(request, key, service.Context(registry, farm_settings, "w"))
    assert record.status is Status.FAILED
    assert "notes.fa is not a FASTA file" in record.error
    assert "\n" not in record.error and "Traceback" not in record.error
    assert not request.destination().exists()
    assert [p.name for p in genomes.iterdir() if ".farmtmp." in p.name] == []


def test_a_source_changed_after_submission_fails_and_builds_nothing(
    genomes, registry, farm_settings
):
    request, key = _prepared(genomes, farm_settings)
    registry.claim_many(
        [service.queued_record(request, key, request_key(request)[1])], send_grace_s=60
    )  # submitted ...
    with open(genomes / LAMBDA, "ab") as f:  # ... then edited before a worker took it
        f.write(b"ACGT\n")
    record = _ensure(request, key, service.Context(registry, farm_settings, "w"))
    assert record.status is Status.FAILED
    assert f"{genomes / LAMBDA} changed after its cache was requested" in record.error
    assert not request.destination().exists()


def test_a_duplicate_frees_its_slot_at_once_instead_of_waiting_for_the_holder(
    genomes, registry, farm_settings
):
    request, key = _prepared(genomes, farm_settings)
    registry.claim_many([service.queued_record(request, key, {})], send_grace_s=60)
    assert registry.start(key, "someone-else", 30.0).leased
    record = _ensure(request, key, service.Context(registry, farm_settings, "duplicate"))
    # It returned while the holder still has the key (a follower that waited would only come
    # back with a terminal record, after the holder or the lease's TTL).
    assert record.status is Status.BUILDING
    assert not request.destination().exists()
    assert registry.lease_holder(key) == "someone-else"


def test_a_late_message_never_rebuilds_a_terminal_key(genomes, registry, farm_settings):
    """Only a new submission puts a key back in flight: a message redelivered after the key
    failed (or was found invalid) is answered from the record."""
    request, key = _prepared(genomes, farm_settings)
    ctx = service.Context(registry, farm_settings, "w")
    built = _ensure(request, key, ctx)
    registry.put(built.evolve(status=Status.INVALID, error="checked by verify"))
    again = _ensure(request, key, ctx)
    assert again.status is Status.INVALID and again.error == "checked by verify"


def test_a_stop_request_hands_the_key_back_and_leaves_nothing_staged(
    genomes, registry, farm_settings, monkeypatch
):
    from farm import kinds
    from farm.errors import StopRequested

    request, key = _prepared(genomes, farm_settings)
    registry.claim_many([service.queued_record(request, key, {})], send_grace_s=60)
    real_ensure = kinds.ensure

    def stopped_mid_build(req, owner, **kw):
        staged = request.destination().with_name(request.destination().name + ".farmtmp.x")
        staged.mkdir()
        try:
            raise StopRequested
        finally:
            staged.rmdir()

    monkeypatch.setattr(kinds, "ensure", stopped_mid_build)
    ctx = service.Context(registry, farm_settings, "stopping")
    try:
        _ensure(request, key, ctx)
    except StopRequested:
        pass
    else:
        raise AssertionError("StopRequested must propagate to the task, which requeues")
    record = registry.get(key)
    assert record.status is Status.QUEUED and record.action == "handed back"
    assert registry.lease_holder(key) is None
    assert registry.due_keys(time.time()) == [key]  # the watchdog sends it at once
    assert registry.start(key, "probe", 5).attempt == 1, "an interrupted stop is not an attempt"
    registry.release_lease(key, "probe")
    monkeypatch.setattr(kinds, "ensure", real_ensure)
    assert _ensure(request, key, ctx).status is Status.VALID


def test_ctrl_c_on_an_inline_build_cancels_it_and_says_so(
    genomes, registry, farm_settings, monkeypatch
):
    from farm import kinds

    request, key = _prepared(genomes, farm_settings)

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(kinds, "ensure", interrupted)
    with contextlib.suppress(KeyboardInterrupt):
        _ensure(request, key, service.Context(registry, farm_settings, "inline"))
    record = registry.get(key)
    assert record.status is Status.FAILED and "cancelled" in record.error
    assert registry.lease_holder(key) is None


def test_a_key_that_keeps_killing_its_worker_stops_after_max_attempts(
    genomes, registry, farm_settings
):
    request, key = _prepared(genomes, farm_settings)
    registry.claim_many([service.queued_record(request, key, {})], send_grace_s=60)
    for _ in range(farm_settings.max_attempts):  # earlier deliveries that died mid-build
        assert registry.start(key, "killed", 5).leased
    registry.release_lease(key, "killed")
    record = _ensure(request, key, service.Context(registry, farm_settings, "w"))
    assert record.status is Status.FAILED
    assert "interrupted 3 times" in record.error
    assert not request.destination().exists()


def test_a_worker_refuses_a_destination_outside_its_roots(genomes, registry, farm_settings):
    """A crafted message cannot make a worker write outside the roots it was given."""
    request = CacheRequest(fasta=genomes / LAMBDA, dest=Path("/elsewhere/x.gvlfa")).absolute()
    key = request_key(request)[0]
    record = _ensure(request, key, service.Context(registry, farm_settings, "w"))
    assert record.status is Status.FAILED
    assert "/elsewhere/x.gvlfa is outside the allowed roots" in record.error
    assert not Path("/elsewhere").exists()


class _Interrupted(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded: the service only knows it by the tuple."""


def test_a_time_limit_and_an_internal_error_are_recorded_as_sentences(
    genomes, registry, farm_settings, monkeypatch
):
    from farm import kinds

    request, key = _prepared(genomes, farm_settings)
    ctx = service.Context(registry, farm_settings, "w")

    def interrupted(*_a, **_k):
        raise _Interrupted

    monkeypatch.setattr(kinds, "ensure", interrupted)
    record = _ensure(request, key, ctx, interrupts=(_Interrupted,))
    assert record.status is Status.FAILED and "exceeded the time limit" in record.error

    def broken(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(kinds, "ensure", broken)
    # A failed key is built again only when submitted again.
    resubmitted = service.queued_record(request, key, record.sources)
    assert registry.claim_many([resubmitted], send_grace_s=60)[0].enqueue
    record = _ensure(request, key, ctx, interrupts=(_Interrupted,))
    assert record.status is Status.FAILED
    assert record.error.startswith("Internal error") and "RuntimeError: boom" in record.error
    assert registry.lease_holder(key) is None


def test_a_destination_rebuilt_for_another_request_supersedes_the_old_record(
    tmp_path, registry, farm_settings
):
    """Same destination, other parameters: the dataset is rebuilt, not silently reused, and
    the first key's record turns stale (and stays stale under verify)."""
    import shutil

    import genvarloader as gvl

    from farm import maintenance
    from tests.support.dataset_data import DATA, sirpb2_request

    inputs = tmp_path / "chr20"
    shutil.copytree(DATA, inputs)
    ctx = service.Context(registry, farm_settings, "w")
    records = []
    for samples in (("NA06989", "NA07000"), ("NA06994",)):
        request = prepare(
            sirpb2_request(inputs, tmp_path / "ds.gvl", samples=samples), farm_settings.roots
        )
        records.append(_ensure(request, request_key(request)[0], ctx))
    first, second = records
    assert first.key != second.key
    assert (first.action, second.action) == ("built", "rebuilt")
    assert registry.get(first.key).status is Status.STALE
    assert registry.get(second.key).status is Status.VALID
    ds = gvl.Dataset.open(tmp_path / "ds.gvl", inputs / "GRCh37_chr20_0-2Mb_Nmasked_first1Mb.fa.gz")
    assert list(ds.samples) == ["NA06994"]
    verdicts = {r.key: r.status for r in maintenance.verify(registry)}
    assert verdicts == {first.key: Status.STALE, second.key: Status.VALID}


def test_a_cache_destination_taken_by_another_fasta_stays_stale_under_verify(
    genomes, registry, farm_settings
):
    from farm import maintenance

    ctx = service.Context(registry, farm_settings, "w")
    dest = genomes / "shared.gvlfa"
    keys = []
    for name in (LAMBDA, "yeast_S288C_chrI_SGD2005.fa"):
        request, key = _prepared(genomes, farm_settings, name, dest=dest)
        assert _ensure(request, key, ctx).status is Status.VALID
        keys.append(key)
    assert gvlfa.read_metadata(dest).contigs == {"chrI": 230208}
    verdicts = {r.key: r.status for r in maintenance.verify(registry)}
    assert verdicts == {keys[0]: Status.STALE, keys[1]: Status.VALID}


def test_reindex_never_makes_an_invalid_artifact_valid_on_a_shallow_check(
    genomes, registry, farm_settings
):
    from farm import maintenance

    request, key = _prepared(genomes, farm_settings)
    built = _ensure(request, key, service.Context(registry, farm_settings, "w"))
    data = Path(built.dest) / gvlfa.DATA_FILE
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x20  # same size: the shallow check cannot see it
    data.write_bytes(bytes(raw))
    (verdict,) = maintenance.verify(registry, [key])
    assert verdict.status is Status.INVALID and verdict.rebuild
    (reindexed,) = maintenance.reindex(registry, genomes, allowed=farm_settings.roots)
    assert reindexed.key == key and reindexed.status is Status.INVALID
    assert registry.get(key).status is Status.INVALID


def test_a_key_nobody_submitted_builds_nothing_and_records_nothing(registry, farm_settings):
    """A message names a key, and the request is that key's record: a forged message can
    only ask for a build that was submitted."""
    ctx = service.Context(registry, farm_settings, "w")
    assert service.ensure("a" * 64, ctx) is None
    assert registry.get("a" * 64) is None and registry.lease_holder("a" * 64) is None
