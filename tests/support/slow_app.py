"""The production worker app with faults injected at its seams, for tests.

- ``FARM_TEST_BUILD_SECONDS``: every cache build sleeps that long inside its staging
  directory (with a partial file in it), so tests can kill a worker mid-build or outlast the
  broker's visibility timeout. Each build's start, end and publish are logged
  (``BUILD-START``, ``BUILD-END``, ``PUBLISH <outcome>``), so tests can count builds: a build
  killed after it wrote its files but before its rename ends without a publish, and is done
  again, which is not a duplicate.
- ``FARM_TEST_IGNORE_SOFT_LIMIT``: the slow build swallows the soft time limit and sleeps
  on, as a build stuck in C code would: only the hard limit ends it.
- ``FARM_TEST_BUILD_KILLS_WORKER``: every build SIGKILLs its own process (a segfault or the
  OOM killer, as far as Celery can tell).
- ``FARM_TEST_WEDGE_ON_SIGWINCH``: SIGWINCH wedges the process's main thread (its event loop)
  for an hour while its other threads run on, as a deadlock in the loop would.
- ``FARM_TEST_PROGRESS_DELAY_S``: every progress report a builder makes waits that long
  first, and ``FARM_TEST_SITES_DELAY_S`` that long while a variant file's sites are read,
  so a small input builds as slowly as a lab-scale one and its progress can be watched.
- ``FARM_TEST_PHASE_DIR``: a test plans a pause by writing ``<phase> <seconds>`` into
  ``pause.<key[:24]>`` there. The first time that key reaches that phase, a marker file
  ``<phase>.<pid>.<key[:24]>`` appears and the builder pauses, so the test can kill exactly
  that process at exactly that point. Phases: ``received`` (message parsed, no lease yet),
  ``building`` (staging directory holds a partial file), ``fenced`` (the grant was allowed
  to publish, the rename not yet done), ``published`` (artifact renamed into place, record
  not yet valid).
- ``FARM_TEST_LOCK_HOST``: this worker is a host of that name whose file locks do not reach
  the others' (NFS mounted ``nolock`` or ``local_lock=``): it takes ``<dest>.lock.<name>``
  instead of the ``<dest>.lock`` every worker shares, so two "hosts" never wait on each other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from farm import progress
from farm.artifacts import gvlfa
from farm.artifacts.dataset.sites import SITES_STAGE
from farm.confine import ConfinedParent, best_effort_lock
from farm.records import ArtifactRecord, Status
from farm.registry import Registry
from workers.app import app

log = logging.getLogger("farm.test.slow")
_write_cache = gvlfa.write_cache
_build_and_publish = gvlfa.build_and_publish
_write_sequence = gvlfa._write_sequence
_current_job = ""  # the key (first 24 characters) this process is building
_start = Registry.start
_finish = Registry.finish
_may_publish = Registry.may_publish


def _phase(name: str, key: str) -> None:
    """Leave a marker and pause where the test planned it, once per key."""
    folder = os.environ.get("FARM_TEST_PHASE_DIR")
    if not folder:
        return
    key = key[:24]
    try:
        phase, seconds = (Path(folder) / f"pause.{key}").read_text().split()
    except FileNotFoundError:
        return
    if phase != name or any(Path(folder).glob(f"{name}.*.{key}")):
        return  # only the first delivery pauses; the one that heals runs through
    (Path(folder) / f"{name}.{os.getpid()}.{key}").touch()
    time.sleep(float(seconds))


def _slow_write_cache(fasta: Path, out_dir: Path, dest: Path, **kwargs: Any):
    global _current_job
    log.warning("BUILD-START %s pid=%d", dest, os.getpid())
    (out_dir / gvlfa.DATA_FILE).write_bytes(b"partial")
    if os.environ.get("FARM_TEST_BUILD_KILLS_WORKER"):
        os.kill(os.getpid(), signal.SIGKILL)
    staged = Path(os.readlink(out_dir))  # builders get a handle path: /proc/self/fd/N
    _current_job = staged.name.split(".farmtmp.", 1)[1].split(".", 1)[0]
    _phase("building", _current_job)
    _sleep(float(os.environ.get("FARM_TEST_BUILD_SECONDS", "0")))
    (out_dir / gvlfa.DATA_FILE).unlink()
    meta = _write_cache(fasta, out_dir, dest, **kwargs)
    log.warning("BUILD-END %s pid=%d", dest, os.getpid())
    return meta


def _sleep(seconds: float) -> None:
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        try:
            time.sleep(left)
        except SoftTimeLimitExceeded:
            if not os.environ.get("FARM_TEST_IGNORE_SOFT_LIMIT"):
                raise
            log.warning("SOFT-LIMIT-IGNORED pid=%d", os.getpid())


def _logged_build_and_publish(dest: Path, build: Any, **kwargs: Any) -> Any:
    outcome, result = _build_and_publish(dest, build, **kwargs)
    log.warning("PUBLISH %s %s pid=%d", outcome, dest, os.getpid())
    return outcome, result


def _paused_write_sequence(fasta: Path, fd: int, progress: Any) -> Any:
    written = _write_sequence(fasta, fd, progress)
    _phase("read", _current_job)
    return written


def _paused_start(self: Registry, key: str, holder: str, ttl_s: float, **kwargs: Any) -> Any:
    _phase("received", key)
    return _start(self, key, holder, ttl_s, **kwargs)


def _paused_finish(
    self: Registry, record: ArtifactRecord, holder: str, generation: int = 0, **kwargs: Any
) -> ArtifactRecord | None:
    if record.status is Status.VALID:
        _phase("published", record.key)
    return _finish(self, record, holder, generation, **kwargs)


def _paused_may_publish(self: Registry, key: str, *args: Any, **kwargs: Any) -> Any:
    verdict = _may_publish(self, key, *args, **kwargs)
    if verdict.allowed:
        _phase("fenced", key)
    return verdict


def _wedge(signum: int, frame: Any) -> None:
    log.warning("WEDGED pid=%d", os.getpid())
    time.sleep(3600)


if os.environ.get("FARM_TEST_WEDGE_ON_SIGWINCH"):
    signal.signal(signal.SIGWINCH, _wedge)


@contextlib.contextmanager
def _lock_of_this_host(dest: Path, root: Path, *, enabled: bool, timeout: float) -> Iterator[None]:
    """The destination lock as a filesystem whose locks stay on their host gives it."""
    host = os.environ["FARM_TEST_LOCK_HOST"]
    if not enabled:
        yield
        return
    with (
        ConfinedParent(dest, root) as parent,
        best_effort_lock(parent, f"{parent.name}.lock.{host}", timeout) as taken,
    ):
        log.warning("LOCK %s.lock.%s taken=%s pid=%d", dest, host, taken, os.getpid())
        yield


_advance = progress.RegistryProgress.advance


def _slow_advance(self: progress.RegistryProgress, n: int) -> None:
    sites = getattr(self, "_stage", None) == SITES_STAGE
    delay = os.environ.get("FARM_TEST_SITES_DELAY_S" if sites else "FARM_TEST_PROGRESS_DELAY_S")
    if delay:
        time.sleep(float(delay))
    _advance(self, n)


progress.RegistryProgress.advance = _slow_advance  # type: ignore[method-assign]
gvlfa.write_cache = _slow_write_cache
if os.environ.get("FARM_TEST_LOCK_HOST"):
    gvlfa._best_effort_lock = _lock_of_this_host
gvlfa.build_and_publish = _logged_build_and_publish
gvlfa._write_sequence = _paused_write_sequence
Registry.start = _paused_start
Registry.finish = _paused_finish
Registry.may_publish = _paused_may_publish

__all__ = ["app"]
