"""Real servers and real workers for tests: started from here, stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis

from farm.embedded import server_binary

PROJECT = Path(__file__).resolve().parents[2]


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A private Redis on a unix socket in ``workdir``; yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "redis.sock"
    proc = subprocess.Popen(
        [
            server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(workdir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
    )
    url = f"unix://{sock}"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            break
        except (redis.ConnectionError, FileNotFoundError):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(
                    f"test Redis did not start; see {workdir / 'redis.log'}"
                ) from None
            time.sleep(0.02)
    try:
        yield url
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def farm_env(redis_url: str, root: Path, **overrides: object) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "FARM_REDIS_URL": redis_url,
            "FARM_ALLOWED_ROOTS": str(root),
            "FARM_STATE_DIR": str(root / ".farm-state"),
            "PYTHONPATH": os.pathsep.join([str(PROJECT), env.get("PYTHONPATH", "")]),
        }
    )
    env.update({f"FARM_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


class Worker:
    """One real Celery worker (its main process and its pool), in its own process group."""

    def __init__(
        self,
        env: dict[str, str],
        name: str,
        logdir: Path,
        *,
        app: str = "workers.app",
        concurrency: int = 1,
        pool: str = "prefork",
        prefix: list[str] | None = None,
    ) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        argv = [
            *(prefix or []),  # e.g. ip netns exec NAME: it execs, so the pid stays the worker's
            sys.executable, "-m", "celery", "-A", app, "worker",
            "-Q", "farm.builds", "-n", f"{name}@%h",
            "--pool", pool, "--concurrency", str(concurrency),
            "--loglevel", "INFO", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=PROJECT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} died:\n{self.log.read_text()[-3000:]}")
            if b"ready." in self.log.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} not ready:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool children."""
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
