"""The registry at scale: submit, status, ls and forget over many records, and what Redis
holds per queued request and per valid record.

Run ``python bench/bench_registry.py [--records 1000000]``. A private embedded Redis in a
temporary state directory. Requests are submitted as a client submits them (``submit_many``:
validation, keys, claims and the Celery messages), one genome to many destinations as a lab
submits a cohort, and the memory per queued request includes its message in the queue. Each
key is then finished as valid, as a worker finishes it, and the queue emptied, for the
memory per valid record. ``ls`` and ``forget`` run as the user runs them, ``farm`` commands
in a child process, whose peak RSS is reported; ``ls`` runs at a tenth of the records and at
all of them, side by side, so memory that grows with the registry shows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm import embedded
from farm.client import Farm
from farm.config import QUEUE, Settings
from farm.kinds import CacheRequest
from farm.records import ArtifactRecord, Status
from farm.registry import Registry

LAMBDA = Path(__file__).resolve().parents[1] / "data" / "genomes" / "lambda_NC_001416.1.fa"

BATCH = 1_000
# ``farm`` as the user runs it, reporting its own peak RSS on stderr when it exits: VmHWM, not
# ru_maxrss, which on Linux keeps the high-water mark of the process it was forked from.
CHILD = (
    "import atexit, sys\n"
    "def peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            print('RSS', line.split()[1], file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "from farm.entry import main\n"
    "sys.argv = ['farm', *sys.argv[1:]]\n"
    "main()\n"
)


def valid(record: ArtifactRecord) -> ArtifactRecord:
    """The record a worker writes when the build is done."""
    now = time.time()
    return record.evolve(
        status=Status.VALID,
        started_at=now - 2.5,
        finished_at=now,
        build_seconds=2.5,
        size_bytes=3_100_000_000,
        checksum=f"crc32x4MiB:{record.key}",
        worker="celery@node17.cluster.lab.org",
        action="built",
    )


def used_memory(registry: Registry) -> int:
    return int(registry._r.info("memory")["used_memory"])


def command(env: dict[str, str], *args: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``farm`` command, its output discarded."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, check=False,
    )  # fmt: skip
    took = time.perf_counter() - started
    rss = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("RSS ")]
    if proc.returncode != 0 or not rss:
        raise SystemExit(f"farm {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return took, int(rss[-1]) / 1024


def submit(farm: Farm, fasta: Path, lo: int, hi: int) -> list[str]:
    keys: list[str] = []
    for start in range(lo, hi, BATCH):
        requests = [
            CacheRequest(fasta=fasta, dest=fasta.parent / "builds" / f"g{i:07d}.gvlfa")
            for i in range(start, min(start + BATCH, hi))
        ]
        keys.extend(s.key for s in farm.submit_many(requests))
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    n = parser.parse_args().records
    with tempfile.TemporaryDirectory(prefix="farm-bench-registry-") as tmp:
        state = Path(tmp) / "state"
        env = {**os.environ, "FARM_STATE_DIR": str(state), "FARM_ALLOWED_ROOTS": tmp}
        env.pop("FARM_REDIS_URL", None)
        url = embedded.ensure_server(state)
        fasta = Path(tmp) / LAMBDA.name
        shutil.copy(LAMBDA, fasta)
        settings = Settings(redis_url=url, allowed_roots=tmp, state_dir=state)
        farm = Farm.connect(settings)
        farm.warn_if_no_worker = lambda: True  # type: ignore[method-assign]  # none, on purpose
        registry = farm.registry
        try:
            rows: list[tuple[str, str]] = []
            base = used_memory(registry)
            started = time.perf_counter()
            keys = submit(farm, fasta, 0, n // 10)
            took = time.perf_counter() - started
            ls_tenth = command(env, "ls", "--json")
            started = time.perf_counter()
            keys += submit(farm, fasta, n // 10, n)
            took += time.perf_counter() - started
            queued_b = (used_memory(registry) - base) / n
            rows.append(("submit_many (client)", f"{n / took:,.0f} requests/s"))
            rows.append(("Redis per queued request, message incl.", f"{queued_b:,.0f} B"))

            started = time.perf_counter()
            for i in range(0, n, BATCH):
                registry.statuses(keys[i : i + BATCH])
            took = time.perf_counter() - started
            rows.append(("status, 1,000 keys a call", f"{n / took:,.0f} keys/s"))

            for i in range(0, n, BATCH):
                for record in registry.get_many(keys[i : i + BATCH]):
                    assert record is not None
                    registry.finish(valid(record), holder="")
            registry._r.delete(QUEUE, f"{registry._p}done")  # consumed; completions: bounded
            valid_b = (used_memory(registry) - base) / n
            rows.append(("Redis per valid record", f"{valid_b:,.0f} B"))
            del keys

            ls_all = command(env, "ls", "--json")
            rows.append(
                (
                    f"farm ls --json, {n // 10:,} / {n:,} records",
                    f"{ls_tenth[0]:.1f} s, {ls_tenth[1]:.0f} MiB / {ls_all[0]:.1f} s, "
                    f"{ls_all[1]:.0f} MiB peak",
                )
            )
            filtered = command(env, "ls", "--json", "--dest", f"{tmp}/builds/g000")
            rows.append(
                (f"farm ls --dest PREFIX ({min(n, 10_000):,} match)", f"{filtered[0]:.1f} s")
            )
            gone = command(env, "forget", "--json", "--status", "valid")
            rows.append(
                (f"farm forget --status valid ({n:,})", f"{gone[0]:.1f} s, {gone[1]:.0f} MiB")
            )
            left = registry._r.dbsize()
            rows.append(("Redis keys left after forgetting all", f"{left:,}"))
        finally:
            farm.close()
            embedded.stop_server(state)
    for what, figure in rows:
        print(f"{what:44} {figure}")


if __name__ == "__main__":
    main()
