"""Ensure one request's artifact is valid: lease, double-check, build, publish, record.

This is everything a worker does, as a plain function: a Celery task only parses its message
and calls :func:`ensure`, and tests and the CLI's inline mode call it with no broker at all.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from farm import kinds
from farm.artifacts.base import State
from farm.config import Settings
from farm.errors import FarmError
from farm.fingerprint import Fingerprint
from farm.leases import Lease
from farm.publish import Owner
from farm.registry import ArtifactRecord, Registry, Status
from farm.requests import BuildRequest, check_destination, request_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    registry: Registry
    settings: Settings
    worker: str  # who builds, as recorded: a Celery node name or inline@host:pid


def inline_worker_name() -> str:
    return f"inline@{socket.gethostname()}:{os.getpid()}"


def queued_record(
    request: BuildRequest, key: str, sources: dict[str, Fingerprint]
) -> ArtifactRecord:
    now = time.time()
    return ArtifactRecord(
        key=key,
        kind=request.kind,
        dest=str(request.destination()),
        request=request.model_dump(mode="json"),
        sources=sources,
        status=Status.QUEUED,
        created_at=now,
        updated_at=now,
    )


def ensure(
    request: BuildRequest,
    key: str,
    ctx: Context,
    *,
    interrupts: tuple[type[BaseException], ...] = (),
) -> ArtifactRecord:
    """Bring ``key`` to a terminal record (valid or failed) and return it.

    ``interrupts`` are exceptions that mean "the time limit hit", recorded as such.
    Registry outages (:class:`~farm.errors.BrokerError`) propagate: the caller retries.
    """
    registry, settings = ctx.registry, ctx.settings
    try:
        check_destination(request, settings.roots)  # never trust a message's destination
        current_key, sources = request_key(request)
    except FarmError as e:
        return _fail(ctx, request, key, {}, str(e))
    except OSError as e:
        return _fail(
            ctx, request, key, {}, f"Cannot read a source of {request.destination()}: {e}."
        )
    if current_key != key:
        return _fail(
            ctx,
            request,
            key,
            sources,
            f"A source of {request.destination()} changed after the request was submitted; "
            "submit it again to build from the current files.",
        )

    lease = Lease(registry, key, f"{ctx.worker}/{uuid.uuid4().hex[:8]}", settings.lease_ttl_s)
    deadline = time.monotonic() + settings.soft_time_limit_s
    while not lease.try_acquire():
        # Someone holds the key: follow their build instead of starting a second one.
        record = registry.get(key)
        if record is not None and record.status.terminal:
            return record
        if time.monotonic() > deadline:
            return record or queued_record(request, key, sources)
        time.sleep(min(1.0, settings.lease_ttl_s / 6))

    with lease.heartbeat():
        record = registry.get(key) or queued_record(request, key, sources)
        if record.status is Status.VALID and kinds.classify(request).state is State.FRESH:
            return record
        attempt = registry.count_attempt(key)
        if attempt > settings.max_attempts:
            registry.clear_attempts(key)
            return _fail(
                ctx,
                request,
                key,
                sources,
                f"The build of {request.destination()} was interrupted {attempt - 1} times (its "
                "worker was killed or lost, e.g. out of memory); see the worker logs, then "
                "submit it again.",
            )
        started = time.time()
        registry.put(
            record.evolve(status=Status.BUILDING, started_at=started, worker=ctx.worker, error=None)
        )
        try:
            built = kinds.ensure(request, Owner.current(job=key))
        except BaseException as e:
            sentence = _failure_sentence(e, request, settings, interrupts)
            if sentence is None:
                raise
            registry.clear_attempts(key)
            return _fail(ctx, request, key, sources, sentence)
        finished = time.time()
        done = record.evolve(
            status=Status.VALID,
            error=None,
            sources=sources,
            started_at=started,
            finished_at=finished,
            build_seconds=round(finished - started, 6),
            size_bytes=built.size_bytes,
            checksum=built.checksum,
            worker=ctx.worker,
            action=built.action,
        )
        registry.put(done)
        registry.clear_attempts(key)
        return done


def _failure_sentence(
    e: BaseException,
    request: BuildRequest,
    settings: Settings,
    interrupts: tuple[type[BaseException], ...],
) -> str | None:
    """What the record should say about a build that raised; None: not ours to record."""
    if isinstance(e, FarmError):
        return str(e)
    if isinstance(e, interrupts):
        return (
            f"The build of {request.destination()} exceeded the time limit of "
            f"{settings.soft_time_limit_s:g} s; raise FARM_SOFT_TIME_LIMIT_S and submit again."
        )
    if isinstance(e, Exception):
        log.exception("internal error while building %s", request.destination())
        return (
            f"Internal error while building {request.destination()} "
            f"({type(e).__name__}: {e}); see the worker log and report it."
        )
    return None  # KeyboardInterrupt, SystemExit: the process is going away


def _fail(
    ctx: Context,
    request: BuildRequest,
    key: str,
    sources: dict[str, Fingerprint],
    error: str,
) -> ArtifactRecord:
    base = ctx.registry.get(key) or queued_record(request, key, sources)
    record = base.evolve(
        status=Status.FAILED, error=error, finished_at=time.time(), worker=ctx.worker
    )
    ctx.registry.put(record)
    return record
