"""A worker's registry commands are bounded by the lease: sent to a Redis that stops
answering (frozen with SIGSTOP, as a partition looks from the client), a command gives up
within its timeout, and over TCP the kernel is told to drop what it could not deliver by then
(``TCP_USER_TIMEOUT``), so a command cannot arrive after a takeover long after it was sent."""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.errors import BrokerError
from farm.registry import Registry, command_timeout
from tests.faults.harness import RedisProcess

LEASE_TTL_S = 1.5


@pytest.fixture
def frozen_redis(tmp_path: Path) -> Iterator[tuple[RedisProcess, str]]:
    """A private Redis on TCP (and its unix socket); the test freezes and thaws it."""
    port = random.randrange(20000, 60000)
    server = RedisProcess(tmp_path / "redis", aof=False, tcp=("127.0.0.1", port))
    try:
        yield server, f"redis://127.0.0.1:{port}/0"
    finally:
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def _freeze(server: RedisProcess) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)


@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_a_command_to_a_frozen_redis_gives_up_within_a_third_of_the_lease(
    frozen_redis: tuple[RedisProcess, str], over: str
) -> None:
    server, tcp_url = frozen_redis
    bound = command_timeout(LEASE_TTL_S)
    registry = Registry.from_url(tcp_url if over == "tcp" else server.url, timeout_s=bound)
    registry.renew_lease("k", "h", 1, LEASE_TTL_S)  # connected, and answered
    _freeze(server)
    started = time.monotonic()
    with pytest.raises(BrokerError):
        registry.renew_lease("k", "h", 1, LEASE_TTL_S)
    took = time.monotonic() - started
    assert took < bound + 0.3, f"gave up after {took:.2f} s, bound {bound:.2f} s"
    # The progress reports' registry (no retries) keeps the same bound.
    started = time.monotonic()
    with pytest.raises(BrokerError):
        registry.impatient().renew_lease("k", "h", 1, LEASE_TTL_S)
    assert time.monotonic() - started < bound + 0.3


def test_over_tcp_the_kernel_drops_what_it_could_not_deliver_within_the_bound(
    frozen_redis: tuple[RedisProcess, str],
) -> None:
    _server, url = frozen_redis
    registry = Registry.from_url(url, timeout_s=command_timeout(30.0))
    registry.server_run_id()
    connection = registry._r.connection_pool.get_connection()
    try:
        sock = connection._sock
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.gettimeout() == 10.0
    finally:
        registry._r.connection_pool.release(connection)


def test_a_patient_worker_registry_retries_each_send_within_the_bound(
    frozen_redis: tuple[RedisProcess, str],
) -> None:
    """A worker waits out a short outage (its patience), every send bounded as above, and
    the command goes through once Redis answers again."""
    server, url = frozen_redis
    bound = command_timeout(LEASE_TTL_S)
    registry = Registry.from_url(url, patience_s=10.0, timeout_s=bound)
    registry.server_run_id()
    _freeze(server)
    assert server.proc is not None
    pid = server.proc.pid
    threading.Timer(2 * bound, os.kill, (pid, signal.SIGCONT)).start()
    started = time.monotonic()
    assert registry.server_run_id()
    assert 2 * bound - 0.1 < time.monotonic() - started < 2 * bound + 3.0
