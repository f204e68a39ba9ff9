"""A build's progress, reported by its builder as it goes.

Builders take a :class:`Progress` and call :meth:`~Progress.start` once and
:meth:`~Progress.advance` as work gets done (from any thread); the default reports nowhere, so
they stay plain functions. A worker passes a :class:`RegistryProgress`, which stores the figures
for ``farm status`` and ``farm wait`` and is also how a build learns that it was cancelled,
or that its grant was lost to another builder: either is raised in the builder, at its next
report, so a builder that lost its key stops within a second and removes its staging.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from farm.errors import BrokerError, BuildCancelled, FencedOut

if TYPE_CHECKING:
    from farm.registry import Registry


class Progress:
    """Reports nowhere."""

    def start(self, total: int, unit: str, *, stage: str | None = None) -> None:
        """``total`` units of work (0: unknown) in ``unit`` (bp, regions, B...), for the
        ``stage`` named (a build of several: each starts its own count and rate)."""

    def advance(self, n: int) -> None:
        """``n`` more units are done."""


NO_PROGRESS = Progress()


class RegistryProgress(Progress):
    """Stores progress in the registry at most every ``every_s``, under the builder's grant
    (``holder``, ``generation``); raises :class:`BuildCancelled` at a report once the key's
    current claim was cancelled, and :class:`FencedOut` once the grant is lost (``lost``: the
    lease renewer found it so)."""

    def __init__(
        self,
        registry: Registry,
        key: str,
        *,
        holder: str,
        generation: int,
        lost: Callable[[], bool] = lambda: False,
        claim: str,
        what: str,
        ttl_s: float,
        every_s: float = 0.5,
        worker: str | None = None,
    ) -> None:
        self._registry = registry
        self._key = key
        self._holder = holder
        self._generation = generation
        self._lost = lost
        self._claim = claim  # which claim of the key this build serves
        self._what = what  # the destination, for the sentence
        self._ttl_s = ttl_s
        self._every_s = every_s
        self._worker = worker  # who builds: a building record leaves it to its progress
        self._lock = threading.Lock()
        self._done = 0
        self._total = 0
        self._unit = ""
        self._stage: str | None = None
        self._started = time.time()
        self._reported = 0.0

    def start(self, total: int, unit: str, *, stage: str | None = None) -> None:
        """The first report is due ``every_s`` from the first start: a build shorter than
        that costs no report at all (most builds of a busy farm are small). A later stage
        keeps the report's pace."""
        with self._lock:
            first = not self._unit
            self._done, self._total, self._unit, self._stage = 0, total, unit, stage
            self._started = time.time()
            if first:
                self._reported = time.monotonic()

    def advance(self, n: int) -> None:
        with self._lock:
            self._done += n
            due = time.monotonic() - self._reported >= self._every_s
        if self._lost():
            self._fenced()
        if due:
            self._report()

    def _fenced(self) -> None:
        raise FencedOut(
            f"The build of {self._what} lost its grant (generation {self._generation}): "
            "another builder took it over; this one stopped."
        )

    def _report(self) -> None:
        with self._lock:
            self._reported = time.monotonic()
            figures = {
                "done": self._done,
                "total": self._total,
                "unit": self._unit,
                "stage": self._stage,
                "started_at": self._started,
                "updated_at": time.time(),
                "worker": self._worker,
            }
        try:
            granted, cancelled = self._registry.report_progress(
                self._key, self._holder, self._generation, figures, self._ttl_s
            )
        except BrokerError:
            return  # progress is for people; the build goes on without Redis
        if not granted:
            self._fenced()
        if cancelled == self._claim:
            raise BuildCancelled(
                f"The build of {self._what} was cancelled (`farm cancel`, or Ctrl-C on the "
                "`farm build` that started it); submit it again to build it."
            )


def describe(figures: dict | None, now: float | None = None) -> str:
    """``41% of 12,071,326 bp, 3.1 Mbp/s, 2 s left`` (what is known of it), after the
    stage's name when the build names one (``variant sites: 41% of 10.0 GB, ...``)."""
    if not figures or "unit" not in figures:
        return ""  # a build that has not reported yet (its progress says who and since when)
    done, total, unit = figures["done"], figures["total"], figures["unit"]
    elapsed = max((now or figures["updated_at"]) - figures["started_at"], 1e-9)
    rate = done / elapsed
    if total:
        parts = [f"{100 * done / total:.0f}% of {_amount(total, unit)}"]
    else:
        parts = [_amount(done, unit)]
    if done and elapsed >= 0.5:
        parts.append(f"{_si(rate)}{unit}/s")
        if total and rate > 0:
            parts.append(f"{_left(max(0.0, (total - done) / rate))} left")
    told = ", ".join(parts)
    return f"{figures['stage']}: {told}" if figures.get("stage") else told


def _amount(n: int, unit: str) -> str:
    """Bytes in SI units (``10.0 GB``), anything else counted in full (``1,000 regions``)."""
    return f"{_si(n)}{unit}" if unit == "B" and n >= 1000 else f"{n:,} {unit}"


def _left(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _si(x: float) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= factor:
            return f"{x / factor:.1f} {prefix}"
    return f"{x:.0f} "
