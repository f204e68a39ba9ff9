"""Ensure one request's artifact is valid: lease, double-check, build, publish, record.

This is everything a worker does, as a plain function: a Celery task only parses its message
and calls :func:`ensure`, and tests and the CLI's inline mode call it with no broker at all.
It is safe to call any number of times for one key, concurrently or late: the lease lets one
caller build, the others return at once, and a terminal record is never rebuilt by a message
(only a new claim, by a submission, puts a key back in flight).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from farm import kinds
from farm.config import Settings
from farm.confine import containing_root
from farm.errors import FarmError, StopRequested
from farm.fingerprint import Fingerprint
from farm.leases import Lease
from farm.progress import RegistryProgress
from farm.publish import Owner
from farm.records import ArtifactRecord, Status
from farm.registry import Registry
from farm.requests import BuildRequest, check_destination, request_key

log = logging.getLogger(__name__)
_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Context:
    registry: Registry
    settings: Settings
    worker: str  # who builds, as recorded: a Celery node name or inline@host:pid
    # Wraps the build itself: where a stopping worker may interrupt it (StopRequested).
    interruptible: Callable[[], AbstractContextManager[None]] = nullcontext


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

    Returns at once, without building, when the key is already terminal (a duplicate or late
    delivery) or another live builder holds its lease (the returned record is then still in
    flight: that builder finishes it, or the watchdog requeues it if that builder dies).
    ``interrupts`` are exceptions that mean "the time limit hit", recorded as such. A
    :class:`StopRequested` hands the key back (queued again, lease released) and propagates.
    Registry outages (:class:`~farm.errors.BrokerError`) propagate: the caller retries.
    """
    registry, settings = ctx.registry, ctx.settings
    record = registry.get(key)
    if record is not None and record.status.terminal:
        return record
    if record is not None and record.request != request.model_dump(mode="json"):
        # A message whose request is not the one claimed under its key (forged, or from a
        # buggy sender): it must not build, nor fail, someone else's request.
        log.warning("ignored a message for %s whose request differs from the record's", key)
        return record
    holder = f"{ctx.worker}/{uuid.uuid4().hex[:8]}"
    try:
        check_destination(request, settings.roots)  # never trust a message's destination
        current_key, sources = request_key(request)
    except FarmError as e:
        return _fail(ctx, request, key, {}, str(e), holder)
    except OSError as e:
        sentence = f"Cannot read a source of {request.destination()}: {e}."
        return _fail(ctx, request, key, {}, sentence, holder)
    if current_key != key:
        sentence = (
            f"A source of {request.destination()} changed after the request was submitted; "
            "submit it again to build from the current files."
        )
        return _fail(ctx, request, key, sources, sentence, holder)

    lease = Lease(registry, key, holder, settings.lease_ttl_s)
    if not lease.try_acquire():
        # Another live builder has the key: free this worker slot now.
        return registry.get(key) or record or queued_record(request, key, sources)
    with lease.heartbeat():
        record = registry.get(key)
        if record is not None and record.status.terminal:
            return record  # finished by another builder between our two reads
        record = record or queued_record(request, key, sources)
        attempt = registry.count_attempt(key)
        if attempt > settings.max_attempts:
            registry.clear_attempts(key)
            sentence = (
                f"The build of {request.destination()} was interrupted {attempt - 1} times (its "
                "worker was killed or lost, e.g. out of memory); see the worker logs, then "
                "submit it again."
            )
            return _fail(ctx, request, key, sources, sentence, holder, lease)
        started = time.time()
        building = record.evolve(
            status=Status.BUILDING, started_at=started, worker=ctx.worker, error=None
        )
        registry.put(building)
        try:
            with ctx.interruptible():
                built = kinds.ensure(
                    request,
                    Owner.current(job=key),
                    force=record.rebuild,
                    expected=sources,
                    root=containing_root(request.destination(), settings.roots),
                    progress=RegistryProgress(
                        registry.impatient(),
                        key,
                        claim=claim_id(building),
                        what=str(request.destination()),
                        ttl_s=settings.lease_ttl_s,
                    ),
                )
        except (StopRequested, SystemExit):
            lease.stop_renewing()
            registry.hand_back(building, holder)
            raise
        except KeyboardInterrupt:
            registry.clear_attempts(key)
            sentence = (
                f"The build of {request.destination()} was cancelled (the user interrupted "
                "it); submit it again to build it."
            )
            _fail(ctx, request, key, sources, sentence, holder, lease)
            raise
        except BaseException as e:
            sentence = _failure_sentence(e, request, settings, interrupts)
            if sentence is None:
                raise
            registry.clear_attempts(key)
            return _fail(ctx, request, key, sources, sentence, holder, lease)
        finished = time.time()
        done = building.evolve(
            status=Status.VALID,
            rebuild=False,
            error=None,
            sources=sources,
            finished_at=finished,
            build_seconds=round(finished - started, 6),
            size_bytes=built.size_bytes,
            checksum=built.checksum,
            action=built.action,
        )
        registry.clear_attempts(key)
        lease.stop_renewing()
        return registry.finish(done, holder)


def claim_id(record: ArtifactRecord) -> str:
    """Names one claim of a key (a later claim makes a new record): what a cancellation
    cancels."""
    return repr(record.created_at)


def request_cancel(registry: Registry, key: str, ttl_s: float) -> ArtifactRecord | None:
    """Cancel the build of ``key`` wherever it runs: a queued key fails now, a building one
    at its builder's next progress report (within a second). A terminal key is left alone."""
    record = registry.get(key)
    if record is None or record.status.terminal:
        return record
    registry.request_cancel(key, claim_id(record), ttl_s)
    return cancel(registry, key, "`farm cancel`")


def refuse(registry: Registry, key: str, sentence: str) -> ArtifactRecord | None:
    """A message too malformed to be a request (forged, or from an incompatible sender) fails
    the key it names with ``sentence``, and builds nothing. A key that is not one of ours, or
    whose record is final, is left alone."""
    if not _KEY.fullmatch(key):
        log.warning("ignored a malformed message with no usable key")
        return None
    record = registry.get(key)
    if record is not None and record.status.terminal:
        return record
    now = time.time()
    base = record or ArtifactRecord(
        key=key,
        kind="unknown",
        dest="",
        request={},
        sources={},
        status=Status.QUEUED,
        created_at=now,
        updated_at=now,
    )
    failed = base.evolve(status=Status.FAILED, error=sentence, finished_at=now)
    return registry.finish(failed, holder="")


def cancel(registry: Registry, key: str, why: str) -> ArtifactRecord | None:
    """Fail a key in flight that nobody builds any more (``why``: who stopped it), so no
    later worker builds what its only requester cancelled; a key still leased is left alone."""
    record = registry.get(key)
    if record is None or record.status.terminal:
        return record
    sentence = f"The build of {record.dest} was cancelled ({why}); submit it again to build it."
    failed = record.evolve(status=Status.FAILED, error=sentence, finished_at=time.time())
    return registry.finish(failed, holder="")


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
    holder: str,
    lease: Lease | None = None,
) -> ArtifactRecord:
    if lease is not None:
        lease.stop_renewing()
    base = ctx.registry.get(key) or queued_record(request, key, sources)
    record = base.evolve(
        status=Status.FAILED, error=error, finished_at=time.time(), worker=ctx.worker
    )
    return ctx.registry.finish(record, holder)
