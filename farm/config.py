"""Settings, read once at the edge (CLI, worker start) from ``FARM_*`` variables and passed in.

A plain pydantic model read by :meth:`Settings.from_env`, not pydantic-settings: that library
costs 100 ms of start-up, and every ``farm status`` of a polling pipeline would pay it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from farm import env
from farm.versions import DEFAULT_GRACE_S, Layout, PublishMode

QUEUE = "farm.builds"
BUILD_TASK = "farm.build"


class Settings(BaseModel):
    """Every knob of a deployment; the defaults run a whole farm on one machine."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # No URL: the embedded default, a private Redis under state_dir (unix socket only).
    redis_url: str | None = None
    state_dir: Path = Field(default_factory=env.default_state_dir)
    # os.pathsep-separated; destinations must lie below one of them. Default: see
    # _default_roots (the cwd on a shared deployment, anywhere on the embedded default).
    allowed_roots: str = Field(default_factory=lambda: str(Path.cwd()))

    lease_ttl_s: float = Field(30.0, gt=0)
    soft_time_limit_s: float = Field(6 * 3600.0, gt=0)
    time_limit_s: float = Field(6 * 3600.0 + 120.0, gt=0)
    # None: a little more than a lease. A message held by a worker that died is redelivered
    # then; a running build's message is redelivered too, and its duplicate, finding the
    # live lease, is dropped at once.
    visibility_timeout_s: float | None = Field(None, gt=0)
    unacked_restore_interval_s: float = Field(1.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    worker_heartbeat_s: float = Field(2.0, gt=0)
    # How often each worker's watchdog looks at keys past their deadline (one at a time).
    watchdog_interval_s: float = Field(1.0, gt=0)
    # How often the keys in flight are checked against the broker even with no sign of loss
    # (a Redis restart or a silent worker triggers a check at once).
    reconcile_interval_s: float = Field(300.0, gt=0)
    # SIGTERM: a running build gets this long to finish before its key is handed back.
    stop_grace_s: float = Field(5.0, ge=0)
    # Workers keep retrying the registry this long while Redis is unreachable.
    registry_patience_s: float = Field(60.0, ge=0)
    # A worker that received no message and ran no build for this long exits (None: never;
    # `farm worker --idle-exit`). The embedded worker is started with embedded_idle_s.
    idle_exit_s: float | None = Field(None, gt=0)
    embedded_idle_s: float = Field(900.0, gt=0)
    # How often a worker's event loop touches its beat file (`farm health`); a beat older
    # than three periods is a frozen or wedged worker.
    health_heartbeat_s: float = Field(2.0, gt=0)
    # `farm worker --lifetime`: the worker is gone by then (a walltime, a spot notice); it
    # stops taking keys and hands running builds back before. None: no end.
    worker_lifetime_s: float | None = Field(None, gt=0)
    # A random part of it taken off each worker's lifetime, so a pool does not drain at once.
    worker_lifetime_stagger_s: float = Field(0.0, ge=0)
    # `farm worker --max-builds`: the worker exits after this many builds (None: never).
    worker_max_builds: int | None = Field(None, ge=1)
    # Workers remove staging directories of dead builders this often, one farm-wide (0: never).
    staging_sweep_interval_s: float = Field(60.0, ge=0)
    # A staging directory of another host (whose pid means nothing here) is removed when no
    # lease is held on its key and it has been untouched this long.
    staging_grace_s: float = Field(3600.0, ge=0)
    # Failed, invalid and stale records expire this long after they are written (0: they
    # are kept until `farm forget`). Valid records and keys in flight never expire.
    forget_unusable_after_s: float = Field(0.0, ge=0)
    # `farm build` on a shared farm gives up (exit 3) after this long with no live worker;
    # the request stays queued for the next worker. Not the embedded default: it starts one.
    worker_wait_s: float = Field(600.0, ge=0)
    # How a destination is replaced: `exchange` (renameat2 RENAME_EXCHANGE; a directory),
    # `link` (a symlink to versioned directories, renamed over; for NFS, Lustre, CephFS) or
    # `auto` (exchange where the filesystem has it, link where it does not).
    publish_mode: PublishMode = PublishMode.AUTO
    # A replaced version behind a link is removed this long after it was retired: longer
    # than any reader keeps a dataset it opened before the replace (see farm.versions).
    version_grace_s: float = Field(DEFAULT_GRACE_S, ge=0)
    # How workers write their log: Celery's text lines, or one JSON object a line (for log
    # collectors); either way one line per state change of a key (see farm.logs).
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """``FARM_LEASE_TTL_S=10`` sets ``lease_ttl_s`` (any case); other variables are ignored."""
        found = env.variables(environ)
        return cls.model_validate({k: v for k, v in found.items() if k in cls.model_fields})

    @field_validator("log_format", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _default_roots(cls, data: Any) -> Any:
        """The embedded farm is its user's alone (a socket only they can open), so it writes
        wherever they may write: the kernel's permissions are the limit, not the directory
        a command ran in. A shared farm (FARM_REDIS_URL) keeps the cwd as its default root."""
        if isinstance(data, dict) and data.get("allowed_roots") is None:
            here = env.EVERYWHERE if not data.get("redis_url") else str(Path.cwd())
            return {**data, "allowed_roots": here}
        return data

    @model_validator(mode="after")
    def _url_has_a_scheme(self) -> Settings:
        env.check_redis_url(self.redis_url)
        return self

    @model_validator(mode="after")
    def _limits_in_order(self) -> Settings:
        if self.soft_time_limit_s > self.time_limit_s:
            raise ValueError("FARM_SOFT_TIME_LIMIT_S must not exceed FARM_TIME_LIMIT_S")
        return self

    @property
    def roots(self) -> list[Path]:
        return list(_resolved_roots(self.allowed_roots))

    @property
    def visibility_timeout(self) -> float:
        if self.visibility_timeout_s is not None:
            return self.visibility_timeout_s
        return self.lease_ttl_s + 5.0

    @property
    def send_grace_s(self) -> float:
        """How long a claimed key may wait for its sender to confirm the message is out."""
        return self.lease_ttl_s

    @property
    def worker_silent_after_s(self) -> float:
        """A worker not heard from for this long is presumed dead."""
        return 3 * self.worker_heartbeat_s + 1.0

    @property
    def layout(self) -> Layout:
        """How builders publish (see :mod:`farm.versions`)."""
        return Layout(self.publish_mode, self.version_grace_s)

    @property
    def embedded(self) -> bool:
        return self.redis_url is None


@functools.lru_cache(maxsize=64)
def _resolved_roots(allowed_roots: str) -> tuple[Path, ...]:
    """Resolved once per process (a worker checks every build against them), so a root
    swapped for a symlink later does not move what a running worker may write."""
    return tuple(Path(p).resolve() for p in allowed_roots.split(os.pathsep) if p)


def celery_config(settings: Settings, broker_url: str) -> dict[str, Any]:
    """The Celery configuration every sender and worker shares (plain data, no import)."""
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": settings.unacked_restore_interval_s,
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        # Never give up on the broker: a worker outlives any Redis restart.
        "broker_connection_max_retries": None,
        # A build does not need the broker: a connection loss must not cancel it.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # JSON only: nothing is ever unpickled from the broker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # The registry is the results backend of record; Celery keeps no results.
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Time limits are kept by the building process itself (workers/time_limits.py).
        "task_default_queue": QUEUE,
        "task_routes": {BUILD_TASK: {"queue": QUEUE}},
        # Task events (for flower) are Celery's default, off: `farm worker --task-events`.
        "task_send_sent_event": False,
    }
