"""The ``farm`` command as a user runs it: a real process, a real Redis, real workers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from farm.artifacts import gvlfa
from farm.artifacts.base import State
from farm.publish import Owner, staging_path
from farm.records import ArtifactRecord, Status
from farm.registry import Registry
from tests.support.processes import PROJECT, farm_env

LAMBDA = "lambda_NC_001416.1.fa"
YEAST = "yeast_S288C_chrI_SGD2005.fa"


def farm(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args],
        env=env,
        cwd=cwd or PROJECT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def assert_one_sentence(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return farm_env(redis_url, tmp_path)


def test_embedded_default_builds_at_once_then_keeps_a_worker(tmp_path, genomes):
    """No FARM_REDIS_URL, no worker: the first build runs here while the embedded worker
    starts for the next ones; `farm server stop` stops both worker and Redis."""
    env = farm_env("", tmp_path)
    del env["FARM_REDIS_URL"]
    state = tmp_path / "state"
    env["FARM_STATE_DIR"] = str(state)
    try:
        result = farm(env, "build", "cache", str(genomes / YEAST))
        assert result.returncode == 0, result.stderr
        dest = genomes / f"{YEAST}.gvlfa"
        assert result.stdout.strip() == str(dest)
        assert gvlfa.classify(dest, deep=True).state is State.FRESH
        listed = [json.loads(line) for line in farm(env, "ls", "--json").stdout.splitlines()]
        assert [(r["status"], r["dest"], r["action"]) for r in listed] == [
            ("valid", str(dest), "built")
        ]
        assert listed[0]["worker"].startswith("inline@")
        assert (state / "redis.sock").exists() and (state / "appendonlydir").is_dir()
        worker_pid = int((state / "worker.pid").read_text())
        os.kill(worker_pid, 0)  # started for the next build, and still there

        registry = Registry.from_url(f"unix://{state / 'redis.sock'}")
        deadline = time.monotonic() + 60
        while not registry.live_workers(within_s=6) and time.monotonic() < deadline:
            time.sleep(0.1)
        second = farm(env, "build", "cache", str(genomes / LAMBDA))
        assert second.returncode == 0, second.stderr
        (record,) = [
            json.loads(line)
            for line in farm(env, "ls", "--json").stdout.splitlines()
            if LAMBDA in line
        ]
        assert record["worker"].startswith("embedded-"), record  # through the queue this time
        # Its log says which build ran (one line per state change of a key).
        log = (state / "worker.log").read_text()
        assert f"key={record['key']} kind=cache status=valid action=built" in log
    finally:
        pid = int((state / "redis.pid").read_text())
        stopped = farm(env, "server", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stderr == (
        f"Stopped the embedded worker (pid {worker_pid}) and the embedded Redis (pid {pid}, "
        f"unix://{state / 'redis.sock'}).\n"
    )
    for gone in (pid, worker_pid):
        with pytest.raises(ProcessLookupError):
            os.kill(gone, 0)
    again = farm(env, "server", "stop")
    assert again.returncode == 0 and again.stderr.startswith("Nothing to stop")


def test_version_names_the_package_and_both_formats(tmp_path):
    import farm as package
    from farm.artifacts.dataset.writer import FORMAT_VERSION as DATASET
    from farm.artifacts.gvlfa import FORMAT_VERSION as CACHE

    shown = farm(farm_env("", tmp_path), "--version")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == (
        f"gvl-farm {package.__version__} (cache format {CACHE}, dataset format {DATASET})\n"
    )


def test_the_embedded_worker_exits_when_idle(tmp_path, genomes):
    env = farm_env("", tmp_path)
    del env["FARM_REDIS_URL"]
    env["FARM_STATE_DIR"] = str(tmp_path / "state")
    env["FARM_EMBEDDED_IDLE_S"] = "2"
    try:
        assert farm(env, "server", "start").returncode == 0
        worker_pid = int((tmp_path / "state" / "worker.pid").read_text())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(worker_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the idle embedded worker did not exit")
    finally:
        farm(env, "server", "stop")


def test_submit_status_wait_and_json(env, genomes, start_workers):
    start_workers(1)
    key = farm(env, "submit", "cache", str(genomes / LAMBDA)).stdout.strip()
    assert len(key) == 64
    waited = farm(env, "wait", key, "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    (status,) = [
        json.loads(line) for line in farm(env, "status", key, "--json").stdout.splitlines()
    ]
    assert status["key"] == key
    assert status["kind"] == "cache"
    assert status["status"] == "valid"
    assert status["dest"] == str(genomes / f"{LAMBDA}.gvlfa")
    assert "error" not in status
    dest = genomes / f"{LAMBDA}.gvlfa"
    assert status["checksum"] == gvlfa.read_metadata(dest).sequence_checksum


def test_bad_input_gets_one_sentence_and_a_failed_job(env, genomes, start_workers, tmp_path):
    start_workers(1)
    (genomes / "notes.fa").write_text("plain notes, not a FASTA\n")
    result = farm(env, "build", "cache", str(genomes / "notes.fa"))
    assert_one_sentence(result, "notes.fa is not a FASTA file")
    assert not (genomes / "notes.fa.gvlfa").exists()

    key = farm(env, "submit", "cache", str(genomes / "notes.fa")).stdout.strip()
    (status,) = [
        json.loads(line) for line in farm(env, "status", key, "--json").stdout.splitlines()
    ]
    assert status["status"] == "failed" and "not a FASTA file" in status["error"]

    good = farm(env, "submit", "cache", str(genomes / LAMBDA)).stdout.strip()
    waited = farm(env, "wait", good, key, "--timeout", "60")
    assert waited.returncode == 1
    assert key in waited.stderr and good not in waited.stderr

    missing = farm(env, "build", "cache", str(genomes / "missing.fa"))
    assert_one_sentence(missing, "missing.fa does not exist")
    outside = farm(env, "submit", "cache", str(genomes / LAMBDA), "--dest", "/outside.gvlfa")
    assert_one_sentence(outside, "/outside.gvlfa is outside the allowed roots")


def test_a_manifest_batch_of_mixed_requests(env, genomes, start_workers, tmp_path):
    start_workers(1)
    manifest = tmp_path / "batch.jsonl"
    lines = [
        {"kind": "cache", "fasta": str(genomes / LAMBDA)},
        {"kind": "cache", "fasta": str(genomes / YEAST)},
        {
            "kind": "cache",
            "fasta": str(genomes / f"{LAMBDA}.bgz"),
            "dest": str(tmp_path / "b.gvlfa"),
        },
    ]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    keys = farm(env, "submit", "--manifest", str(manifest)).stdout.split()
    assert len(set(keys)) == 3
    assert farm(env, "wait", *keys, "--timeout", "60").returncode == 0

    lines.append({"kind": "cache", "fasta": str(genomes / "nope.fa")})
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    before = _all_keys(Registry.from_url(env["FARM_REDIS_URL"]))
    refused = farm(env, "submit", "--manifest", str(manifest))
    assert_one_sentence(refused, "Request 4", "nope.fa does not exist", "Nothing was submitted")
    assert _all_keys(Registry.from_url(env["FARM_REDIS_URL"])) == before


def test_verify_reindex_and_gc(env, genomes, start_workers, tmp_path):
    start_workers(1)
    keys = [
        farm(env, "submit", "cache", str(genomes / name)).stdout.strip() for name in (LAMBDA, YEAST)
    ]
    assert farm(env, "wait", *keys, "--timeout", "60").returncode == 0
    assert farm(env, "verify").returncode == 0

    # A same-size corruption, invisible to GenVarLoader's size check, and a changed source.
    data = genomes / f"{LAMBDA}.gvlfa" / gvlfa.DATA_FILE
    raw = bytearray(data.read_bytes())
    raw[100] = ord("N") if raw[100] != ord("N") else ord("A")
    data.write_bytes(bytes(raw))
    with open(genomes / YEAST, "ab") as f:
        f.write(b"ACGT\n")
    assert farm(env, "verify").returncode == 1
    records = {
        r["key"]: r
        for r in map(json.loads, farm(env, "status", *keys, "--json").stdout.split("\n")[:2])
    }
    assert records[keys[0]]["status"] == "invalid" and "checksum" in records[keys[0]]["error"]
    assert records[keys[1]]["status"] == "stale" and "changed" in records[keys[1]]["error"]

    # Losing the registry loses no artifact: reindex finds the caches and their keys again.
    registry = Registry.from_url(env["FARM_REDIS_URL"])
    registry._r.flushdb()
    (genomes / YEAST).write_bytes((PROJECT / "data" / "genomes" / YEAST).read_bytes())
    assert farm(env, "reindex", str(genomes)).returncode == 0
    assert _all_keys(registry) == sorted(keys)
    assert registry.get(keys[1]).status == "valid"
    # reindex is shallow (sizes and fingerprints); the deep check is verify's job
    assert registry.get(keys[0]).status == "valid"
    assert farm(env, "verify", keys[0]).returncode == 1

    # gc removes the staging dir of a dead builder and keeps a live one's.
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = staging_path(genomes / "x.gvlfa", Owner("job1", dead.pid, Owner.current().host))
    live = staging_path(genomes / "y.gvlfa", Owner.current("job2"))
    orphan.mkdir()
    live.mkdir()
    swept = farm(env, "gc", str(genomes))
    assert swept.returncode == 0 and str(orphan) in swept.stdout
    assert not orphan.exists() and live.exists()

    # Another host's: kept while a lease on its key lives (one lookup by the owner tag).
    building, dead_key = "a" * 64, "b" * 64
    now = time.time()
    registry.claim_many(
        [ArtifactRecord(key=building, kind="cache", dest=str(genomes / "z.gvlfa"), request={},
                        sources={}, status=Status.QUEUED, created_at=now, updated_at=now)],
        send_grace_s=60,
    )  # fmt: skip
    assert registry.start(building, "elsewhere-worker", 60).leased
    held = staging_path(genomes / "z.gvlfa", Owner(building[:24], 4242, "elsewhere"))
    left = staging_path(genomes / "w.gvlfa", Owner(dead_key[:24], 4242, "elsewhere"))
    held.mkdir()
    left.mkdir()
    swept = farm(env, "gc", "--grace", "0", str(genomes))
    assert swept.returncode == 0 and held.exists() and not left.exists()


CHR20 = PROJECT / "data" / "grch37_chr20"
VCF = "1kgp_203samples_unphased.chr20_1000001-2000000.vcf.gz"
PGEN = "plink2/1kgp_203samples.chr20_1000001-2000000.pgen"
FASTA20 = "GRCh37_chr20_0-2Mb_Nmasked_first1Mb.fa.gz"


@pytest.fixture
def chr20(tmp_path: Path) -> Path:
    dest = tmp_path / "chr20"
    shutil.copytree(CHR20, dest)
    return dest


def test_datasets_and_caches_share_the_queue_and_open_in_genvarloader(
    env, chr20, start_workers, tmp_path
):
    import genvarloader as gvl

    start_workers(1)
    manifest = tmp_path / "mixed.jsonl"
    requests = [
        {"kind": "cache", "fasta": str(chr20 / FASTA20)},
        {
            "kind": "dataset",
            "variants": str(chr20 / VCF),
            "regions": str(chr20 / "SIRPB2_refseq.chr20.bed"),
            "dest": str(tmp_path / "vcf.gvl"),
            "strand_column": 7,
        },
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in requests))
    keys = farm(env, "submit", "--manifest", str(manifest)).stdout.split()
    assert farm(env, "wait", *keys, "--timeout", "120").returncode == 0
    built = farm(
        env, "build", "dataset", "--variants", str(chr20 / PGEN),
        "--regions", str(chr20 / "SIRPB2_refseq.chr20.bed"), "--dest", str(tmp_path / "pgen.gvl"),
        "--strand-column", "7", "--samples", "NA06989,NA07000", "--timeout", "120",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == str(tmp_path / "pgen.gvl")

    reference = gvl.Reference.from_path(chr20 / FASTA20)
    full = gvl.Dataset.open(tmp_path / "vcf.gvl", reference).with_seqs("haplotypes")
    subset = gvl.Dataset.open(tmp_path / "pgen.gvl", reference).with_seqs("haplotypes")
    assert full.shape == (7, 203) and subset.shape == (7, 2)
    assert list(subset.samples) == ["NA06989", "NA07000"]
    columns = [list(full.samples).index(s) for s in subset.samples]
    got, want = subset[:, :], full[:, columns]
    np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(want.lengths))
    np.testing.assert_array_equal(np.asarray(got.data), np.asarray(want.data))

    listed = {r["dest"]: r for r in map(json.loads, farm(env, "ls", "--json").stdout.splitlines())}
    assert listed[str(tmp_path / "pgen.gvl")]["kind"] == "dataset"
    assert farm(env, "verify").returncode == 0


def test_a_tracks_only_dataset_goes_through_the_queue(env, chr20, start_workers, tmp_path):
    import genvarloader as gvl

    from tests.test_dataset_tracks import make_bigwig, make_table

    start_workers(1)
    samples = ["NA12878", "NA06994"]
    for i, sample in enumerate(samples):
        make_bigwig(chr20 / f"{sample}.bw", i)
    listing = chr20 / "signal.tsv"  # paths relative to the listing
    listing.write_text("".join(f"{s}\t{s}.bw\n" for s in samples))
    bed = chr20 / "windows.bed"
    bed.write_text(
        "".join(f"20\t{1_000_000 + i * 7_000}\t{1_002_000 + i * 7_000}\n" for i in range(30))
    )
    dest = tmp_path / "tracks.gvl"
    built = farm(
        env, "build", "dataset", "--regions", str(bed), "--dest", str(dest),
        "--track", f"signal={listing}", "--annot", f"peaks={make_table(chr20 / 'p.bed', 3)}",
        "--timeout", "120",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    ds = gvl.Dataset.open(dest)
    assert list(ds.samples) == sorted(samples)
    assert sorted(ds.available_tracks) == ["peaks", "signal"]
    signal = np.asarray(ds.with_seqs(None).with_tracks("signal")[:, :].data)
    assert signal.size == 30 * 2 * 2_000 and np.count_nonzero(signal) > signal.size // 2
    assert farm(env, "verify").returncode == 0
    typo = farm(
        env, "build", "dataset", "--regions", str(bed), "--dest", str(tmp_path / "x.gvl"),
        "--track", "signal",
    )  # fmt: skip
    assert_one_sentence(typo, "--track signal", "NAME=PATH")


def test_dataset_bad_input_is_refused_with_one_sentence(env, chr20, start_workers):
    (chr20 / (VCF + ".tbi")).unlink()
    refused = farm(
        env, "build", "dataset", "--variants", str(chr20 / VCF),
        "--regions", str(chr20 / "SIRPB2_refseq.chr20.bed"), "--dest", str(chr20 / "x.gvl"),
    )  # fmt: skip
    assert_one_sentence(refused, VCF, "has no index", "tabix")
    assert not (chr20 / "x.gvl").exists()


def test_keys_by_prefix_whole_when_piped_and_unknown_ones_fail(env, redis_url: str):
    registry = Registry.from_url(redis_url)
    from tests.test_registry import record

    for key in ("abc1" + "0" * 60, "abc2" + "0" * 60, "def0" + "0" * 60):
        registry.put(record(key))
    shown = farm(env, "status", "def0", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["key"] == "def0" + "0" * 60
    assert_one_sentence(farm(env, "status", "abc"), "matches more than one key")
    unknown = farm(env, "status", "fff")
    assert unknown.returncode == 1 and "unknown" in unknown.stdout
    listed = farm(env, "ls").stdout
    assert "def0" + "0" * 60 in listed  # piped: whole keys, for the next program
    assert farm(env, "verify", "fff").returncode == 1


def test_with_no_live_worker_submit_wait_and_the_api_say_so_at_once(
    env, genomes, registry, farm_settings
):
    import warnings

    from farm.client import Farm, NoWorkerWarning
    from farm.kinds import CacheRequest

    submitted = farm(env, "submit", "cache", str(genomes / LAMBDA))
    assert submitted.returncode == 0
    assert submitted.stderr.count("No live worker") == 1 and "farm worker" in submitted.stderr
    waited = farm(env, "wait", submitted.stdout.strip(), "--timeout", "1")
    assert waited.returncode == 3 and waited.stderr.count("No live worker") == 1
    with Farm.connect(farm_settings) as api, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        api.submit(CacheRequest(fasta=genomes / YEAST))
    assert [w.category for w in caught] == [NoWorkerWarning]


def test_a_build_with_no_live_worker_says_it_waits_and_gives_up_after_its_limit(
    env, genomes, registry
):
    """Nothing would ever build it: `farm build` waits a bounded time (a live line at a
    terminal), then exits 3 with one sentence; the request stays queued for a worker."""
    gave_up = farm(env, "build", "cache", str(genomes / LAMBDA), "--worker-wait", "2")
    assert gave_up.returncode == 3, gave_up.stderr
    assert "Waiting up to 2 s for a worker (--worker-wait, FARM_WORKER_WAIT_S)." in gave_up.stderr
    assert "No worker was live for 2 s" in gave_up.stderr and "`farm wait " in gave_up.stderr
    assert "Traceback" not in gave_up.stderr and gave_up.stdout == ""
    (queued,) = [registry.get(k) for batch in registry.key_batches() for k in batch]
    assert queued.status == "queued"

    at_terminal = _with_stderr_on_a_terminal(
        dict(env, FARM_WORKER_WAIT_S="3"), "build", "cache", str(genomes / YEAST)
    )
    assert at_terminal.returncode == 3
    said = at_terminal.stderr
    assert "waiting for a worker, 1 s of 3 s" in said and "No worker was live for 3 s" in said


def _with_stderr_on_a_terminal(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``farm ARGS`` with its stderr on a pseudo-terminal (what a person sees), read whole."""
    import pty

    leader, follower = pty.openpty()
    env = dict(env, TERM="xterm", COLUMNS="200")  # a terminal rich draws live lines on
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", *args], env=env, cwd=PROJECT,
        stdout=subprocess.PIPE, stderr=follower, text=True,
    )  # fmt: skip
    os.close(follower)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the command is done
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(leader)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, seen.decode())


def test_a_dataset_finds_its_bed_strand_and_a_samples_typo_is_named(
    env, chr20, start_workers, tmp_path
):
    import pyarrow.feather as feather

    start_workers(1)
    bed = str(chr20 / "SIRPB2_refseq.chr20.bed")  # the strand is in column 7, not 6
    built = farm(
        env, "build", "dataset", "--variants", str(chr20 / VCF), "--regions", bed,
        "--dest", str(tmp_path / "auto.gvl"), "--timeout", "120",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    regions = feather.read_table(tmp_path / "auto.gvl" / "input_regions.arrow")
    assert set(regions.column("strand").to_pylist()) == {"-"}  # SIRPB2 lies on the minus strand
    typo = farm(
        env, "submit", "dataset", "--variants", str(chr20 / VCF), "--regions", bed,
        "--dest", str(tmp_path / "t.gvl"), "--samples", "samples.txt",
    )  # fmt: skip
    assert_one_sentence(typo, "--samples samples.txt looks like a file")


def test_server_run_keeps_a_persistent_redis_in_the_foreground(tmp_path: Path):
    """What the Procfile's redis line runs: no redis-server needs to be installed."""
    import socket
    import time

    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no system redis-server
    server = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "server", "run", "--port", str(port),
         "--dir", str(tmp_path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.05)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
    finally:
        server.terminate()
        server.wait(10)


def test_maintenance_commands_speak_json_when_asked(env, genomes, registry, tmp_path):
    from farm.publish import Owner, staging_path

    built = farm(env, "build", "cache", str(genomes / LAMBDA), "--inline")
    assert built.returncode == 0, built.stderr
    (verified,) = [json.loads(line) for line in farm(env, "verify", "--json").stdout.splitlines()]
    assert verified["status"] == "valid" and verified["dest"] == built.stdout.strip()
    (reindexed,) = [
        json.loads(line)
        for line in farm(env, "reindex", str(genomes), "--json").stdout.splitlines()
    ]
    assert reindexed["key"] == verified["key"] and reindexed["action"] == "reindexed"
    dead = Owner(job="gone", pid=1 << 22, host=Owner.current().host)
    staging_path(genomes / "x.gvlfa", dead).mkdir()
    swept = farm(env, "gc", str(genomes), "--dry-run", "--json")
    (orphan,) = [json.loads(line) for line in swept.stdout.splitlines()]
    assert orphan["action"] == "would remove" and "is gone" in orphan["reason"]


def test_ls_filters_and_forget_removes_records_but_never_artifacts(env, registry, tmp_path):
    from farm.records import Status
    from tests.test_registry import record

    old = time.time() - 3 * 86400
    rows = [
        record("a" * 64, Status.FAILED, dest=f"{tmp_path}/a"),
        record("b" * 64, Status.VALID, dest=f"{tmp_path}/sub/b"),
        record("c" * 64, Status.BUILDING, dest=f"{tmp_path}/sub/c"),
        record("d" * 64, Status.FAILED, dest=f"{tmp_path}/sub/d").evolve(updated_at=old),
    ]
    for row in rows:
        registry.put(row)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").mkdir()

    def keys(result: subprocess.CompletedProcess) -> list[str]:
        assert result.returncode == 0, result.stderr
        return sorted(json.loads(line)["key"][0] for line in result.stdout.splitlines())

    assert keys(farm(env, "ls", "--json")) == ["a", "b", "c", "d"]
    assert keys(farm(env, "ls", "--json", "--status", "failed")) == ["a", "d"]
    assert keys(farm(env, "ls", "--json", "--dest", f"{tmp_path}/sub")) == ["b", "c", "d"]
    assert keys(farm(env, "ls", "--json", "--older-than", "2d")) == ["d"]
    assert keys(farm(env, "ls", "--json", "--newer-than", "1h", "--kind", "cache")) == [
        "a", "b", "c"
    ]  # fmt: skip
    assert_one_sentence(farm(env, "ls", "--older-than", "soon"), "--older-than soon")
    # Only known values, in any case; a typo is refused with the values that exist.
    assert keys(farm(env, "ls", "--json", "--status", "FAILED")) == ["a", "d"]
    assert keys(farm(env, "ls", "--json", "--status", "failed,building")) == ["a", "c", "d"]
    for option, typo, known in [
        ("--status", "fail", "did you mean failed?); the statuses are queued, building, valid"),
        ("--kind", "caches", "did you mean cache?); the kinds are cache, dataset"),
    ]:
        for command in ("ls", "forget"):
            refused = farm(env, command, option, typo)
            assert_one_sentence(refused, f"{option} {typo} is not one of the", known)
            assert refused.stdout == "" and refused.stderr.count("\n") == 1
    # --dest takes a relative path from the current directory, like every other option.
    relative = farm(env, "ls", "--json", "--dest", "sub", cwd=tmp_path)
    assert keys(relative) == ["b", "c", "d"]
    assert keys(farm(env, "ls", "--json", "--dest", "./sub/../sub/b", cwd=tmp_path)) == ["b"]

    assert_one_sentence(farm(env, "forget"), "needs keys or a filter")
    assert keys(farm(env, "forget", "--json", "--status", "failed", "--dry-run")) == ["a", "d"]
    dry = farm(env, "forget", "--status", "failed", "--dry-run")
    assert [line.split("\t")[-1] for line in dry.stdout.splitlines()] == ["would forget"] * 2
    assert "Would forget 2 records (a dry run: nothing was forgotten)." in dry.stderr
    assert keys(farm(env, "ls", "--json", "--status", "failed")) == ["a", "d"]
    unknown = farm(env, "forget", "f" * 64, "--dry-run")  # exits 1 like status, wait, cancel
    assert unknown.returncode == 1 and f"{'f' * 64}: unknown key" in unknown.stderr
    assert keys(farm(env, "forget", "--json", "--dest", f"{tmp_path}/sub")) == ["b", "d"]
    assert keys(farm(env, "ls", "--json")) == ["a", "c"]  # the building key is kept
    assert (tmp_path / "sub" / "b").is_dir()  # records go, artifacts stay
    piped = subprocess.run(
        [sys.executable, "-m", "farm.cli", "forget", "-"],
        input="a" * 8 + "\n", env=env, cwd=PROJECT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert piped.returncode == 0 and piped.stdout.startswith("a" * 64)
    assert piped.stdout.rstrip().endswith("\tforgotten") and "Forgot 1 record." in piped.stderr
    assert keys(farm(env, "ls", "--json")) == ["c"]


def test_status_of_a_building_key_names_its_builder_and_says_when_it_is_gone(
    env, registry, genomes
):
    """What a person reads: who builds it and how old its last report is; once its builder
    holds no lease, that the figures are stale. A bgzipped FASTA with a current .fai shows a
    percentage although its stream has no total (the .fai counts what the stream will)."""
    from farm import progress
    from tests.test_registry import record

    bgz = genomes / f"{LAMBDA}.bgz"
    key = "e" * 64
    building = record(key, dest=f"{bgz}.gvlfa").evolve(
        request={"kind": "cache", "fasta": str(bgz), "dest": f"{bgz}.gvlfa"}
    )
    registry.claim_many([building], send_grace_s=60)
    generation = registry.start(key, "w7@box/1", 60, worker="w7@box").generation
    assert generation
    started = time.time() - 4
    figures = {"done": 12_000, "total": 0, "unit": "bp", "started_at": started,
               "updated_at": time.time() - 1, "worker": "w7@box"}  # fmt: skip
    assert registry.report_progress(key, "w7@box/1", generation, figures, ttl_s=60)[0]

    def detail() -> str:
        shown = farm(env, "status", key)
        assert shown.returncode == 0, shown.stderr
        return shown.stdout.rstrip("\n").split("\t")[-1]

    alive = detail()
    assert alive.startswith("25% of 48,502 bp, 4.0 kbp/s, 9 s left, by w7@box, last report ")
    assert alive.endswith(" s ago") and "stale" not in alive
    assert "progress" in farm(env, "status", key, "--json").stdout  # --json as it was
    registry.release_lease(key, "w7@box/1")
    gone = detail()
    assert "by w7@box, last report" in gone
    assert "stale: its builder is gone (no lease); a live worker requeues it" in gone

    # The .fai counts exactly what the gzip stream reports: a real build of the same file.
    seen: list[int] = []

    class Count(progress.Progress):
        def advance(self, n: int) -> None:
            seen.append(n)

    gvlfa.ensure_cache(bgz, genomes / "counted.gvlfa", progress=Count())
    assert sum(seen) == 48_502


def _all_keys(registry: Registry) -> list[str]:
    return sorted(key for batch in registry.key_batches() for key in batch)
