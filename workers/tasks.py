"""Tasks: take the key a message names, call one farm function, return JSON."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from farm import service
from farm.config import BUILD_TASK
from farm.errors import BrokerError, StopRequested
from farm.records import ArtifactRecord
from workers import lifecycle
from workers.app import app, key_of, registry, settings
from workers.stopping import interruptible
from workers.time_limits import time_limited

log = logging.getLogger(__name__)


def _built_here(record: ArtifactRecord, worker: str, since: float) -> bool:
    """Whether this delivery built the key (or failed it), rather than finding it finished or
    leased by another builder: what ``--max-builds`` counts."""
    return record.status.terminal and record.worker == worker and (record.finished_at or 0) >= since


@app.task(
    name=BUILD_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    Request="workers.lifecycle:CountedRequest",
)
def build(self: Task, message: Any = None) -> dict[str, Any]:
    key = key_of(message)
    if key is None:
        log.warning("ignored a build message that names no key (forged or garbled)")
        return {"key": None, "status": "rejected"}
    ctx = service.Context(registry, settings, self.request.hostname, interruptible)
    started = time.time()
    try:
        with lifecycle.building(), time_limited(settings.soft_time_limit_s, settings.time_limit_s):
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
    if _built_here(record, ctx.worker, started):
        lifecycle.count_build()
    return {"key": key, "status": str(record.status), "error": record.error}
