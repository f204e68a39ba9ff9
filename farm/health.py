"""Liveness and readiness of the workers started on this machine, from files alone.

A worker's main process keeps two files under ``<state dir>/workers/``, named after its host
and pid (the celery#4079 pattern):

- ``<host>.<pid>.beat``: written when the worker starts (who it is, when its process started,
  how often it beats) and touched by its event loop every ``FARM_HEALTH_HEARTBEAT_S``. A loop
  that wedges, or a process that is frozen (SIGSTOP, a paused VM), stops touching it.
- ``<host>.<pid>.ready``: present while the worker's consumer is connected and consuming;
  removed when it loses the broker and when it stops.

:func:`check` reads them and makes no network call: a probe that asked Redis would restart
workers while Redis is away, which brings nothing back. A file whose process is gone (or whose
pid now belongs to another process: the start time is compared) is removed. Files of other
hosts (a state directory on a shared filesystem) are left alone: their pids mean nothing here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

BEATS_DIR = "workers"
STALE_PERIODS = 3  # a beat older than this many periods is stale
_START_SLACK_S = 1.0  # psutil's create_time is rounded to the clock tick


def beats_dir(state_dir: Path) -> Path:
    return state_dir / BEATS_DIR


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "host"


def _process_started(pid: int) -> float | None:
    """When ``pid`` started, or None if no such process runs here (a zombie does not run)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except psutil.NoSuchProcess:
        return None


class Beat:
    """The worker's side: its beat and ready files. Written by the main process only."""

    def __init__(self, state_dir: Path, name: str, period_s: float) -> None:
        self.pid = os.getpid()
        folder = beats_dir(state_dir)
        stem = f"{_host()}.{self.pid}"
        self.path = folder / f"{stem}.beat"
        self.ready_path = folder / f"{stem}.ready"
        self.name = name
        self.period_s = period_s

    def start(self) -> None:
        """Say who beats here, atomically (a probe never reads half a file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        about = {
            "pid": self.pid,
            "host": _host(),
            "name": self.name,
            "started": _process_started(self.pid),
            "period_s": self.period_s,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(about))
        os.replace(tmp, self.path)

    def touch(self) -> None:
        try:
            os.utime(self.path)
        except FileNotFoundError:
            self.start()  # removed by hand, or by a probe that mistook us: say it again

    def ready(self, consuming: bool) -> None:
        if consuming:
            self.ready_path.touch()
        else:
            self.ready_path.unlink(missing_ok=True)

    def remove(self) -> None:
        """At a clean exit: a worker that is gone is no longer this machine's to vouch for."""
        self.ready_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class WorkerHealth:
    """What a probe found of one worker."""

    pid: int
    name: str
    host: str
    beat_age_s: float
    stale_after_s: float
    ready: bool  # its consumer is connected

    @property
    def live(self) -> bool:
        return self.beat_age_s <= self.stale_after_s

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "beat_age_s": round(self.beat_age_s, 3), "live": self.live}


def check(state_dir: Path, *, now: float | None = None) -> list[WorkerHealth]:
    """The workers of this host under ``state_dir`` whose process still runs; the files of
    those that do not are removed."""
    folder = beats_dir(state_dir)
    here = _host()
    found = []
    try:
        paths = sorted(folder.glob(f"{glob_escape(here)}.*.beat"))
    except OSError:
        return []
    for path in paths:
        health = _one(path, here, time.time() if now is None else now)
        if health is not None:
            found.append(health)
    return found


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _one(path: Path, here: str, now: float) -> WorkerHealth | None:
    try:
        about = json.loads(path.read_text())
        beat = path.stat().st_mtime
        pid = int(about["pid"])
        period = float(about["period_s"])
    except FileNotFoundError:
        return None  # the worker exited meanwhile
    except (OSError, ValueError, KeyError, TypeError):
        return None  # half-written by a foreign hand: not a worker's (workers write whole)
    started = _process_started(pid)
    recorded = about.get("started")
    if started is None or (
        isinstance(recorded, int | float) and abs(started - recorded) > _START_SLACK_S
    ):
        _forget(path)  # a dead worker's, or its pid now belongs to another process
        return None
    ready = path.with_name(path.name.removesuffix(".beat") + ".ready").exists()
    return WorkerHealth(
        pid=pid,
        name=str(about.get("name", "")),
        host=here,
        beat_age_s=max(0.0, now - beat),
        stale_after_s=STALE_PERIODS * period,
        ready=ready,
    )


def _forget(beat: Path) -> None:
    with contextlib.suppress(OSError):
        beat.with_name(beat.name.removesuffix(".beat") + ".ready").unlink(missing_ok=True)
        beat.unlink(missing_ok=True)


@dataclass(frozen=True)
class Verdict:
    """A probe's answer: ``ok`` decides the exit status; ``why`` says what failed."""

    ok: bool
    why: str
    workers: list[WorkerHealth]
    redis: str | None = None  # --ready: "ok" or why Redis did not answer

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "ok": self.ok,
            "why": self.why,
            "workers": [w.as_dict() for w in self.workers],
        }
        if self.redis is not None:
            out["redis"] = self.redis
        return out


def liveness(state_dir: Path) -> Verdict:
    """Live when at least one worker runs here and every one of them beats: a pod or a unit
    runs one worker, and a frozen one among several still needs a restart."""
    workers = check(state_dir)
    if not workers:
        return Verdict(False, f"no worker of this host runs under {state_dir}", workers)
    stale = [w for w in workers if not w.live]
    if stale:
        said = ", ".join(f"pid {w.pid} silent for {w.beat_age_s:.1f} s" for w in stale)
        return Verdict(False, f"worker event loop stopped ({said})", workers)
    return Verdict(True, f"{len(workers)} worker(s) beating", workers)


def readiness(state_dir: Path, redis_url: str, *, timeout_s: float = 2.0) -> Verdict:
    """Ready when live, every worker consumes, and Redis answers a PING within ``timeout_s``."""
    live = liveness(state_dir)
    redis_said = ping(redis_url, timeout_s)
    if not live.ok:
        return Verdict(False, live.why, live.workers, redis_said)
    idle = [w for w in live.workers if not w.ready]
    if idle:
        said = ", ".join(f"pid {w.pid}" for w in idle)
        return Verdict(False, f"not consuming from the broker ({said})", live.workers, redis_said)
    if redis_said != "ok":
        return Verdict(False, f"Redis does not answer: {redis_said}", live.workers, redis_said)
    return Verdict(True, f"{len(live.workers)} worker(s) consuming", live.workers, redis_said)


def ping(url: str, timeout_s: float) -> str:
    """Return "ok", or why Redis did not answer a PING within ``timeout_s``."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),  # one try: a probe answers within its own timeout
    )
    try:
        client.ping()
    except (redis.RedisError, OSError) as e:
        return f"{type(e).__name__}: {e}"[:300]
    finally:
        client.close()
    return "ok"
