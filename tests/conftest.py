"""Shared fixtures. Append new fixtures; real data is always copied into tmp_path first."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator
from pathlib import Path

import pysam
import pytest

from farm.config import Settings
from farm.registry import Registry
from tests.support.processes import Worker, farm_env, redis_server

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"

LAMBDA = "lambda_NC_001416.1.fa"
YEAST = "yeast_S288C_chrI_SGD2005.fa"
CHR20_BGZ = "GRCh37_chr20_0-2Mb_Nmasked_first1Mb.fa.gz"


@pytest.fixture
def real_genomes(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Every genome the project ships, plain and bgzipped, copied into ``tmp_path``.

    The missing forms are made here: a bgzipped yeast (``pysam.tabix_compress``) and a plain
    chr20 (decompressed), so each genome is tested in both encodings.
    """
    out = tmp_path / "genomes"
    out.mkdir()
    for src in (DATA / "genomes").iterdir():
        shutil.copy2(src, out / src.name)
    for src in (DATA / "grch37_chr20").glob(CHR20_BGZ + "*"):
        shutil.copy2(src, out / src.name)
    pysam.tabix_compress(str(out / YEAST), str(out / (YEAST + ".bgz")))
    chr20_plain = out / "GRCh37_chr20_0-2Mb.fa"
    with gzip.open(out / CHR20_BGZ, "rb") as f_in, open(chr20_plain, "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
    yield {
        "lambda": out / LAMBDA,
        "lambda.bgz": out / (LAMBDA + ".bgz"),
        "yeast": out / YEAST,
        "yeast.bgz": out / (YEAST + ".bgz"),
        "chr20": chr20_plain,
        "chr20.bgz": out / CHR20_BGZ,
    }


# Soft-masked lower case, N runs, every IUPAC code, CRLF line ends, a description after the
# name, a contig whose last line is short, a contig with no sequence, and a last line with no
# newline at all.
_TRICKY_CONTIGS = {
    "chr1": "ACGTacgtNNNNnnnnACGT" * 9 + "acg",
    "chr2 a description\twith a tab": "RYKMSWBDHVNrykmswbdhvn-ACGT" * 5,
    "chrM": "acgtn" * 31 + "ACG",
    "empty": "",  # htslib leaves it out of the index, so GenVarLoader never lists it
    "chrLast": "ACGTNacgtn" * 13,
}


def write_tricky_fasta(path: Path, *, width: int = 60, newline: bytes = b"\r\n") -> Path:
    """A multi-contig FASTA that exercises every byte rule of the format."""
    parts: list[bytes] = []
    for header, seq in _TRICKY_CONTIGS.items():
        parts.append(b">" + header.encode() + newline)
        raw = seq.encode()
        parts.extend(raw[i : i + width] + newline for i in range(0, len(raw), width))
    data = b"".join(parts)
    path.write_bytes(data[: -len(newline)])  # last line without a newline
    return path


@pytest.fixture
def tricky_fasta(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "tricky"
    d.mkdir()
    yield write_tricky_fasta(d / "tricky.fa")


# --- the farm: a real Redis server and real Celery workers, stopped by PID -------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def registry(redis_url: str) -> Iterator[Registry]:
    reg = Registry.from_url(redis_url)
    reg._r.flushdb()
    yield reg
    reg._r.close()


@pytest.fixture
def genomes(tmp_path: Path) -> Path:
    """A private copy of the shipped genomes (builders write beside their sources)."""
    dest = tmp_path / "genomes"
    shutil.copytree(DATA / "genomes", dest)
    return dest


@pytest.fixture
def farm_settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        allowed_roots=str(tmp_path),
        state_dir=tmp_path / ".farm-state",
        lease_ttl_s=3.0,
        worker_heartbeat_s=0.5,
    )


@pytest.fixture
def start_workers(redis_url: str, tmp_path: Path, registry) -> Iterator:
    """Start real worker processes (``start(n, **settings)``); all are stopped at the end."""
    started: list[Worker] = []
    logdir = tmp_path / "worker-logs"
    logdir.mkdir()

    def start(n: int = 1, *, app: str = "workers.app", **settings: object) -> list[Worker]:
        settings.setdefault("lease_ttl_s", 3.0)
        settings.setdefault("worker_heartbeat_s", 0.5)
        settings.setdefault("unacked_restore_interval_s", 1.0)
        env = farm_env(redis_url, tmp_path, **settings)
        batch = [Worker(env, f"w{len(started) + i}", logdir, app=app) for i in range(n)]
        started.extend(batch)
        for w in batch:
            w.wait_ready()
        return batch

    yield start
    for w in started:
        w.stop()


@pytest.fixture
def d(pristine: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the module's ``pristine`` inputs, so each case may damage it."""
    root = tmp_path / "in"
    shutil.copytree(pristine, root)
    yield root
