"""Tasks: parse the JSON message, call one farm function, return JSON."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError

from farm import service
from farm.config import BUILD_TASK
from farm.errors import BrokerError
from farm.requests import parse_request
from workers.app import app, registry, settings


@app.task(name=BUILD_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def build(self: Task, message: dict[str, Any]) -> dict[str, Any]:
    key = str(message.get("key", ""))
    try:
        request = parse_request(message["request"])
    except (KeyError, ValidationError) as e:
        return {"key": key, "status": "rejected", "error": f"malformed build message: {e}"}
    ctx = service.Context(registry=registry, settings=settings, worker=self.request.hostname)
    try:
        record = service.ensure(request, key, ctx, interrupts=(SoftTimeLimitExceeded,))
    except BrokerError as e:
        raise self.retry(exc=e, countdown=5, max_retries=60) from e
    return {"key": key, "status": str(record.status), "error": record.error}
