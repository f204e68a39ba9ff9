"""Per-build time limits, kept by the process that builds.

Celery keeps its time limits in the pool's parent, which then needs each child to report
every task's start over a pipe and arms a timer per task: a twentieth of the farm's
throughput on small builds, and nothing at all in a solo pool. Here the building process
arms one interval timer per build instead. At the soft limit, SoftTimeLimitExceeded is raised
in the build, which records it as a time-limit failure. Should the build not stop by the hard
limit (stuck in C code, or swallowing the exception), the timer's second expiry kills the
process by SIGALRM's default action, which no Python code can delay; Celery then redelivers
the message (``reject_on_worker_lost``), within ``FARM_MAX_ATTEMPTS`` deliveries.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from celery.exceptions import SoftTimeLimitExceeded


@contextlib.contextmanager
def time_limited(soft_s: float, hard_s: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only (a threads pool): no limits there
        return

    def soft_limit(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, max(hard_s - soft_s, 0.001))
        raise SoftTimeLimitExceeded(f"soft time limit ({soft_s:g} s) exceeded")

    previous = signal.signal(signal.SIGALRM, soft_limit)
    signal.setitimer(signal.ITIMER_REAL, soft_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
