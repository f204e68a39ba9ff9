"""Graceful stop: a worker asked to stop (SIGTERM, as autoscalers, ``docker stop`` and honcho
send) takes no new work, lets a running build finish within ``FARM_STOP_GRACE_S``, and then
hands its key back instead of holding it until the lease runs out.

The hand-back is an exception raised in the thread that builds (:class:`StopRequested`), so
the builder's own clean-up runs: its staging directory is removed, the key is queued again
and the message requeued. SIGUSR2 is the "stop now" signal (Celery and billiard leave it
alone); it only interrupts a build in progress and is ignored otherwise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

import psutil

from farm.errors import StopRequested

STOP_NOW = signal.SIGUSR2
_building = threading.Event()
_stopping = threading.Event()
_child_grace_s: float | None = None  # set in a pool child; its SIGTERM handler is ours


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Mark a build in progress in this process: a stop request may interrupt it."""
    if _stopping.is_set():
        raise StopRequested  # the stop came before the build started: hand it back now
    if _child_grace_s is not None and signal.getsignal(signal.SIGTERM) is not _on_child_term:
        # billiard resets SIGTERM after the pool's initializer ran; take it back here.
        signal.signal(signal.SIGTERM, _on_child_term)
    _building.set()
    try:
        yield
    finally:
        _building.clear()


def _stop_now(signum: int, frame: FrameType | None) -> None:
    _stopping.set()
    if _building.is_set():
        _building.clear()  # raise once, even if several signals arrive
        raise StopRequested


def _after_grace(grace_s: float, pids: list[int]) -> None:
    def fire() -> None:
        time.sleep(grace_s)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, STOP_NOW)

    threading.Thread(target=fire, name="farm-stop-grace", daemon=True).start()


def install_stop_handler() -> None:
    """In any process that may build (a pool child, or a solo worker's main process)."""
    signal.signal(STOP_NOW, _stop_now)


def handle_child_term(grace_s: float) -> None:
    """A pool child that gets SIGTERM itself (a signal to the whole process group, as honcho
    and terminals send) starts its own grace period instead of dying mid-build. Installed
    when a build starts (see :func:`interruptible`)."""
    global _child_grace_s
    _child_grace_s = grace_s


def _on_child_term(signum: int, frame: FrameType | None) -> None:
    if not _building.is_set():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # idle: die as before
        return
    _stopping.set()
    _after_grace(_child_grace_s or 0.0, [os.getpid()])


def stop_after_grace(grace_s: float) -> None:
    """In a worker's main process at warm shutdown: after the grace, interrupt whatever
    build still runs, in the pool's children and in this process (a solo pool)."""
    _stopping.set()
    me = psutil.Process()
    pids = [me.pid, *(child.pid for child in me.children())]
    _after_grace(grace_s, pids)
