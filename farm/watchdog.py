"""The watchdog: every accepted request reaches a terminal state with no client action.

Each worker runs one (a thread in its main process); a farm-wide lock lets one sweep at a
time. A sweep costs one round trip when nothing is due, so it runs every second. It heals:

- a claim whose sender died before the message was out (the claim is due after a grace);
- a build whose builder died, whatever was killed (its lease ran out: the key is due then);
- a key handed back by a stopping worker (due at once);
- a message lost with the broker or in a dying worker's hands: after a Redis restart, a
  worker falling silent, or every ``reconcile_interval_s``, the keys in flight are compared
  with the messages in the broker, and those with neither a message nor a lease are sent;
- a publish by a builder that lost its grant inside the one gap no filesystem fences (between
  its last check and its rename, frozen there): each grant allowed to publish is watched
  until it finishes, and once its key is terminal the destination must hold the artifact the
  registry names (its key and generation, as the artifact records them), or that key is
  rebuilt (see :mod:`farm.publish`).

Messages held by a dead worker are redelivered by the broker after the visibility timeout,
which is set a little above the lease TTL. Duplicates this may create are harmless: a delivery
of a key that is terminal, or whose lease is held, returns at once (:func:`farm.service.ensure`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from farm import kinds, logs
from farm.config import Settings
from farm.records import ArtifactRecord, Status
from farm.registry import Registry

log = logging.getLogger(__name__)

Send = Callable[[Iterable[str]], int]  # sends a build message for each key
BrokerIds = Callable[[], set[str]]

_PAGE = 500


@dataclass
class SweepReport:
    """What one sweep did, for logs and tests."""

    sent: list[str] = field(default_factory=list)  # keys given a new message
    why: dict[str, str] = field(default_factory=dict)  # key: why it was sent
    dropped: int = 0  # bookkeeping of keys that turned terminal or vanished
    reconciled: bool = False
    repaired: list[str] = field(default_factory=list)  # destinations a late publish reached


class Watchdog:
    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        *,
        send: Send,
        broker_ids: BrokerIds,
        name: str,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self._send = send
        self._broker_ids = broker_ids
        self.name = name
        self._run_id: str | None = None
        # After a Redis restart, leases may have run out while their builders lived on: give
        # those builders one lease period to take them back before calling them dead.
        self._patient_until = 0.0
        self._reconcile_pending = True  # a worker that starts looks once: it may follow a crash
        self._next_reconcile = time.monotonic() + settings.reconcile_interval_s

    def sweep(self) -> SweepReport:
        """One pass, if no other worker's watchdog is in one."""
        report = SweepReport()
        lock_ttl = max(5.0, 4 * self.settings.watchdog_interval_s)
        if not self.registry.try_lock("watchdog", self.name, lock_ttl):
            return report
        try:
            self._notice_losses()
            self._handle_due(report)
            self._check_publishes(report)
            if self._reconcile_pending or time.monotonic() >= self._next_reconcile:
                self.reconcile(report)
        finally:
            self.registry.unlock("watchdog", self.name)
        for key in report.sent[:20]:
            log.warning("watchdog: sent %s again: %s", key, report.why.get(key, ""))
        return report

    def _notice_losses(self) -> None:
        """A Redis restart or a worker that fell silent may have taken messages with it."""
        run_id = self.registry.server_run_id()
        if self._run_id is not None and run_id != self._run_id:
            log.warning("watchdog: the Redis server restarted; checking the keys in flight")
            self._reconcile_pending = True
            self._patient_until = time.monotonic() + self.settings.lease_ttl_s
        self._run_id = run_id
        silent = self.registry.reap_silent_workers(self.settings.worker_silent_after_s)
        if silent:
            log.warning("watchdog: worker(s) fell silent: %s", ", ".join(silent))
            self._reconcile_pending = True

    def _handle_due(self, report: SweepReport) -> None:
        now = time.time()
        keys = self.registry.due_keys(now, limit=_PAGE)
        if not keys:
            return
        changes: list[tuple[bytes, ArtifactRecord]] = []
        to_send: list[str] = []
        finished: list[str] = []
        for key, (found, lease_left) in zip(keys, self.registry.progress(keys), strict=True):
            record, raw = found or (None, b"")
            if record is None or record.status.terminal:
                finished.append(key)
            elif lease_left > 0:
                self.registry.set_due(key, now + lease_left)  # its builder is alive
            elif record.status is Status.BUILDING and time.monotonic() < self._patient_until:
                self.registry.set_due(key, now + self.settings.lease_ttl_s / 3)
            elif record.status is Status.BUILDING:
                changes.append((raw, _requeued(record)))
                report.why[key] = "its builder stopped renewing its lease"
            else:
                to_send.append(key)
                report.why[key] = f"its claim was not confirmed sent ({record.action or 'new'})"
        self._requeue(changes, to_send, report)
        self.registry.drop_inflight(finished)
        report.dropped += len(finished)

    def _check_publishes(self, report: SweepReport) -> None:
        """Destinations of grants that were allowed to publish and never finished."""
        now = time.time()
        for key, generation in self.registry.publish_watches(now):
            record = self.registry.get(key)
            if record is not None and not record.status.terminal:
                # Still building (that grant or a newer one, which replaces by compare-and-
                # swap): look again once it is done.
                self.registry.watch_publish(key, generation, now + 1.0)
                continue
            if record is not None and record.dest:
                self._repair(Path(record.dest), report)
            self.registry.unwatch_publish(key, generation)

    def _repair(self, dest: Path, report: SweepReport) -> None:
        """Rebuild the destination's valid key if the artifact there is not the one its record
        names (a late builder's): the rebuild replaces it by compare-and-swap."""
        valid_key = self.registry.key_for_dest(str(dest))
        if valid_key is None:
            return
        found = self.registry.progress([valid_key])[0][0]
        if found is None or found[0].status is not Status.VALID:
            return
        record, raw = found
        token = kinds.fence_of(dest)
        if token is None and record.generation is None:
            return
        if (
            token is not None
            and token.key == valid_key
            and (record.generation is None or token.generation == record.generation)
        ):
            return
        held = (
            "nothing the farm built"
            if token is None
            else (f"{token.key[:16]} generation {token.generation}")
        )
        log.warning(
            "watchdog: %s holds %s, not %s generation %s: rebuilding it",
            dest, held, valid_key[:16], record.generation,
        )  # fmt: skip
        repair = record.evolve(status=Status.QUEUED, rebuild=True, action="repaired")
        report.why[valid_key] = f"{dest} held {held} (a late builder's publish)"
        report.repaired.append(str(dest))
        self._requeue([(raw, repair)], [], report)

    def reconcile(self, report: SweepReport | None = None) -> SweepReport:
        """Send every key in flight that has neither a lease nor a message in the broker."""
        report = report or SweepReport()
        self._reconcile_pending = False
        self._next_reconcile = time.monotonic() + self.settings.reconcile_interval_s
        report.reconciled = True
        # Claims younger than the grace may not be sent yet; the due path covers them.
        cutoff = time.time() - self.settings.send_grace_s
        keys: list[str] = []
        while page := self.registry.inflight_keys(cutoff, len(keys), _PAGE):
            keys.extend(page)
            if len(page) < _PAGE:
                break
        if not keys:
            return report
        in_broker = self._broker_ids()
        for i in range(0, len(keys), _PAGE):
            chunk = keys[i : i + _PAGE]
            changes: list[tuple[bytes, ArtifactRecord]] = []
            finished: list[str] = []
            for key, (found, lease_left) in zip(chunk, self.registry.progress(chunk), strict=True):
                record, raw = found or (None, b"")
                if record is None or record.status.terminal:
                    finished.append(key)
                elif lease_left == 0 and key not in in_broker:
                    changes.append((raw, _requeued(record)))
                    report.why[key] = "neither a lease nor a message in the broker"
            self._requeue(changes, [], report)
            self.registry.drop_inflight(finished)
            report.dropped += len(finished)
        return report

    def _requeue(
        self,
        changes: list[tuple[bytes, ArtifactRecord]],
        to_send: list[str],
        report: SweepReport,
    ) -> None:
        if changes:
            taken = self.registry.replace_if_unchanged(
                changes, send_grace_s=self.settings.send_grace_s
            )
            for (_, record), ok in zip(changes, taken, strict=True):
                if ok:
                    to_send.append(record.key)
                    logs.key_changed(
                        record.key,
                        kind=record.kind,
                        status=str(record.status),
                        worker=self.name,
                        action=record.action,
                        dest=record.dest,
                    )
        if not to_send:
            return
        self._send(to_send)
        self.registry.confirm_sent(to_send)
        report.sent.extend(to_send)


def _requeued(record: ArtifactRecord) -> ArtifactRecord:
    return record.evolve(status=Status.QUEUED, worker=None, action="requeued")
