"""A worker's life as autoscalers and batch schedulers see it: its beat (``farm health``), its
end (``--lifetime``, ``--max-builds``, ``--idle-exit``), each ending as a warm shutdown (the
SIGTERM path of :mod:`workers.stopping`: running builds finish within the stop grace or are
handed back).

The beat is touched from Celery's event loop (a timer of the consumer's hub), not from a thread
of its own: a thread would go on beating while the loop is wedged. While the loop is
legitimately away, a thread keeps the beat instead, and only then: while the worker starts,
while the consumer reconnects to the broker (restarting a worker does not bring Redis back),
while a solo pool builds in the main process (a wedged build is the time limits' business),
and while it stops. A frozen process (SIGSTOP) beats from nowhere.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
from celery import Celery, bootsteps
from celery.signals import task_received, worker_init, worker_shutdown, worker_shutting_down
from celery.worker import state as worker_state
from celery.worker.request import Request

from farm.config import QUEUE, Settings
from farm.health import Beat

log = logging.getLogger("farm.worker")

_settings: Settings | None = None
_beat: Beat | None = None
_main_pid = 0
_covered: set[str] = set()  # why the event loop is away and the thread beats instead
_stop = threading.Event()
_consumer: Any = None
_last_work = time.monotonic()  # when this worker last received or ran a build
_builds: Any = None  # a counter in shared memory: pool children add, the main process reads
_ending = threading.Event()  # a drain was asked for: do it once


def install(app: Celery, settings: Settings) -> None:
    """Called once, where the Celery app is made (every process imports it)."""
    global _settings, _builds, _main_pid
    _settings = settings
    _main_pid = os.getpid()
    if settings.worker_max_builds is not None:
        # Made before the pool forks, so every child adds to this same counter.
        _builds = multiprocessing.Value("q", 0)
    app.steps["consumer"].add(Pulse)
    worker_init.connect(_on_init, weak=False)
    task_received.connect(_on_received, weak=False)
    worker_shutting_down.connect(_on_shutting_down, weak=False)
    worker_shutdown.connect(_on_shutdown, weak=False)


def _on_init(sender: Any = None, **_: Any) -> None:
    global _beat, _last_work
    assert _settings is not None
    _last_work = time.monotonic()
    name = getattr(sender, "hostname", None) or "worker"
    beat = Beat(_settings.state_dir, name, _settings.health_heartbeat_s)
    try:
        beat.start()
    except OSError as e:
        log.warning("no health beat: cannot write under %s (%s)", _settings.state_dir, e)
    else:
        _beat = beat
        _covered.add("starting")
        threading.Thread(target=_bridge, name="farm-beat", daemon=True).start()
    if _settings.worker_lifetime_s is not None:
        threading.Thread(target=_drain_at_end, name="farm-lifetime", daemon=True).start()
    if _settings.idle_exit_s is not None:
        threading.Thread(target=_exit_when_idle, name="farm-idle", daemon=True).start()


def _bridge() -> None:
    """Beat while the event loop is legitimately away (see the module's docstring)."""
    assert _settings is not None and _beat is not None
    while not _stop.wait(_settings.health_heartbeat_s):
        if _covered:
            with contextlib.suppress(OSError):
                _beat.touch()


@contextlib.contextmanager
def covered(reason: str) -> Iterator[None]:
    """The event loop is away for ``reason``: the beat thread stands in meanwhile."""
    _covered.add(reason)
    try:
        yield
    finally:
        _covered.discard(reason)


class Pulse(bootsteps.StartStopStep):
    """Beats from the consumer's event loop and says whether the consumer consumes. Started
    each time the consumer (re)connects, stopped when it loses the broker or shuts down."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._entry: Any = None

    def start(self, parent: Any) -> None:
        global _consumer
        _consumer = parent
        if _beat is None:
            return
        hub = getattr(parent, "hub", None)
        if hub is None:  # no event loop (eventlet, gevent): nothing to watch but the thread
            _covered.add("no event loop")
            _beat.ready(True)
            return
        assert _settings is not None
        # Ticks run once the loop runs, after the consumer started consuming: the first at
        # once (ready), then every period.
        hub.call_soon(_tick)
        self._entry = hub.timer.call_repeatedly(_settings.health_heartbeat_s, _tick)
        _covered.discard("starting")
        _covered.discard("reconnecting")

    def stop(self, parent: Any) -> None:
        self._not_consuming(parent, "reconnecting")

    def shutdown(self, parent: Any) -> None:
        self._not_consuming(parent, "stopping")

    def _not_consuming(self, parent: Any, reason: str) -> None:
        if _beat is None:
            return
        _covered.add(reason)
        with contextlib.suppress(OSError):
            _beat.ready(False)
        hub = getattr(parent, "hub", None)
        if self._entry is not None and hub is not None:
            with contextlib.suppress(Exception):
                hub.timer.cancel(self._entry)
        self._entry = None


def _tick() -> None:
    """One beat of the event loop."""
    if _beat is None:
        return
    try:
        _beat.touch()
        if "stopping" not in _covered:
            _beat.ready(True)
    except OSError as e:
        log.warning("health beat not written: %s", e)


# --- the ends of a worker ----------------------------------------------------------------------


def _warm_shutdown(why: str) -> None:
    """Stop as on SIGTERM: take no new key, let running builds finish within the stop grace,
    hand back the rest. Once."""
    if _ending.is_set():
        return
    _ending.set()
    log.warning("%s: stopping (running builds get FARM_STOP_GRACE_S, then are handed back)", why)
    os.kill(_main_pid, signal.SIGTERM)


def drain_delay_s(settings: Settings, *, draw: float | None = None) -> float:
    """Seconds from start to the drain, so that the worker is gone by its lifetime: the
    lifetime, less a random part of the stagger, the stop grace and a margin for handing
    back and exiting (a tenth of the lifetime, at least 1 s and at most 60 s)."""
    assert settings.worker_lifetime_s is not None
    life = settings.worker_lifetime_s
    stagger = settings.worker_lifetime_stagger_s * (random.random() if draw is None else draw)
    margin = min(60.0, max(1.0, life / 10))
    return max(0.0, life - stagger - settings.stop_grace_s - margin)


def _drain_at_end() -> None:
    assert _settings is not None
    # Counted from the process's start, as a scheduler counts its walltime, not from here.
    age = max(0.0, time.time() - psutil.Process().create_time())
    delay = max(0.0, drain_delay_s(_settings) - age)
    log.info("lifetime %g s: draining in %.1f s", _settings.worker_lifetime_s, delay)
    if not _stop.wait(delay):
        _warm_shutdown(f"lifetime of {_settings.worker_lifetime_s:g} s nearly over")


def _on_received(sender: Any = None, **_: Any) -> None:
    global _last_work
    _last_work = time.monotonic()


def _exit_when_idle() -> None:
    """Exit after ``idle_exit_s`` in which this worker received no message and ran nothing:
    a pool shrinks to what its queue needs, the embedded worker goes away when unused."""
    assert _settings is not None and _settings.idle_exit_s is not None
    global _last_work
    while not _stop.wait(min(1.0, _settings.idle_exit_s / 4)):
        if worker_state.active_requests or worker_state.reserved_requests:
            _last_work = time.monotonic()
        elif time.monotonic() - _last_work >= _settings.idle_exit_s:
            _warm_shutdown(f"idle for {_settings.idle_exit_s:g} s")
            return


def count_build() -> None:
    """In the process that built: one more build (success or failure) for ``--max-builds``."""
    if _builds is not None:
        with _builds.get_lock():
            _builds.value += 1


@contextlib.contextmanager
def building() -> Iterator[None]:
    """Around a build: in the main thread of the main process (a solo pool) the event loop
    waits for it. Pool children and a threads pool leave the loop free: nothing to cover."""
    if os.getpid() != _main_pid or threading.current_thread() is not threading.main_thread():
        yield
        return
    with covered("building"):
        yield


class CountedRequest(Request):
    """Celery's request, with one more thing its main process does when a build's message is
    acknowledged: after ``--max-builds`` builds, stop consuming before the acknowledgement
    frees a slot for another message, then stop the worker."""

    def acknowledge(self) -> None:
        if (
            _settings is not None
            and _settings.worker_max_builds is not None
            and _builds is not None
            and _builds.value >= _settings.worker_max_builds
            and not _ending.is_set()
        ):
            if _consumer is not None:
                with contextlib.suppress(Exception):
                    _consumer.cancel_task_queue(QUEUE)
            _warm_shutdown(f"{_builds.value} build(s) done (--max-builds)")
        super().acknowledge()


def _on_shutting_down(**_: Any) -> None:
    _covered.add("stopping")


def _on_shutdown(**_: Any) -> None:
    _stop.set()
    if _beat is not None and os.getpid() == _main_pid:
        with contextlib.suppress(OSError):
            _beat.remove()
