"""The fault suite's test bench: a private Redis that can be killed and restarted, real
worker processes, real builds, and the figures every scenario prints.

Everything runs on this machine: Redis on a unix socket in the test's own directory, workers
in their own process groups; all are stopped by PID at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from farm import maintenance
from farm.artifacts import gvlfa
from farm.artifacts.base import State
from farm.client import Farm
from farm.config import Settings
from farm.embedded import server_binary
from farm.orphans import remove_orphans
from farm.publish import ASIDE_MARK, STAGING_MARK
from farm.queue import Sender
from farm.records import ArtifactRecord, Status
from farm.registry import Registry
from farm.requests import BuildRequest, prepare, request_key
from tests.support.processes import Worker, farm_env

DATA = Path(__file__).resolve().parents[2] / "data"
LAMBDA = DATA / "genomes" / "lambda_NC_001416.1.fa"
SLOW_APP = "tests.support.slow_app"
REPORT_ENV = "FARM_FAULTS_REPORT"  # a file: each scenario appends its figures as a JSON line

# Short enough that a scenario heals in seconds, long enough for a loaded 2-core machine.
FAST = {
    "lease_ttl_s": 2.0,
    "worker_heartbeat_s": 0.5,
    "watchdog_interval_s": 0.5,
    "unacked_restore_interval_s": 0.5,
    "stop_grace_s": 1.0,
}


class RedisProcess:
    """A Redis server of the test's own, on a unix socket, that can be SIGKILLed and restarted
    on the same socket and data directory (with or without an append-only file)."""

    def __init__(self, workdir: Path, *, aof: bool, tcp: tuple[str, int] | None = None) -> None:
        self.workdir = workdir
        self.aof = aof
        self.tcp = tcp  # also listen on this address (a worker in another network namespace)
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket = workdir / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        argv = [
            server_binary(),
            "--port", str(self.tcp[1]) if self.tcp else "0",
            *(["--bind", self.tcp[0], "--protected-mode", "no"] if self.tcp else []),
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "everysec",
            "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(
                        f"Redis did not start; see {self.workdir}/redis.log"
                    ) from None
                time.sleep(0.02)
            finally:
                client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self, down_s: float = 0.5) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Figures:
    """What a scenario prints: every fault round must end with zeros but ``rounds``/``jobs``."""

    scenario: str
    rounds: int = 0
    jobs: int = 0
    lost: int = 0  # no record at the end
    stuck: int = 0  # still queued/building at the deadline
    failed: int = 0  # terminal but not valid (when all were expected valid)
    duplicates: int = 0  # builds that reached their publish beyond one per key
    partials: int = 0  # times a reader saw a destination that was not a whole artifact
    orphans: int = 0  # staging dirs left that gc could not clean
    cleaned: int = 0  # staging dirs of killed builders that gc removed
    worker_exits: int = 0  # worker main processes that died on their own
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        counts = " ".join(
            f"{k}={v}" for k, v in asdict(self).items() if k not in ("scenario", "notes", "seconds")
        )
        notes = f" [{'; '.join(self.notes)}]" if self.notes else ""
        return f"FAULTS {self.scenario}: {counts} ({self.seconds:.1f} s){notes}"

    def report(self) -> None:
        print(self.line())
        if path := os.environ.get(REPORT_ENV):
            with open(path, "a") as f:
                f.write(json.dumps(asdict(self)) + "\n")

    def assert_healed(self) -> None:
        bad = {
            k: v
            for k, v in asdict(self).items()
            if k in ("lost", "stuck", "failed", "duplicates", "partials", "orphans", "worker_exits")
            and v
        }
        assert not bad, self.line()


class Cluster:
    """A private Redis and real workers for one scenario; everything stopped at the end."""

    def __init__(
        self,
        root: Path,
        *,
        aof: bool = True,
        redis_tcp: tuple[str, int] | None = None,
        **settings: object,
    ) -> None:
        self.root = root
        self.redis = RedisProcess(root / "redis", aof=aof, tcp=redis_tcp)
        self.phases = root / "phases"
        self.phases.mkdir()
        self.logs = root / "logs"
        self.logs.mkdir()
        self.settings_overrides = {**FAST, **settings}
        self.workers: list[Worker] = []
        self._farm: Farm | None = None

    @property
    def url(self) -> str:
        return self.redis.url

    def settings(self) -> Settings:
        return Settings(
            redis_url=self.url,
            allowed_roots=str(self.root),
            state_dir=self.root / ".farm-state",
            **self.settings_overrides,  # type: ignore[arg-type]
        )

    def env(self, **overrides: object) -> dict[str, str]:
        env = farm_env(self.url, self.root, **{**self.settings_overrides, **overrides})
        env["FARM_TEST_PHASE_DIR"] = str(self.phases)
        return env

    def worker(
        self,
        *,
        concurrency: int = 1,
        pool: str = "prefork",
        wait: bool = True,
        netns: str | None = None,
        redis_url: str | None = None,
        **env: object,
    ) -> Worker:
        """A worker; ``netns``: run it in that network namespace, reaching Redis at
        ``redis_url`` (a host of its own, as far as the network goes)."""
        environment = self.env(**env)
        if redis_url is not None:
            environment["FARM_REDIS_URL"] = redis_url
        w = Worker(
            environment,
            f"w{len(self.workers)}",
            self.logs,
            app=SLOW_APP,
            concurrency=concurrency,
            pool=pool,
            prefix=["ip", "netns", "exec", netns] if netns else [],
        )
        self.workers.append(w)
        if wait:
            w.wait_ready()
        return w

    def farm(self) -> Farm:
        if self._farm is None:
            settings = self.settings()
            self._farm = Farm(settings, Registry.from_url(self.url), Sender(settings, self.url))
        return self._farm

    def registry(self) -> Registry:
        return self.farm().registry

    def genome(self, name: str = "g") -> Path:
        """A private copy of the lambda genome: builders write beside their sources."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        dest = folder / LAMBDA.name
        shutil.copy2(LAMBDA, dest)
        return dest

    def plan_pause(self, request: BuildRequest, phase: str, seconds: float) -> str:
        """The first builder of ``request`` to reach ``phase`` will leave a marker and pause
        there; returns the request's key."""
        key = request_key(prepare(request, self.settings().roots))[0]
        (self.phases / f"pause.{key[:24]}").write_text(f"{phase} {seconds}")
        return key

    def submit_paused(self, request: BuildRequest, phase: str, seconds: float) -> str:
        """Submit ``request``, planning a pause of its first builder at ``phase``."""
        key = self.plan_pause(request, phase, seconds)
        assert self.farm().submit(request).key == key
        return key

    def marker(self, phase: str, key: str, timeout: float = 60) -> Path:
        """Wait until a builder reached ``phase`` for ``key``; the marker names its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = sorted(self.phases.glob(f"{phase}.*.{key[:24]}*"))
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no builder reached {phase} for {key} within {timeout} s")

    def worker_of(self, pid: int) -> Worker:
        for w in self.workers:
            if w.proc.pid == pid or pid in _children(w.proc.pid):
                return w
        raise AssertionError(f"pid {pid} belongs to no worker")

    def publishes(self) -> int:
        """Builds that reached their rename (published, replaced, or lost to another's)."""
        return self.log_count("PUBLISH ")

    def builds_beyond_one(self, keys: int) -> int:
        """Publishes beyond one per key, but for deliberate rebuilds: a key whose artifact was
        published by a grant that never recorded it (killed after its rename, or its record
        lost with Redis) is built again, since that grant may still take its publish back."""
        return max(0, self.publishes() - keys - self.log_count("does not vouch for"))

    def log_count(self, needle: str) -> int:
        return sum(p.read_text(errors="replace").count(needle) for p in self.logs.glob("*.log"))

    def close(self) -> None:
        if self._farm is not None:
            self._farm.close()
        for w in self.workers:
            w.stop()
        self.redis.stop()


@dataclass
class PartialWatch:
    """A reader that keeps opening destinations while faults happen: it must only ever see
    nothing or a whole cache."""

    dests: list[Path]
    seen_partial: int = 0
    reads: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PartialWatch:
        def run() -> None:
            while not self._stop.is_set():
                for dest in self.dests:
                    state = gvlfa.classify(dest).state
                    self.reads += 1
                    if state not in (State.MISSING, State.FRESH):
                        self.seen_partial += 1
                time.sleep(0.005)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def settle(
    cluster: Cluster,
    keys: list[str],
    figures: Figures,
    *,
    timeout: float = 90,
    client_heals: bool = False,
) -> list[ArtifactRecord | None]:
    """Wait until every key is terminal; count what is not valid.

    By default the waiting client is one that submitted nothing, so it cannot resubmit: the
    farm heals alone. ``client_heals`` waits with the submitting client, which resubmits keys
    whose records vanished (the only remedy when Redis keeps nothing on disk).
    """
    if client_heals:
        records = cluster.farm().wait(keys, timeout_s=timeout)
    else:
        settings = cluster.settings()
        with Farm(settings, Registry.from_url(cluster.url), Sender(settings, cluster.url)) as f:
            records = f.wait(keys, timeout_s=timeout)
    for record in records:
        if record is None:
            figures.lost += 1
        elif not record.status.terminal:
            figures.stuck += 1
        elif record.status is not Status.VALID:
            figures.failed += 1
            figures.notes.append(f"{record.status}: {record.error}")
    return records


def sweep_orphans(cluster: Cluster, figures: Figures) -> None:
    """gc what dead builders left, then count what nothing would clean up."""
    registry = cluster.registry()
    orphans = list(maintenance.gc(registry, [cluster.root], grace_s=0, allowed=[cluster.root]))
    remove_orphans(orphans)
    figures.cleaned += len(orphans)
    left = [
        p
        for p in cluster.root.rglob("*")
        if (STAGING_MARK in p.name or ASIDE_MARK in p.name) and "redis" not in p.parts
    ]
    figures.orphans += len(left)


def books_balanced(registry: Registry) -> bool:
    """Nothing in flight once everything is terminal: no due entry, no key in flight."""
    return registry.inflight_count() == 0 and not registry.due_keys(time.time() + 3600)


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
