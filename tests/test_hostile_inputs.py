"""A hostile corpus: what a careless user or an attacker with access to the queue sends.

Every item must end in one sentence (a non-zero exit, or a FAILED record), or for a message
that names no submitted key in nothing at all, and never in a traceback, an artifact outside
the allowed roots, or an "Internal error".
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection
from pydantic import ValidationError

from farm import service
from farm.confine import ConfinedParent
from farm.embedded import celery_broker_url
from farm.errors import DestinationError
from farm.fingerprint import Fingerprint
from farm.kinds import CacheRequest, DatasetRequest, parse_request
from farm.records import Status
from farm.registry import Registry
from farm.requests import derive_key, describe, prepare, request_key
from tests.support.processes import farm_env
from tests.test_cli import assert_one_sentence, farm

LAMBDA = "lambda_NC_001416.1.fa"


# --- parsing: limits before work --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "clause"),
    [
        ({"fasta": "/d/" + "n" * 300 + ".fa"}, "over 255 bytes"),
        ({"fasta": "/d/" + "/".join(["x" * 200] * 30)}, "over the 4096-byte limit"),
        ({"fasta": "/d/a\x00b.fa"}, "NUL byte"),
    ],
)
def test_absurd_paths_are_refused_when_parsed(fields: dict, clause: str):
    with pytest.raises(ValidationError) as info:
        parse_request({"kind": "cache", **fields})
    assert clause in describe(info.value)


@pytest.mark.parametrize(
    ("fields", "clause"),
    [
        ({"samples": ["NA1", "NA2", "NA1"]}, "'NA1' is listed twice"),
        ({"samples": []}, "names no sample"),
        ({"samples": ["bad\tname"]}, "control characters"),
        ({"max_jitter": 2**62}, "max_jitter"),
        ({"max_jitter": -1}, "max_jitter"),
        ({"strand_column": 10**9}, "strand_column"),
    ],
)
def test_absurd_dataset_parameters_are_refused_when_parsed(fields: dict, clause: str):
    base = {"kind": "dataset", "variants": "/d/v.vcf.gz", "regions": "/d/r.bed", "dest": "/d/x"}
    with pytest.raises(ValidationError) as info:
        parse_request({**base, **fields})
    assert clause in describe(info.value)


# --- the command line ---------------------------------------------------------------------


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return farm_env(redis_url, tmp_path)


def test_hostile_command_lines_get_one_sentence(env, genomes: Path, tmp_path: Path):
    fifo = tmp_path / "fifo.fa"
    os.mkfifo(fifo)
    header_only = tmp_path / "headers.fa"
    header_only.write_text(">chr1\n>chr2\n")
    junk = tmp_path / "junk.fa"
    junk.write_bytes(os.urandom(4096))
    long_dest = tmp_path / ("d" * 200 + ".gvlfa")
    not_utf8 = os.fsdecode(os.fsencode(tmp_path) + b"/\xff\xfe.fa")
    Path(not_utf8).write_bytes((genomes / LAMBDA).read_bytes())
    cases = [
        (["build", "cache", not_utf8, "--inline"], "is not valid UTF-8"),
        (["build", "cache", str(fifo), "--inline"], "not a regular file"),
        (["build", "cache", "/dev/zero", "--inline"], "not a regular file"),
        (["build", "cache", str(header_only), "--inline"], "holds no sequence"),
        (["build", "cache", str(junk), "--inline"], "junk.fa"),
        (["build", "cache", str(tmp_path / ("n" * 300 + ".fa"))], "over 255 bytes"),
        (["build", "cache", str(genomes / LAMBDA), "--dest", str(long_dest)], "shorter --dest"),
    ]
    for args, clause in cases:
        result = farm(env, *args)
        assert_one_sentence(result, clause)
        assert "Internal error" not in result.stderr, result.stderr
    assert not list(tmp_path.glob("*.gvlfa"))


def test_absurd_numbers_and_settings_get_one_sentence(env, genomes: Path, tmp_path: Path):
    jitter = farm(
        env, "submit", "dataset", "--variants", "v.vcf.gz", "--regions", "r.bed",
        "--dest", str(tmp_path / "x.gvl"), "--max-jitter", str(10**30),
    )  # fmt: skip
    assert jitter.returncode == 2 and "Traceback" not in jitter.stderr
    bad_url = dict(env, FARM_REDIS_URL="localhost:6379")
    assert_one_sentence(farm(bad_url, "ls"), "FARM_REDIS_URL must start with")
    assert_one_sentence(farm(bad_url, "worker"), "FARM_REDIS_URL must start with")


def test_a_huge_manifest_line_is_refused_without_echoing_it(env, tmp_path: Path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"kind": "cache", "fasta": "x" * 200_000}) + "\n")
    result = farm(env, "submit", "--manifest", str(manifest))
    assert_one_sentence(result, "line 1 is 200,")
    assert len(result.stderr) < 500


def test_compressed_and_binary_manifests_are_read_or_refused_in_one_sentence(
    env, genomes: Path, tmp_path: Path
):
    import bz2
    import gzip

    import pysam

    line = json.dumps({"kind": "cache", "fasta": str(genomes / LAMBDA)}) + "\n"
    plain = tmp_path / "m.jsonl"
    plain.write_text(line)
    key = farm(env, "submit", "--manifest", str(plain)).stdout.strip()
    assert len(key) == 64
    (tmp_path / "m.jsonl.gz").write_bytes(gzip.compress(line.encode()))
    pysam.tabix_compress(str(plain), str(tmp_path / "m.jsonl.bgz"))
    for name in ("m.jsonl.gz", "m.jsonl.bgz"):  # read as they are: the same request
        read = farm(env, "submit", "--manifest", str(tmp_path / name))
        assert read.returncode == 0 and read.stdout.strip() == key, read.stderr

    (tmp_path / "m.jsonl.bz2").write_bytes(bz2.compress(line.encode()))
    (tmp_path / "cut.gz").write_bytes(gzip.compress(line.encode() * 50)[:40])
    (tmp_path / "latin1.jsonl").write_bytes(line.encode().replace(b"lambda", b"l\xe4mbda"))
    (tmp_path / "binary.jsonl").write_bytes(os.urandom(2048).replace(b"\x1f", b" "))
    cases = [
        ("m.jsonl.bz2", "is bzip2-compressed"),
        ("cut.gz", "truncated or corrupt gzip"),
        ("latin1.jsonl", "line 1 is not UTF-8 text"),
        ("binary.jsonl", "binary.jsonl line"),
    ]
    for name, clause in cases:
        result = farm(env, "submit", "--manifest", str(tmp_path / name))
        assert_one_sentence(result, str(tmp_path / name), clause)
        assert result.stderr.count("\n") == 1, result.stderr


def test_binary_keys_on_stdin_or_the_command_line_are_one_sentence(env, tmp_path: Path):
    import subprocess
    import sys

    from tests.support.processes import PROJECT

    for command in ("status", "wait", "cancel", "forget", "verify"):
        piped = subprocess.run(
            [sys.executable, "-m", "farm.cli", command, "-"], input=b"abc\nab\xff\n",
            env=env, cwd=PROJECT, capture_output=True, timeout=60,
        )  # fmt: skip
        err = piped.stderr.decode()
        assert piped.returncode != 0 and "Traceback" not in err, err
        assert "Line 2 of standard input is not a key" in err, err
    typed = farm(env, "status", os.fsdecode(b"ab\xff"))
    assert_one_sentence(typed, "is not printable UTF-8 text")


# --- messages pushed straight into the queue ------------------------------------------------


def _push(redis_url: str, body: object, *, serializer: str = "json") -> None:
    """A message as a client with access to the broker (and not to our code) would send it."""
    with Connection(celery_broker_url(redis_url)) as conn:
        producer = conn.Producer(serializer=serializer)
        producer.publish(
            {"x": 1} if body is None else body,
            routing_key="farm.builds",
            exchange="farm.builds",
            headers={"task": "farm.build", "id": "f" * 64, "lang": "py"},
        )


def test_forged_messages_build_only_what_was_submitted(
    redis_url: str, registry: Registry, start_workers, genomes: Path, tmp_path: Path
):
    """A message names a key and nothing more counts: the request is the key's record. So a
    forged message for a key nobody submitted builds and records nothing, and one naming a
    submitted key builds that key's request, never the one the message carries."""
    start_workers(1)
    request = prepare(CacheRequest(fasta=genomes / LAMBDA), [genomes])
    key, sources = request_key(request)
    registry.claim_many([service.queued_record(request, key, sources)], send_grace_s=3600)
    outside = {"kind": "cache", "fasta": "/etc/passwd", "dest": "/tmp/x"}
    forged = [
        [[{"key": "a" * 64, "request": outside}], {}, {}],
        [["b" * 64], {}, {}],
        [[{"key": "c" * 64, "request": "not json at all"}], {}, {}],
        [["a string, not a message"], {}, {}],
        [[{"key": key, "request": outside}], {}, {}],
    ]  # fmt: skip
    for body in forged:
        _push(redis_url, body)
    marker = tmp_path / "pwned"
    evil = pickle.dumps(eval, protocol=0)  # never unpickled: the worker accepts JSON only
    _push(redis_url, [[{"key": "d" * 64, "evil": evil.hex(), "path": str(marker)}], {}, {}])
    with Connection(celery_broker_url(redis_url)) as conn:
        conn.Producer(serializer="pickle").publish(
            (os.system, (f"touch {marker}",)),
            routing_key="farm.builds",
            exchange="farm.builds",
            headers={"task": "farm.build", "id": "e" * 64, "lang": "py"},
        )
    deadline = time.monotonic() + 30
    while not (record := registry.get(key)).status.terminal:
        assert time.monotonic() < deadline, "the message naming a submitted key was not handled"
        time.sleep(0.1)
    assert record.status is Status.VALID and record.dest == str(request.destination())
    assert not Path("/tmp/x").exists() or not (Path("/tmp/x") / "sequence.bin").exists()
    time.sleep(1.0)  # the others had their chance to run
    assert registry.get_many([c * 64 for c in "abcde"]) == [None] * 5
    assert not marker.exists()


# --- properties ---------------------------------------------------------------------------

_FP = Fingerprint(n_bytes_hashed=4, digest="ab" * 64, size_bytes=4)
_names = st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=12)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), _json))
def test_any_json_parses_to_a_request_or_a_validation_error(data: dict):
    for kind in ("cache", "dataset", data.get("kind")):
        try:
            parse_request({**data, "kind": kind})
        except ValidationError as e:
            assert describe(e)


@settings(max_examples=100, deadline=None)
@given(st.lists(_names, min_size=1, max_size=8, unique=True), st.randoms())
def test_the_key_ignores_sample_order_and_sees_every_destination(samples, rnd):
    shuffled = list(samples)
    rnd.shuffle(shuffled)
    sources = {"variants": _FP, "regions": _FP}

    def key(names: list[str], dest: str = "/d/x.gvl") -> str:
        request = DatasetRequest(variants="/d/v.vcf.gz", regions="/d/r.bed", dest=dest,
                                 samples=tuple(names))  # fmt: skip
        return derive_key(request, sources)

    assert key(samples) == key(shuffled)
    assert key(samples) != key(samples, dest="/d/y.gvl")
    assert derive_key(CacheRequest(fasta="/d/a.fa", dest="/d/a.gvlfa"), {"fasta": _FP}) != key(
        samples
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(["a", "b", "..", ".", "link", "c"]), min_size=1, max_size=6))
def test_a_confined_parent_is_always_below_its_root(tmp_path: Path, parts: list[str]):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    if not (root / "link").is_symlink():
        (root / "link").symlink_to(outside)
    dest = root.joinpath(*parts)
    try:
        with ConfinedParent(dest, root) as parent:
            where = Path(os.readlink(parent.path()))
    except DestinationError:
        assert ".." in parts or "link" in parts[:-1] or dest == root or "." in parts
        return
    assert where == root or where.is_relative_to(root)
    assert list(outside.iterdir()) == []


def test_ctrl_c_during_start_up_is_one_line(env):
    import signal
    import subprocess
    import sys

    farm_script = Path(sys.executable).parent / "farm"
    # verify loads the client (pydantic, Celery's pieces): longer than this to start up.
    proc = subprocess.Popen(
        [str(farm_script), "verify"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    time.sleep(0.15)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip() == "Interrupted."


@pytest.mark.parametrize("delay_s", [0.0, 0.02, 0.05, 0.1])
def test_ctrl_c_as_a_command_exits_never_shows_a_traceback(env, delay_s: float):
    """`farm status` of an unknown key ends in a few dozen ms: Ctrl-C as it exits must not
    turn into a traceback from the interpreter's shutdown or a death by signal."""
    import signal
    import subprocess
    import sys

    farm_script = Path(sys.executable).parent / "farm"
    proc = subprocess.Popen(
        [str(farm_script), "status", "0" * 64], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out_line = proc.stdout.readline()  # the command has done its work once it printed
    time.sleep(delay_s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "unknown" in out_line, (out_line, err)
    assert proc.returncode in (1, 130), err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_a_redis_password_works_end_to_end_and_never_shows(genomes: Path, tmp_path: Path):
    """A password-protected Redis on its own loopback port: the farm builds through it, and
    the password appears in no output, log or process title."""
    import socket
    import subprocess

    import psutil

    from farm.embedded import server_binary
    from tests.support.processes import Worker

    secret = "s3cr3t-Pa55-4-farm"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--requirepass", secret,
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://:{secret}@127.0.0.1:{port}/0"
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                Registry.from_url(url).ping()
                break
            except Exception:
                assert time.monotonic() < deadline, "Redis did not start"
                time.sleep(0.05)
        env = farm_env(url, tmp_path)
        worker = Worker(env, "w0", logs)
        try:
            worker.wait_ready()
            built = farm(env, "build", "cache", str(genomes / LAMBDA))
            listed = farm(env, "ls", "--json")
            titles = [
                " ".join(p.cmdline())
                for p in [
                    psutil.Process(worker.proc.pid),
                    *psutil.Process(worker.proc.pid).children(),
                ]
            ]
        finally:
            worker.stop()
        assert built.returncode == 0, built.stderr
        assert json.loads(listed.stdout.splitlines()[0])["status"] == "valid"
        shown = [built.stdout, built.stderr, listed.stdout, listed.stderr, *titles]
        shown.append(worker.log.read_text(errors="replace"))
        assert all(secret not in text for text in shown)
    finally:
        server.terminate()
        server.wait(10)


def test_a_destination_swapped_for_a_link_while_queued_fails_on_the_worker(
    env, genomes: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, start_workers
):
    """The measured escape, through the queue: submitted with no worker running, the
    destination's directory swapped for a link outside, then a worker starts."""
    outside = tmp_path_factory.mktemp("outside")
    (tmp_path / "swap").mkdir()
    submitted = farm(env, "submit", "cache", str(genomes / LAMBDA), "--dest",
                     str(tmp_path / "swap" / "t.gvlfa"))  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    (tmp_path / "swap").rmdir()
    (tmp_path / "swap").symlink_to(outside)
    start_workers(1)
    waited = farm(env, "wait", submitted.stdout.strip(), "--timeout", "60")
    assert_one_sentence(waited, "not a plain absolute path")
    assert list(outside.iterdir()) == []


_FILE_SIZE_LIMITED = """
import resource, sys
from pathlib import Path
from farm.artifacts import gvlfa
from farm.errors import DestinationError
resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, 16_384))
try:
    gvlfa.ensure_cache(Path(sys.argv[1]))
except DestinationError as e:
    print(e)
"""


def test_a_worker_file_size_limit_is_a_sentence_not_an_internal_error(genomes: Path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMITED, str(genomes / "yeast_S288C_chrI_SGD2005.fa")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "file-size limit (ulimit -f)" in result.stdout, result.stderr
    assert not list(genomes.glob("*.farmtmp.*"))
