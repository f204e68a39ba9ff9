"""The Python API for pipelines: submit requests, poll and wait on their records.

Submission validates and keys each request locally, then claims all keys in one round trip;
only the first claimant of a key sends a message, so 500 jobs asking for the same artifact
queue one build. A request whose artifact is already valid is answered from the registry
without any worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from farm.config import Settings
from farm.embedded import resolve_url
from farm.errors import FarmError
from farm.fingerprint import Fingerprint, fingerprint
from farm.queue import Sender
from farm.registry import ArtifactRecord, Registry
from farm.requests import BuildRequest, derive_key, prepare
from farm.service import queued_record


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

    @classmethod
    def connect(cls, settings: Settings | None = None) -> Farm:
        settings = settings or Settings()
        url = resolve_url(settings)
        return cls(settings, Registry.from_url(url), Sender(settings, url))

    def close(self) -> None:
        self._sender.close()

    def __enter__(self) -> Farm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, request: BuildRequest) -> Submission:
        return self.submit_many([request])[0]

    def submit_many(self, requests: Sequence[BuildRequest], chunk: int = 2000) -> list[Submission]:
        """Validate, key, claim and enqueue; raises on the first invalid request, before
        anything is queued."""
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
        return out

    def _submit_chunk(self, requests: list[BuildRequest]) -> list[Submission]:
        records = []
        seen: dict[Path, Fingerprint] = {}  # a batch often shares sources (one genome, N dests)
        for request in requests:
            sources = {
                role: seen.get(path) or seen.setdefault(path, fingerprint(path))
                for role, path in request.source_files().items()
            }
            records.append(queued_record(request, derive_key(request, sources), sources))
        present = [_published(Path(r.dest)) for r in records]
        claims = self.registry.claim_many(
            records, dest_present=present, requeue_after=self.settings.requeue_after
        )
        to_send: dict[str, dict] = {}
        for claim in claims:
            if claim.enqueue:
                to_send[claim.record.key] = claim.record.request
        self._sender.send(to_send.items())
        return [Submission(c.record.key, c.record, c.enqueue) for c in claims]

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
        """Poll until every key is terminal (or unknown) or the timeout passes."""
        keys = list(keys)
        pending = dict.fromkeys(keys)
        done: dict[str, ArtifactRecord | None] = {}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        interval = 0.002
        while pending:
            batch = list(pending)
            for key, record in zip(batch, self.registry.get_many(batch), strict=True):
                if record is None or record.status.terminal:
                    done[key] = record
                    del pending[key]
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
