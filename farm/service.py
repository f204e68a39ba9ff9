"""Ensure one request's artifact is valid: lease, double-check, build, publish, record.

This is everything a worker does, as a plain function: a Celery task only takes the key its
message names and calls :func:`ensure`, and tests and the CLI's inline mode call it with no
broker at all. It is safe to call any number of times for one key, concurrently or late: the
lease lets one caller build, the others return at once, and a terminal record is never rebuilt
by a message (only a new claim, by a submission, puts a key back in flight).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from farm import kinds, logs
from farm.config import Settings
from farm.confine import containing_root
from farm.errors import FarmError, FencedOut, StopRequested
from farm.fingerprint import Fingerprint
from farm.kinds import FenceToken
from farm.leases import Lease
from farm.progress import RegistryProgress
from farm.publish import Fence, Owner
from farm.records import ArtifactRecord, Status
from farm.registry import Registry
from farm.requests import BuildRequest, check_destination, describe

log = logging.getLogger(__name__)


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
    key: str,
    ctx: Context,
    *,
    interrupts: tuple[type[BaseException], ...] = (),
) -> ArtifactRecord | None:
    """Bring ``key`` to a terminal record (valid or failed) and return it; None when the key
    is not recorded (nobody submitted it, or it was forgotten): there is nothing to build.

    The request is the one recorded under the key, so a message can only ask for a build
    that was submitted. Returns at once, without building, when the key is already terminal
    (a duplicate or late delivery) or another live builder holds its lease (the returned
    record is then still in flight: that builder finishes it, or the watchdog requeues it if
    that builder dies). ``interrupts`` are exceptions that mean "the time limit hit",
    recorded as such. A :class:`StopRequested` hands the key back (queued again, lease
    released) and propagates. Registry outages (:class:`~farm.errors.BrokerError`)
    propagate: the caller retries.
    """
    registry, settings = ctx.registry, ctx.settings
    holder = f"{ctx.worker}/{uuid.uuid4().hex[:8]}"
    start = registry.start(key, holder, settings.lease_ttl_s, worker=ctx.worker)
    record = start.record
    if record is None or not start.leased:
        return record
    lease = Lease(registry, key, holder, start.generation, settings.lease_ttl_s)
    logs.key_changed(key, kind=record.kind, status="building", worker=ctx.worker, dest=record.dest)
    with lease.heartbeat():
        try:
            request = kinds.parse_request(record.request)
            check_destination(request, settings.roots)  # never trust a record's destination
        except ValidationError as e:
            sentence = (
                f"The record of {key} holds no valid request ({describe(e)}); nothing was "
                "built. Submit the request again with the farm's client."
            )
            return _fail(ctx, record, sentence, lease)
        except FarmError as e:
            return _fail(ctx, record, str(e), lease)
        if start.attempt > settings.max_attempts:
            sentence = (
                f"The build of {request.destination()} was interrupted {start.attempt - 1} "
                "times (its worker was killed or lost, e.g. out of memory); see the worker "
                "logs, then submit it again."
            )
            return _fail(ctx, record, sentence, lease)
        # What the destination records of the grant that built it. An artifact of this very
        # key is one an earlier grant published and never finished (else the key would not be
        # in flight): that grant may still take it back out, so it is replaced, never reused.
        token = kinds.fence_of(request.destination())
        if not _seed_generation(registry, lease, token):
            lease.end()
            return registry.get(key)  # taken over already: the newer grant finishes it
        force = record.rebuild or (token is not None and token.key == key)
        if token is not None and token.key == key and not record.rebuild:
            log.warning(
                "%s: %s holds this key's artifact from grant %d, which the registry does not "
                "vouch for; building it again (that grant may still take it back)",
                key, request.destination(), token.generation,
            )  # fmt: skip
        started = time.time()
        building = record.evolve(
            status=Status.BUILDING, started_at=started, worker=ctx.worker, error=None
        )  # what start() marked in the registry, with who builds and since when
        dest = request.destination()
        registry.note_staging_parent(str(dest.parent))  # where the staging sweep looks
        try:
            with ctx.interruptible():
                built = kinds.ensure(
                    request,
                    Owner.current(
                        job=key,
                        fence=_fence(registry, lease, dest, settings),
                        layout=settings.layout,
                    ),
                    force=force,
                    # The builder fingerprints each source as it stamps it, and refuses one
                    # that is not what the key was derived from (changed since submission).
                    expected=record.sources,
                    root=containing_root(dest, settings.roots),
                    progress=RegistryProgress(
                        registry.impatient(),
                        key,
                        holder=holder,
                        generation=lease.generation,
                        lost=lambda: lease.lost,
                        claim=claim_id(building),
                        what=str(dest),
                        ttl_s=settings.lease_ttl_s,
                        worker=ctx.worker,
                    ),
                )
        except FencedOut as e:
            lease.end()
            if e.newer_key is None:
                log.warning("%s: %s", key, e)
                return registry.get(key)  # the newer grant writes its record
            sentence = (
                f"The build of {dest} was superseded by a newer request for the same "
                f"destination ({e.newer_key}); nothing was published."
            )
            return _fail(ctx, building, sentence, lease, started=started)
        except (StopRequested, SystemExit):
            lease.end()
            if registry.hand_back(building, holder, lease.generation):
                logs.key_changed(
                    key,
                    kind=record.kind,
                    status="queued",
                    worker=ctx.worker,
                    action="handed back",
                    duration_s=time.time() - started,
                    dest=record.dest,
                )
            raise
        except KeyboardInterrupt:
            sentence = (
                f"The build of {request.destination()} was cancelled (the user interrupted "
                "it); submit it again to build it."
            )
            _fail(ctx, building, sentence, lease, started=started)
            raise
        except BaseException as e:
            sentence = _failure_sentence(e, request, settings, interrupts)
            if sentence is None:
                raise
            return _fail(ctx, building, sentence, lease, started=started)
        finished = time.time()
        done = building.evolve(
            status=Status.VALID,
            rebuild=False,
            error=None,
            finished_at=finished,
            build_seconds=round(finished - started, 6),
            size_bytes=built.size_bytes,
            checksum=built.checksum,
            action=built.action,
            # Ours unless it reused an artifact already there (which records its own grant).
            generation=(
                _published_generation(key, dest) if built.action == "reused" else lease.generation
            ),
        )
        lease.end()
        stands = registry.finish(done, holder, lease.generation)
        if stands == done:
            logs.key_changed(
                key,
                kind=done.kind,
                status="valid",
                worker=ctx.worker,
                action=done.action,
                duration_s=done.build_seconds,
                size_b=done.size_bytes,
                dest=done.dest,
            )
        else:
            # Published, then found fenced out at its last word: the one gap no filesystem
            # fences. The watchdog checks the destination at once and repairs it.
            log.warning("%s: published %s but lost the grant before its record", key, dest)
            registry.watch_publish(key, lease.generation, time.time())
        return stands


def _fence(registry: Registry, lease: Lease, dest: Path, settings: Settings) -> Fence:
    """The checks the publish step makes, for this grant (see :mod:`farm.publish`)."""

    def may_publish() -> None:
        verdict = registry.may_publish(
            lease.key, lease.holder, lease.generation, str(dest), watch_s=settings.lease_ttl_s
        )
        if not verdict.allowed:
            lease.lost = True
            raise FencedOut(
                f"The build of {dest} lost its grant (generation {lease.generation}) before "
                "publishing; another builder took it over.",
                verdict.newer_key,
            )

    return Fence(
        key=lease.key,
        generation=lease.generation,
        may_publish=may_publish,
        still_granted=lambda: registry.still_granted(lease.key, lease.holder, lease.generation),
        # A lock held by a frozen peer may not keep this key building past its lease.
        lock_wait_s=settings.lease_ttl_s / 3,
    )


def _seed_generation(registry: Registry, lease: Lease, token: FenceToken | None) -> bool:
    """Make the grant newer than what the key's artifact on disk records (a Redis that lost
    count); False when the grant is gone already."""
    if token is None or token.key != lease.key or token.generation < lease.generation:
        return True
    seeded = registry.seed_generation(lease.key, lease.holder, lease.generation, token.generation)
    if seeded == 0:
        return False
    lease.generation = seeded
    return True


def _published_generation(key: str, dest: Path) -> int | None:
    """The generation the artifact now at ``dest`` records, if it is this key's."""
    token = kinds.fence_of(dest)
    return token.generation if token is not None and token.key == key else None


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
    record: ArtifactRecord,
    error: str,
    lease: Lease,
    *,
    started: float | None = None,
) -> ArtifactRecord | None:
    """Fail the key under the builder's grant; ``started``: when its build began (None: it
    failed before building), for the duration counted and logged."""
    lease.end()
    finished = time.time()
    ran_s = None if started is None else finished - started
    failed = record.evolve(
        status=Status.FAILED, error=error, finished_at=finished, worker=ctx.worker
    )
    stands = ctx.registry.finish(failed, lease.holder, lease.generation, ran_s=ran_s)
    if stands == failed:
        logs.key_changed(
            record.key,
            kind=record.kind,
            status="failed",
            worker=ctx.worker,
            duration_s=ran_s,
            dest=record.dest,
            error=error,
        )
    return stands
