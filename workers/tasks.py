"""Tasks: parse the JSON message, call one farm function, return JSON."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from pydantic import ValidationError

from farm import service
from farm.config import BUILD_TASK
from farm.errors import BrokerError, StopRequested
from farm.kinds import parse_request
from farm.requests import describe
from workers.app import app, registry, settings
from workers.stopping import interruptible


@app.task(name=BUILD_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def build(self: Task, message: Any) -> dict[str, Any]:
    key = str(message.get("key", ""))[:64] if isinstance(message, dict) else ""
    try:
        request = parse_request(message["request"])
    except (KeyError, TypeError, ValidationError) as e:
        why = describe(e) if isinstance(e, ValidationError) else "it holds no request"
        sentence = (
            f"A build message for this key was refused ({why}); nothing was built. Submit "
            "the request again with the farm's client."
        )
        service.refuse(registry, key, sentence)
        return {"key": key, "status": "rejected", "error": sentence}
    ctx = service.Context(registry, settings, self.request.hostname, interruptible)
    try:
        record = service.ensure(request, key, ctx, interrupts=(SoftTimeLimitExceeded,))
    except StopRequested as e:
        # The worker is stopping: the key is queued again; put the message back for another.
        raise Reject("worker stopping; key handed back", requeue=True) from e
    except BrokerError as e:
        # The registry stayed unreachable beyond the worker's patience. Requeue the message;
        # if the broker is down too, it stays unacknowledged and is redelivered later.
        raise Reject(str(e), requeue=True) from e
    return {"key": key, "status": str(record.status), "error": record.error}
