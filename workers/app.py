"""The Celery app: the only place, with ``workers.tasks``, that knows Celery.

Settings are read once here, at worker start. Each worker's main process runs two threads
beside Celery's: a heartbeat into the registry (so a client can tell, without a broadcast,
whether anyone is consuming, and the watchdog can tell a worker that died; it also says what
``farm workers`` shows: slots, the keys being built, version), and the watchdog
(:mod:`farm.watchdog`), which requeues whatever a dead worker, a lost message or a stopped
client left in flight, and sweeps dead builders' staging directories (:mod:`farm.sweep`).
Its health beat and its ends (lifetime, max builds, idle exit) are in :mod:`workers.lifecycle`.

With ``FARM_LOG_FORMAT=json`` Celery keeps its handlers (stderr or ``--logfile``) but every
one of them gets the farm's JSON formatter, and the banner (text on stdout) is not printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import threading
import time
from typing import Any

from celery import Celery
from celery.apps import worker as celery_worker_app
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from celery.utils.log import get_multiprocessing_logger
from celery.worker import state as worker_state

import farm
from farm import logs, sweep
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
_KEY = re.compile(r"[0-9a-f]{64}")


def key_of(message: Any) -> str | None:
    """The key a message names: the key itself, or (from older clients) a dict holding
    it. Anything else a message says is ignored: the request is the key's record."""
    if isinstance(message, dict):
        message = message.get("key")
    return message if isinstance(message, str) and _KEY.fullmatch(message) else None


def _say_json(msg: str, f: Any = None) -> None:
    """Celery's ``safe_say`` (a raw write, safe in a signal handler), as a JSON line."""
    stream = f if f is not None else sys.__stderr__
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.write(stream.fileno(), logs.json_line("INFO", "celery.apps.worker", msg).encode())


if settings.log_format == "json":
    # Until Celery sets up its own handlers (which replace this one, and which _json_logs
    # reformats), what is said early, such as Celery's warning about running as root, is a
    # JSON line too.
    logging.captureWarnings(True)
    _early = logging.StreamHandler()
    logs.use_json([_early])
    logging.getLogger().addHandler(_early)
    # Celery's signal handlers print a few notices ("Warm shutdown") straight to the stream.
    celery_worker_app.safe_say = _say_json


@after_setup_logger.connect
@after_setup_task_logger.connect
def _json_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    """Celery formats its handlers as text; FARM_LOG_FORMAT=json reformats every one."""
    if settings.log_format != "json":
        return
    loggers = [logger, logging.getLogger(), get_multiprocessing_logger()]
    logs.use_json([h for lg in loggers if lg is not None for h in lg.handlers])


@celeryd_after_setup.connect
def _no_banner_in_json(instance: Any = None, **_: Any) -> None:
    if settings.log_format == "json" and instance is not None:
        instance.quiet = True  # the banner is text printed on stdout, not a log record


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
    info = _describe(sender)
    log.info(
        "worker %s ready: %d slot(s), queue %s, farm %s",
        name, info["slots"], app.conf.task_default_queue, info["version"],
    )  # fmt: skip
    threading.Thread(
        target=_heartbeat, args=(name, sender), name="farm-heartbeat", daemon=True
    ).start()
    threading.Thread(target=_watch, args=(name,), name="farm-watchdog", daemon=True).start()
    if settings.staging_sweep_interval_s > 0:
        threading.Thread(target=_sweep, args=(name,), name="farm-sweep", daemon=True).start()


_STARTED_AT = time.time()


def _describe(consumer: Any) -> dict[str, Any]:
    """What ``farm workers`` shows of this worker. ``slots``: the most builds it runs at
    once (with --autoscale, its maximum); ``pool``: the processes it has now; ``busy``: the
    keys its pool is running (Celery's active requests, known to this main process)."""
    controller = getattr(consumer, "controller", None)
    scaler = getattr(controller, "autoscaler", None)
    pool = getattr(controller, "pool", None)
    if scaler is not None:
        slots, processes = int(scaler.max_concurrency), int(scaler.processes)
    else:
        slots = int(getattr(pool, "limit", None) or getattr(controller, "concurrency", 1) or 1)
        processes = slots
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slots": slots,
        "pool": processes,
        "busy": _busy_keys(),
        "version": farm.__version__,
        "started_at": _STARTED_AT,
    }


def _busy_keys() -> list[str]:
    """The keys of Celery's active requests. Read from the heartbeat thread while Celery's
    own thread changes the set: a read that races with a change is tried again, and a
    heartbeat never dies of it (a worker without one would look dead)."""
    for _ in range(3):
        try:
            requests = list(worker_state.active_requests)
        except RuntimeError:  # the set changed size during the copy
            continue
        busy = set()
        for request in requests:
            args = getattr(request, "args", None) or [None]
            key = key_of(getattr(request, "id", None)) or key_of(args[0])
            if key:
                busy.add(key)
        return sorted(busy)
    return []


def _heartbeat(name: str, consumer: Any) -> None:
    # Its own connections: never waits behind a build.
    beats = Registry.from_url(redis_url, timeout_s=command_timeout(settings.lease_ttl_s))
    while True:
        # the broker may be down: Celery reconnects, and we retry on the next beat
        try:
            beats.worker_seen(name, _describe(consumer), ttl_s=settings.worker_silent_after_s)
        except BrokerError:
            pass
        except Exception:
            log.exception("heartbeat: cannot describe this worker; beating without it")
            with contextlib.suppress(BrokerError):
                beats.worker_seen(name)
        if _stop.wait(settings.worker_heartbeat_s):
            break


def _watch(name: str) -> None:
    try:
        if registry.recount_if_never_counted(name):
            log.info("counted the registry's records by status (first start of a counting farm)")
    except BrokerError:
        pass  # the next worker to start tries again
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
