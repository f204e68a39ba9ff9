"""Plain Celery on the same Redis, with a no-op task: the yardstick the farm is compared to."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("baseline", broker=os.environ.get("BASELINE_BROKER", "redis://"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_backend=os.environ.get("BASELINE_BACKEND", "redis://"),
    worker_prefetch_multiplier=1,
    task_default_queue="baseline",
)


@app.task(name="baseline.noop")
def noop() -> int:
    return 0
