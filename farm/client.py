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
        return cls(settings, Registry.from_url(url), Sender(settings, url))

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
            record = service.ensure(prepared, submission.key, ctx)
            if record.status.terminal:
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
        to_send = {c.record.key: c.record.request for c in claims if c.enqueue}
        if send:
            self._sender.send(to_send.items())
            self.registry.confirm_sent(to_send)
        for request, claim in zip(requests, claims, strict=True):
            self._submitted[claim.record.key] = request
        return [Submission(c.record.key, c.record, c.enqueue) for c in claims]

    def cancel(self, keys: Sequence[str]) -> list[ArtifactRecord | None]:
        """Cancel builds wherever they run: a queued key fails now, a building one within a
        second (at its builder's next progress report). Terminal keys are left as they are."""
        return [service.request_cancel(self.registry, key, CANCEL_TTL_S) for key in keys]

    def status(self, keys: Sequence[str]) -> list[ArtifactRecord | None]:
        """One round trip for the whole batch."""
        return self.registry.get_many(list(keys))

    def wait(
        self,
        keys: Sequence[str],
        *,
        timeout_s: float | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[ArtifactRecord | None]:
        """Poll until every key is terminal (or unknown) or the timeout passes.

        Keys in flight need nothing from the caller: the farm requeues them if their worker
        or message is lost. A key this client submitted whose record is gone is resubmitted.
        """
        keys = list(keys)
        pending = dict.fromkeys(keys)
        done: dict[str, ArtifactRecord | None] = {}
        warned = False
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        interval = 0.002
        outage_since: float | None = None
        while pending:
            batch = list(pending)
            lost = []
            try:
                records = self.registry.get_many(batch)
            except BrokerError:
                # A broker restart is no reason to give up on builds that go on without it.
                now = time.monotonic()
                outage_since = outage_since or now
                if now - outage_since > self.settings.registry_patience_s:
                    raise
                time.sleep(0.5)
                continue
            outage_since = None
            if not warned and any(r is not None and not r.status.terminal for r in records):
                warned = True
                self.warn_if_no_worker()
            for key, record in zip(batch, records, strict=True):
                if record is None and key in self._submitted:
                    lost.append(self._submitted[key])
                elif record is None or record.status.terminal:
                    done[key] = record
                    del pending[key]
            if lost:
                self.submit_many(lost)
            if on_progress is not None:
                on_progress(len(done), len(keys))
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(interval)
            interval = min(interval * 1.5, 0.25)
        for key in pending:
            done[key] = self.registry.get(key)
        return [done[k] for k in keys]


def _published(dest: Path) -> bool:
    """A cheap check that a recorded artifact has not vanished from disk."""
    return (dest / "metadata.json").exists()
