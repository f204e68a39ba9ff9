"""Leases on keys, renewed by one thread per process while their holders build.

The lease saves work: it stops a duplicate message, a second submission or a second machine
from building what is already being built, and its expiry is how the farm learns that a
builder died (the watchdog requeues a key in flight whose lease ran out). Correctness rests
on the grant's generation instead (fencing, see :mod:`farm.registry`): a builder whose
renewal is refused was replaced, so it stops at its next progress report or publish, and
whatever it sends later is refused.

A lease is taken by :meth:`Registry.start`, with the builder's first read; this module only
keeps it alive. One renewer thread serves every lease of its process, so a build that takes
a millisecond does not pay for starting and joining a thread.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from farm.errors import BrokerError
from farm.registry import Registry

log = logging.getLogger(__name__)


class Lease:
    def __init__(
        self, registry: Registry, key: str, holder: str, generation: int, ttl_s: float
    ) -> None:
        self.registry = registry
        self.key = key
        self.holder = holder
        self.generation = generation
        self.ttl_s = ttl_s
        self.lost = False
        self.ended = False  # the holder's last word (finish, hand back) released it
        self.renew_at = time.monotonic() + ttl_s / 3

    @contextmanager
    def heartbeat(self) -> Iterator[Lease]:
        """Renew every third of the TTL until the block ends, then release.

        A lease that ran out while nobody else took it (Redis was down longer than the TTL)
        is taken back on the next renewal.
        """
        _renewer().add(self)
        try:
            yield self
        finally:
            self.stop_renewing()
            if not self.ended:
                try:
                    self.registry.release_lease(self.key, self.holder)
                except BrokerError as e:  # it expires by itself
                    log.warning("cannot release lease on %s: %s", self.key, e)

    def stop_renewing(self) -> None:
        """Before the holder's last word: no renewal may run after the record is final (it
        would take the released lease back). Returns once none is running."""
        _renewer().remove(self)

    def end(self) -> None:
        """Stop renewing before the holder's last word, which releases the lease with it
        (a registry script), so none is left to release."""
        self.stop_renewing()
        self.ended = True

    def renew(self) -> None:
        try:
            if not self.registry.renew_lease(self.key, self.holder, self.generation, self.ttl_s):
                self.lost = True
                log.warning(
                    "lease on %s was lost (generation %d is no longer the newest); stopping",
                    self.key,
                    self.generation,
                )
        except BrokerError as e:
            log.warning("cannot renew lease on %s: %s", self.key, e)
        except Exception:
            log.exception("cannot renew lease on %s; retrying", self.key)
        self.renew_at = time.monotonic() + self.ttl_s / 3


class _Renewer:
    """The thread that renews this process's leases when each falls due.

    It is woken only when a new lease falls due before it would wake anyway: leases of one
    process share a TTL, so a build that starts after another costs the thread nothing.
    """

    def __init__(self) -> None:
        self._leases: set[Lease] = set()
        self._changed = threading.Condition()
        self._renewing = threading.Lock()  # held while a renewal runs
        self._wake_at = math.inf
        self._thread = threading.Thread(target=self._run, name="farm-leases", daemon=True)
        self._thread.start()

    def add(self, lease: Lease) -> None:
        with self._changed:
            self._leases.add(lease)
            if lease.renew_at < self._wake_at:
                self._changed.notify()

    def remove(self, lease: Lease) -> None:
        with self._renewing, self._changed:
            self._leases.discard(lease)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = [lease for lease in self._leases if lease.renew_at <= now]
                if not due:
                    # The next renewal, or none until a lease is added (which then notifies).
                    self._wake_at = min(
                        (lease.renew_at for lease in self._leases), default=math.inf
                    )
                    timeout = None if self._wake_at == math.inf else self._wake_at - now
                    self._changed.wait(timeout)
                    continue
            for lease in due:
                with self._renewing:
                    with self._changed:
                        if lease not in self._leases:
                            continue  # its holder finished while we were busy
                    if not lease.lost:
                        lease.renew()
                    if lease.lost:
                        with self._changed:
                            self._leases.discard(lease)


_current: _Renewer | None = None
_current_lock = threading.Lock()


def _renewer() -> _Renewer:
    """This process's renewer, started on first use."""
    global _current
    with _current_lock:
        if _current is None:
            _current = _Renewer()
        return _current


def _forget_in_child() -> None:
    """A forked child (a pool process) has none of its parent's threads: it starts its own."""
    global _current, _current_lock
    _current, _current_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
