"""Tasks: take the key a message names, call one farm function, return JSON."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from farm import service
from farm.config import BUILD_TASK
from farm.errors import BrokerError, StopRequested
from workers.app import app, key_of, registry, settings
from workers.stopping import interruptible
from workers.time_limits import time_limited

log = logging.getLogger(__name__)


@app.task(name=BUILD_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def build(self: Task, message: Any = None) -> dict[str, Any]:
    key = key_of(message)
    if key is None:
        log.warning("ignored a build message that names no key (forged or garbled)")
        return {"key": None, "status": "rejected"}
    ctx = service.Context(registry, settings, self.request.hostname, interruptible)
    try:
        with time_limited(settings.soft_time_limit_s, settings.time_limit_s):
            record = service.ensure(key, ctx, interrupts=(SoftTimeLimitExceeded,))
    except StopRequested as e:
        # The worker is stopping: the key is queued again; put the message back for another.
        raise Reject("worker stopping; key handed back", requeue=True) from e
    except BrokerError as e:
        # The registry stayed unreachable beyond the worker's patience. Requeue the message;
        # if the broker is down too, it stays unacknowledged and is redelivered later.
        raise Reject(str(e), requeue=True) from e
    if record is None:
        log.warning("ignored a build message for %s, which nobody submitted", key)
        return {"key": key, "status": "unknown"}
    return {"key": key, "status": str(record.status), "error": record.error}
