"""The Python API for pipelines: submit requests, poll and wait on their records.

Submission validates and keys each request locally, then claims all keys in one round trip;
only the first claimant of a key sends a message, so 500 jobs asking for the same artifact
queue one build. A request whose artifact is already valid is answered from the registry
without any worker. A claim is confirmed once its message is out; a client killed in between
leaves a claim that the workers' watchdog sends on its behalf.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from farm import embedded, service
from farm.config import Settings
from farm.errors import BrokerError, FarmError, InputError
from farm.fingerprint import Fingerprint, fingerprint
from farm.limits import MAX_BATCH
from farm.queue import Sender
from farm.records import ArtifactRecord, Status
from farm.registry import Claim, Registry
from farm.requests import BuildRequest, derive_key, prepare

NO_WORKER = (
    "No live worker is consuming the farm's queue, so nothing will be built until one starts: "
    "run `farm worker` (or `honcho start` with the Procfile)."
)


CANCEL_TTL_S = 3600.0  # a cancellation outlives any wait for a builder's next report
SETTLE_EVERY_S = 10.0  # a waiter re-reads every pending key this often, at the least
COMPLETIONS_READ = 5000  # completions a waiter reads at once
GATHER_ABOVE, GATHER_S = 100, 0.05  # with more keys pending, a waiter reads 20 times a second
_IN_FLIGHT = ("queued", "building")


class NoWorkerWarning(UserWarning):
    """Requests wait in the queue: no worker has sent a heartbeat lately."""


@dataclass(frozen=True)
class Submission:
    key: str
    record: ArtifactRecord
    enqueued: bool  # this call sent the build message


class Farm:
    def __init__(self, settings: Settings, registry: Registry, sender: Sender) -> None:
        self.settings = settings
        self.registry = registry
        self._sender = sender
        # What this client submitted, by key: a key whose record vanishes (a Redis restart
        # without persistence) is submitted again by wait() instead of reported unknown.
        self._submitted: dict[str, BuildRequest] = {}

    @classmethod
    def connect(cls, settings: Settings | None = None) -> Farm:
        settings = settings or Settings.from_env()
        url = embedded.resolve_url(settings)
        registry = Registry.from_url(url, forget_unusable_after_s=settings.forget_unusable_after_s)
        return cls(settings, registry, Sender(settings, url))

    def close(self) -> None:
        self._sender.close()

    def __enter__(self) -> Farm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, request: BuildRequest) -> Submission:
        return self.submit_many([request])[0]

    def submit_many(
        self,
        requests: Sequence[BuildRequest],
        chunk: int = 2000,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Submission]:
        """Validate, key, claim and enqueue; raises on the first invalid request, before
        anything is queued. ``on_progress(n)``: n requests are submitted so far."""
        if len(requests) > MAX_BATCH:
            raise InputError(
                f"A batch of {len(requests):,} requests is over the limit of {MAX_BATCH:,}; "
                "split it. Nothing was submitted."
            )
        roots = self.settings.roots
        prepared = []
        for number, request in enumerate(requests, 1):
            try:
                prepared.append(prepare(request, roots))
            except FarmError as e:
                if len(requests) == 1:
                    raise
                raise type(e)(f"Request {number}: {e} Nothing was submitted.") from e
        out: list[Submission] = []
        for i in range(0, len(prepared), chunk):
            out.extend(self._submit_chunk(prepared[i : i + chunk]))
            if on_progress is not None:
                on_progress(len(out))
        if any(not s.record.status.terminal for s in out):
            self.warn_if_no_worker()
        return out

    def warn_if_no_worker(self) -> bool:
        """Say at once (a :class:`NoWorkerWarning`) when no worker would build what waits;
        True when one is live. The embedded default starts its own worker instead."""
        if self.settings.embedded:
            embedded.ensure_worker(self.settings)
            return True
        if self.registry.live_workers(within_s=3 * self.settings.worker_heartbeat_s):
            return True
        warnings.warn(NO_WORKER, NoWorkerWarning, stacklevel=3)
        return False

    def build_here(self, request: BuildRequest, ctx: service.Context) -> ArtifactRecord:
        """Build in this process, through the same claim, lease and registry as a worker.

        The claim is not sent to the queue: this process builds it. Should it die before it
        takes the lease, the watchdog sends the claim to the workers after the grace period.
        """
        prepared = prepare(request, self.settings.roots)
        (submission,) = self._submit_chunk([prepared], send=False)
        while True:
            record = service.ensure(submission.key, ctx)
            if record is not None and record.status.terminal:
                return record
            # Another builder holds the key: follow it, and take over if its lease runs out.
            self.wait([submission.key], timeout_s=self.settings.lease_ttl_s)

    def _submit_chunk(self, requests: list[BuildRequest], *, send: bool = True) -> list[Submission]:
        records = []
        seen: dict[Path, Fingerprint] = {}  # a batch often shares sources (one genome, N dests)
        for request in requests:
            sources = {
                role: seen.get(path) or seen.setdefault(path, fingerprint(path))
                for role, path in request.source_files().items()
            }
            records.append(service.queued_record(request, derive_key(request, sources), sources))
        grace = self.settings.send_grace_s
        claims = self.registry.claim_many(records, send_grace_s=grace)
        # Only now, with the record read, ask whether a valid artifact is still on disk: asked
        # before the claim, a publish in between would turn a fresh valid record back to queued.
        vanished = [
            (i, claim)
            for i, claim in enumerate(claims)
            if claim.record.status is Status.VALID and not _published(Path(claim.record.dest))
        ]
        if vanished:
            taken = self.registry.replace_if_unchanged(
                [(claim.raw, records[i]) for i, claim in vanished], send_grace_s=grace
            )
            for (i, _), ok in zip(vanished, taken, strict=True):
                if ok:
                    claims[i] = Claim(True, records[i], b"")
        to_send = [c.record.key for c in claims if c.enqueue]
        if send and to_send and self.settings.embedded:
            # Before the send: a worker left by an older farm, confined to other directories,
            # must not take these messages only to fail them.
            embedded.ensure_worker(self.settings)
        if send:
            self._sender.send(to_send)
            self.registry.confirm_sent(to_send)
        for request, claim in zip(requests, claims, strict=True):
            self._submitted[claim.record.key] = request
        return [Submission(c.record.key, c.record, c.enqueue) for c in claims]

    def cancel(self, keys: Sequence[str]) -> list[ArtifactRecord | None]:
        """Cancel builds wherever they run: a queued key fails now, a building one within a
        second (at its builder's next progress report). Terminal keys are left as they are."""
        return [service.request_cancel(self.registry, key, CANCEL_TTL_S) for key in keys]

    def status(self, keys: Sequence[str]) -> list[ArtifactRecord | None]:
        """One round trip for the whole batch; a building key shows who builds it."""
        return self.registry.shown(list(keys))

    def wait(
        self,
        keys: Sequence[str],
        *,
        timeout_s: float | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[ArtifactRecord | None]:
        """Wait until every key is terminal (or unknown) or the timeout passes; their records.

        Keys in flight need nothing from the caller: the farm requeues them if their worker
        or message is lost. A key this client submitted whose record is gone is resubmitted.
        """
        keys = list(keys)
        self.follow(keys, timeout_s=timeout_s, on_progress=on_progress)
        return self.registry.get_many(keys)

    def follow(
        self,
        keys: Sequence[str],
        *,
        timeout_s: float | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Wait as :meth:`wait` does, without reading the records at the end (a caller of
        100,000 keys reads what it needs).

        The wait follows the registry's stream of completions, so each wake-up costs what
        finished, not what is pending: every pending key is read only at the start, after a
        broker outage, when completions were trimmed before they were read, and now and then
        as a safety net (at most 2% of the time).
        """
        keys = list(keys)
        pending = set(keys)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        cursor: str | None = None  # None: read every pending key first
        next_settle = 0.0
        outage_since: float | None = None
        warned = False
        while True:
            try:
                if cursor is None or time.monotonic() >= next_settle:
                    if cursor is None:
                        cursor = self.registry.completion_cursor()
                    started = time.monotonic()
                    self._settle(pending)
                    took = time.monotonic() - started
                    next_settle = time.monotonic() + max(SETTLE_EVERY_S, 50 * took)
                    if pending and not warned:
                        warned = True
                        self.warn_if_no_worker()
                if on_progress is not None:
                    on_progress(len(keys) - len(pending), len(keys))
                left = None if deadline is None else deadline - time.monotonic()
                if not pending:
                    pending = self._still_in_flight(keys)  # re-claimed since they finished
                    if not pending:
                        break
                    continue
                if left is not None and left <= 0:
                    break
                block = min(0.25 if on_progress else 1.0, next_settle - time.monotonic())
                seen = cursor
                done = self.registry.completions(
                    seen, min(block, left or block), count=COMPLETIONS_READ
                )
                pending.difference_update(key for _, key in done)
                if done:
                    cursor = done[-1][0]
                    if len(done) >= COMPLETIONS_READ and self.registry.completions_lost_after(seen):
                        next_settle = 0.0
                    elif len(pending) > GATHER_ABOVE:
                        # Many keys to go: let completions gather instead of waking for each
                        # (a waiter's CPU is taken from the builds on a small machine).
                        time.sleep(GATHER_S)
                outage_since = None
            except BrokerError:
                # A broker restart is no reason to give up on builds that go on without it.
                now = time.monotonic()
                outage_since = outage_since or now
                if now - outage_since > self.settings.registry_patience_s:
                    raise
                cursor = None  # completions may be lost with the broker: read everything
                time.sleep(0.5)

    def _settle(self, pending: set[str]) -> None:
        """Drop the pending keys that are terminal or unknown; resubmit those this client
        submitted whose record is gone (a Redis restart without persistence)."""
        lost = []
        batch = list(pending)
        for key, status in zip(batch, self.registry.statuses(batch), strict=True):
            if status is None and key in self._submitted:
                lost.append(self._submitted[key])
            elif status not in _IN_FLIGHT:
                pending.discard(key)
        if lost:
            self.submit_many(lost)

    def _still_in_flight(self, keys: list[str]) -> set[str]:
        """The keys in flight again, read when all seemed done: the wait ends on terminal
        records, even if a key was claimed again after it finished."""
        statuses = self.registry.statuses(keys)
        return {k for k, s in zip(keys, statuses, strict=True) if s in _IN_FLIGHT}


def _published(dest: Path) -> bool:
    """A cheap check that a recorded artifact has not vanished from disk."""
    return (dest / "metadata.json").exists()
