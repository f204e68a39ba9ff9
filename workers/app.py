"""The Celery app: the only place, with ``workers.tasks``, that knows Celery.

Settings are read once here, at worker start. Each worker heartbeats into the registry so a
client can tell, without a broadcast, whether anyone is consuming.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from farm.config import Settings, celery_config
from farm.embedded import celery_broker_url, resolve_url
from farm.errors import BrokerError
from farm.registry import Registry

settings = Settings()
redis_url = resolve_url(settings)
registry = Registry.from_url(redis_url)

app = Celery("gvl-farm", include=["workers.tasks"])
app.conf.update(celery_config(settings, celery_broker_url(redis_url)))

_stop_heartbeat = threading.Event()


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    name = sender.hostname if sender is not None else "worker"

    def beat() -> None:
        while True:
            # the broker may be down: Celery reconnects, and we retry on the next beat
            with contextlib.suppress(BrokerError):
                registry.worker_seen(name)
            if _stop_heartbeat.wait(settings.worker_heartbeat_s):
                break

    threading.Thread(target=beat, name="farm-heartbeat", daemon=True).start()


@worker_shutdown.connect
def _stop(sender: Any = None, **_: Any) -> None:
    _stop_heartbeat.set()
    if sender is not None:
        with contextlib.suppress(BrokerError):
            registry.worker_gone(sender.hostname)
