"""A lease on a key, renewed by a heartbeat thread while its holder builds.

The lease only saves work: it stops a duplicate message, a second submission or a second
machine from building what is already being built. Correctness never depends on it (the
atomic rename does), so a lease that is lost mid-build is logged, not fatal. Its expiry is
also how the farm learns that a builder died: the watchdog requeues a key in flight whose
lease ran out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from farm.errors import BrokerError
from farm.registry import Registry

log = logging.getLogger(__name__)


class Lease:
    def __init__(self, registry: Registry, key: str, holder: str, ttl_s: float) -> None:
        self.registry = registry
        self.key = key
        self.holder = holder
        self.ttl_s = ttl_s
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def try_acquire(self) -> bool:
        return self.registry.acquire_lease(self.key, self.holder, self.ttl_s)

    @contextmanager
    def heartbeat(self) -> Iterator[Lease]:
        """Renew every third of the TTL until the block ends, then release.

        A lease that ran out while nobody else took it (Redis was down longer than the TTL)
        is taken back on the next beat.
        """
        self._thread = threading.Thread(
            target=self._beat, name=f"lease-{self.key[:12]}", daemon=True
        )
        self._thread.start()
        try:
            yield self
        finally:
            self.stop_renewing()
            try:
                self.registry.release_lease(self.key, self.holder)
            except BrokerError as e:  # it expires by itself
                log.warning("cannot release lease on %s: %s", self.key, e)

    def stop_renewing(self) -> None:
        """Before the holder's last word: no renewal may run after the record is final (it
        would take the released lease back)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.registry.renew_lease(self.key, self.holder, self.ttl_s):
                    self.lost = True
                    log.warning("lease on %s was lost; building on regardless", self.key)
                    return
            except BrokerError as e:
                log.warning("cannot renew lease on %s: %s", self.key, e)
            except Exception:
                log.exception("cannot renew lease on %s; retrying", self.key)
