"""Run numbered jobs on as many threads as pay, found by measuring, not fixed in advance.

How many threads pay for copying a genome depends on things no constant knows: whether the
file is in the page cache (two readers of a cold file on one disk can be slower than one), how
fast this machine faults in fresh page-cache pages, what else runs on its cores. So
:func:`run_adaptive` measures: it runs a window of jobs at each of its current concurrency and
the ones next to it, keeps the fastest, holds it for a few windows, and measures again, so a
build that starts cold and ends warm, or that gains a neighbour halfway, keeps choosing well.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

WINDOW = 8  # jobs per measurement (4 MiB each for a cache: 32 MiB)
HOLD = 6  # windows kept at the chosen concurrency before measuring again
BETTER = 1.08  # how much faster a neighbour must be to be taken (measurements are noisy)


class _Climb:
    """Which concurrency to run the next window at, from the rates of the windows before.

    A round measures the current concurrency, then each neighbour (one more thread, one
    fewer), one window each; a neighbour clearly faster starts a round from there (a climb),
    else the current one is held for ``HOLD`` windows and then a new round starts.
    """

    def __init__(self, max_threads: int) -> None:
        self.max = max_threads
        self.target = 1
        self._base = 1
        self._todo: list[int] = []
        self._rates: dict[int, float] = {}
        self._hold = 0
        self._round(1)

    def _round(self, base: int) -> None:
        self._base = self.target = base
        self._rates = {}
        self._todo = [t for t in (base + 1, base - 1) if 1 <= t <= self.max]

    def next(self, rate: float) -> int:
        """``rate``: jobs/s of the window just run at ``self.target``. The next target."""
        if self._hold:
            self._hold -= 1
            if not self._hold:
                self._round(self.target)
            return self.target
        self._rates[self.target] = rate
        if self._todo:
            self.target = self._todo.pop(0)
            return self.target
        best = max(self._rates, key=self._rates.__getitem__)
        if best != self._base and self._rates[best] > self._rates[self._base] * BETTER:
            self._round(best)
        else:
            self.target, self._hold = self._base, HOLD
        return self.target


def run_adaptive(
    n: int, job: Callable[[int], object], max_threads: int, *, window: int = WINDOW
) -> list[int]:
    """Run ``job(0)`` ... ``job(n - 1)``, in that order of starting, on up to ``max_threads``
    threads; return the concurrency each window ran at. The first failure stops the rest
    (jobs not started are not run) and is raised."""
    climb = _Climb(max(1, max_threads))
    target = climb.target
    used: list[int] = []
    pending: set[Future[object]] = set()
    done_in_window = 0
    window_start = time.perf_counter()
    k = 0
    with ThreadPoolExecutor(max(1, max_threads), thread_name_prefix="adaptive") as pool:
        try:
            while k < n or pending:
                while k < n and len(pending) < target:
                    pending.add(pool.submit(job, k))
                    k += 1
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    f.result()  # the first failure is raised here
                done_in_window += len(finished)
                if done_in_window >= window:
                    now = time.perf_counter()
                    used.append(target)
                    rate = done_in_window / max(now - window_start, 1e-9)
                    target = climb.next(rate)
                    done_in_window, window_start = 0, now
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    if done_in_window:
        used.append(target)
    return used
