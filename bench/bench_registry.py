"""The registry at scale: claim (submit), status, ls and forget over many records, and what
Redis holds per record.

Run ``python bench/bench_registry.py [--records 1000000]``. A private embedded Redis in a
temporary state directory holds synthetic cache records (no files, no broker: this measures
the registry, not builds). ``ls`` and ``forget`` run as the user runs them, ``farm`` commands
in a child process, whose peak RSS is reported; ``ls`` runs at a tenth of the records and at
all of them, side by side, so memory that grows with the registry shows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm import embedded
from farm.fingerprint import Fingerprint
from farm.records import ArtifactRecord, Status
from farm.registry import Registry

BATCH = 1_000
# ``farm`` as the user runs it, reporting its own peak RSS on stderr when it exits.
CHILD = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
    " file=sys.stderr))\n"
    "from farm.entry import main\n"
    "sys.argv = ['farm', *sys.argv[1:]]\n"
    "main()\n"
)


def synthetic(i: int, root: Path) -> ArtifactRecord:
    dest = f"{root}/genomes/g{i:07d}.fa.gvlfa"
    now = time.time()
    return ArtifactRecord(
        key=f"{i:064x}",
        kind="cache",
        dest=dest,
        request={"kind": "cache", "fasta": dest.removesuffix(".gvlfa"), "dest": dest},
        sources={"fasta": Fingerprint(n_bytes_hashed=1 << 20, digest=f"{i:0128x}", size_bytes=i)},
        status=Status.QUEUED,
        created_at=now,
        updated_at=now,
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


def claim(registry: Registry, root: Path, lo: int, hi: int) -> None:
    for start in range(lo, hi, BATCH):
        batch = [synthetic(i, root) for i in range(start, min(start + BATCH, hi))]
        registry.claim_many(batch, send_grace_s=3600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    n = parser.parse_args().records
    with tempfile.TemporaryDirectory(prefix="farm-bench-registry-") as tmp:
        state = Path(tmp) / "state"
        env = {**os.environ, "FARM_STATE_DIR": str(state), "FARM_ALLOWED_ROOTS": tmp}
        env.pop("FARM_REDIS_URL", None)
        url = embedded.ensure_server(state)
        registry = Registry.from_url(url)
        try:
            rows: list[tuple[str, str]] = []
            base = used_memory(registry)
            started = time.perf_counter()
            claim(registry, Path(tmp), 0, n // 10)
            took = time.perf_counter() - started
            ls_tenth = command(env, "ls", "--json")
            started = time.perf_counter()
            claim(registry, Path(tmp), n // 10, n)
            took += time.perf_counter() - started
            queued_b = (used_memory(registry) - base) / n
            rows.append(("claim (submit)", f"{n / took:,.0f} records/s; {queued_b:,.0f} B/queued"))

            started = time.perf_counter()
            for keys in registry.key_batches(BATCH):
                registry.get_many_raw(keys)
            took = time.perf_counter() - started
            rows.append(("status, 1,000 keys a call", f"{n / took:,.0f} keys/s"))

            for record in registry.records(BATCH):  # valid: what most of a registry is
                registry.put(record.evolve(status=Status.VALID))
            valid_b = (used_memory(registry) - base) / n
            rows.append(("valid records in Redis", f"{valid_b:,.0f} B/record"))

            ls_all = command(env, "ls", "--json")
            rows.append(
                (
                    f"farm ls --json, {n // 10:,} / {n:,} records",
                    f"{ls_tenth[0]:.1f} s, {ls_tenth[1]:.0f} MiB / {ls_all[0]:.1f} s, "
                    f"{ls_all[1]:.0f} MiB peak",
                )
            )
            filtered = command(env, "ls", "--json", "--dest", f"{tmp}/genomes/g000")
            rows.append(("farm ls --dest PREFIX (1,000 match)", f"{filtered[0]:.1f} s"))
            gone = command(env, "forget", "--json", "--status", "valid")
            rows.append(
                (f"farm forget --status valid ({n:,})", f"{gone[0]:.1f} s, {gone[1]:.0f} MiB")
            )
            left = registry._r.dbsize()
            rows.append(("Redis keys left after forgetting all", f"{left:,}"))
        finally:
            embedded.stop_server(state)
    for what, figure in rows:
        print(f"{what:44} {figure}")


if __name__ == "__main__":
    main()
