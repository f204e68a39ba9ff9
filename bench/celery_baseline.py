"""Plain Celery on the same Redis: the yardstick the farm is compared to.

``noop`` measures Celery's own round trip; ``build`` runs the farm's builder with nothing of
the farm around it (no registry, lease, fingerprint or key), configured as the farm's worker
is where that is Celery's business (JSON, late acks, one message prefetched per process).
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

app = Celery("baseline", broker=os.environ.get("BASELINE_BROKER", "redis://"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_backend=os.environ.get("BASELINE_BACKEND", "redis://"),
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_default_queue="baseline",
)


@app.task(name="baseline.noop")
def noop() -> int:
    return 0


@app.task(name="baseline.build")
def build(fasta: str, dest: str) -> str:
    from farm.artifacts import gvlfa

    gvlfa.ensure_cache(Path(fasta), Path(dest))
    return dest
