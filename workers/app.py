"""The Celery app: the only place, with ``workers.tasks``, that knows Celery.

Settings are read once here, at worker start. Each worker's main process runs two threads
beside Celery's: a heartbeat into the registry (so a client can tell, without a broadcast,
whether anyone is consuming, and the watchdog can tell a worker that died), and the watchdog
(:mod:`farm.watchdog`), which requeues whatever a dead worker, a lost message or a stopped
client left in flight, and sweeps dead builders' staging directories (:mod:`farm.sweep`).
Its health beat and its ends (lifetime, max builds, idle exit) are in :mod:`workers.lifecycle`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from farm import sweep
from farm.config import Settings, celery_config
from farm.embedded import celery_broker_url, resolve_url
from farm.errors import BrokerError
from farm.queue import BrokerInspector, Sender
from farm.registry import Registry, command_timeout
from farm.watchdog import Watchdog
from workers import broker_fixes, lifecycle, stopping

log = logging.getLogger("farm.worker")

broker_fixes.install()
settings = Settings.from_env()
redis_url = resolve_url(settings)
registry = Registry.from_url(
    redis_url,
    patience_s=settings.registry_patience_s,
    forget_unusable_after_s=settings.forget_unusable_after_s,
    # Bounded by the lease: a command sent while cut off is delivered in time or never.
    timeout_s=command_timeout(settings.lease_ttl_s),
)

app = Celery("gvl-farm", include=["workers.tasks"])
app.conf.update(celery_config(settings, celery_broker_url(redis_url)))
lifecycle.install(app, settings)

_stop = threading.Event()
_MAIN_PID = os.getpid()  # pool children are forked from this process


@worker_init.connect
def _solo_pool_builds_here(sender: Any = None, **_: Any) -> None:
    stopping.install_stop_handler()  # a solo pool runs builds in this process


@worker_process_init.connect
def _pool_child(**_: Any) -> None:
    if os.getpid() == _MAIN_PID:
        return  # the solo pool sends this signal too: Celery's own SIGTERM handler stays
    stopping.install_stop_handler()
    stopping.handle_child_term(settings.stop_grace_s)


@worker_ready.connect
def _start_threads(sender: Any = None, **_: Any) -> None:
    name = sender.hostname if sender is not None else "worker"
    threading.Thread(target=_heartbeat, args=(name,), name="farm-heartbeat", daemon=True).start()
    threading.Thread(target=_watch, args=(name,), name="farm-watchdog", daemon=True).start()
    if settings.staging_sweep_interval_s > 0:
        threading.Thread(target=_sweep, args=(name,), name="farm-sweep", daemon=True).start()


def _heartbeat(name: str) -> None:
    # Its own connections: never waits behind a build.
    beats = Registry.from_url(redis_url, timeout_s=command_timeout(settings.lease_ttl_s))
    while True:
        # the broker may be down: Celery reconnects, and we retry on the next beat
        with contextlib.suppress(BrokerError):
            beats.worker_seen(name)
        if _stop.wait(settings.worker_heartbeat_s):
            break


def _watch(name: str) -> None:
    watchdog = Watchdog(
        Registry.from_url(
            redis_url,
            forget_unusable_after_s=settings.forget_unusable_after_s,
            timeout_s=command_timeout(settings.lease_ttl_s),
        ),
        settings,
        send=Sender(settings, redis_url).send,
        broker_ids=BrokerInspector(redis_url).message_ids,
        name=name,
    )
    while not _stop.wait(settings.watchdog_interval_s):
        try:
            watchdog.sweep()
        except BrokerError:
            continue  # Redis is away; the next sweep notices its restart
        except Exception:
            log.exception("watchdog sweep failed; retrying on the next tick")


def _sweep(name: str) -> None:
    """Staging directories of dead builders, one sweep farm-wide per interval (farm.sweep).
    Its own thread: a slow listing on a shared filesystem must not delay the watchdog."""
    sweeper = Registry.from_url(redis_url)
    while not _stop.wait(settings.staging_sweep_interval_s):
        try:
            sweep.sweep(sweeper, settings, name=name, now=time.time())
        except BrokerError:
            continue  # Redis is away; sweep at the next interval
        except Exception:
            log.exception("staging sweep failed; retrying at the next interval")


@worker_shutting_down.connect
def _graceful(sig: str = "", how: str = "", **_: Any) -> None:
    if how == "Warm":
        stopping.stop_after_grace(settings.stop_grace_s)


@worker_shutdown.connect
def _stopped(sender: Any = None, **_: Any) -> None:
    _stop.set()
    if sender is not None:
        with contextlib.suppress(BrokerError):
            Registry.from_url(redis_url).worker_gone(sender.hostname)
