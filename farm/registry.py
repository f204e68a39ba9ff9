"""The registry: one record per idempotency key of what exists, is valid, and why not.

Records never expire (unlike Celery results). The artifacts on disk describe themselves, so
the registry can always be rebuilt from them (``farm reindex``); it is an index of the truth,
not the truth. Leases and worker heartbeats live beside the records, behind this one module,
so nothing else in the farm speaks Redis.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from typing import Any, ParamSpec, TypeVar

import redis
from pydantic import BaseModel, ConfigDict

from farm.errors import BrokerError
from farm.fingerprint import Fingerprint

P = ParamSpec("P")
R = TypeVar("R")


class Status(StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    VALID = "valid"
    STALE = "stale"  # was valid; a source changed or a newer build superseded it
    INVALID = "invalid"  # the artifact on disk failed verification
    FAILED = "failed"  # the build failed; ``error`` says why

    @property
    def terminal(self) -> bool:
        return self not in (Status.QUEUED, Status.BUILDING)


class ArtifactRecord(BaseModel):
    """Everything a pipeline may ask about one requested artifact."""

    model_config = ConfigDict(frozen=True)

    key: str
    kind: str
    dest: str
    request: dict[str, Any]
    sources: dict[str, Fingerprint]
    status: Status
    error: str | None = None
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    build_seconds: float | None = None
    size_bytes: int | None = None
    checksum: str | None = None
    worker: str | None = None
    action: str | None = None  # built, rebuilt, reused, migrated, adopted, reindexed

    def evolve(self, **changes: Any) -> ArtifactRecord:
        changes.setdefault("updated_at", time.time())
        return self.model_copy(update=changes)


def _redis_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise BrokerError(
                f"Cannot reach the farm's Redis ({e}); check that it is running and that "
                "FARM_REDIS_URL points at it, then retry."
            ) from e

    return wrapper


# Claim a key for building, atomically: only the first submitter of a request enqueues it.
# Re-enqueue when the last attempt ended badly, when a builder died (building, no lease),
# when a queued message has waited past requeue_after with nobody holding the lease, or when
# a valid record's artifact has vanished from disk.
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
local function take()
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[5])
  return {1, ARGV[1]}
end
if not cur then return take() end
local rec = cjson.decode(cur)
local s = rec['status']
if s == 'valid' then
  if ARGV[4] == '1' then return {0, cur} end
  return take()
end
if s == 'queued' or s == 'building' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return {0, cur} end
  if s == 'building' then return take() end
  if tonumber(ARGV[2]) - tonumber(rec['updated_at']) > tonumber(ARGV[3]) then return take() end
  return {0, cur}
end
return take()
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Claim(BaseModel):
    model_config = ConfigDict(frozen=True)

    enqueue: bool
    record: ArtifactRecord


class Registry:
    """Records, leases and worker heartbeats in one Redis, under one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str = "farm:") -> None:
        self._r = client
        self._p = prefix
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, prefix: str = "farm:") -> Registry:
        return cls(redis.Redis.from_url(url, health_check_interval=30), prefix)

    # -- keys --------------------------------------------------------------------------------
    def _rec(self, key: str) -> str:
        return f"{self._p}rec:{key}"

    def _lease(self, key: str) -> str:
        return f"{self._p}lease:{key}"

    def _dest(self, dest: str) -> str:
        return f"{self._p}dest:{dest}"

    @property
    def _all(self) -> str:
        return f"{self._p}keys"

    # -- records -----------------------------------------------------------------------------
    @_redis_errors
    def ping(self) -> None:
        self._r.ping()

    @_redis_errors
    def claim_many(
        self, records: list[ArtifactRecord], *, dest_present: list[bool], requeue_after: float
    ) -> list[Claim]:
        """Claim each record's key in one round trip; ``enqueue`` says who must send it."""
        now = time.time()
        pipe = self._r.pipeline(transaction=False)
        for record, present in zip(records, dest_present, strict=True):
            self._claim(
                keys=[self._rec(record.key), self._lease(record.key), self._all],
                args=[record.model_dump_json(), now, requeue_after, int(present), record.key],
                client=pipe,
            )
        return [
            Claim(enqueue=bool(flag), record=ArtifactRecord.model_validate_json(raw))
            for flag, raw in pipe.execute()
        ]

    @_redis_errors
    def get(self, key: str) -> ArtifactRecord | None:
        raw = self._r.get(self._rec(key))
        return None if raw is None else ArtifactRecord.model_validate_json(raw)

    @_redis_errors
    def get_many(self, keys: list[str]) -> list[ArtifactRecord | None]:
        if not keys:
            return []
        raws = self._r.mget([self._rec(k) for k in keys])
        return [None if raw is None else ArtifactRecord.model_validate_json(raw) for raw in raws]

    @_redis_errors
    def put(self, record: ArtifactRecord) -> None:
        """Store a record; a valid one also supersedes an older key's record for its dest."""
        pipe = self._r.pipeline(transaction=False)
        pipe.set(self._rec(record.key), record.model_dump_json())
        pipe.sadd(self._all, record.key)
        if record.status is Status.VALID:
            pipe.getset(self._dest(record.dest), record.key)
            previous = pipe.execute()[2]
            old_key = previous.decode() if previous else None
            if old_key and old_key != record.key:
                self._supersede(old_key, record.key)
        else:
            pipe.execute()

    def _supersede(self, old_key: str, new_key: str) -> None:
        old = self.get(old_key)
        if old is not None and old.status is Status.VALID:
            self.put(
                old.evolve(
                    status=Status.STALE,
                    error=f"superseded by a newer build of the same destination ({new_key}).",
                )
            )

    @_redis_errors
    def keys(self) -> list[str]:
        return sorted(k.decode() for k in self._r.smembers(self._all))

    def records(self, batch: int = 500) -> Iterator[ArtifactRecord]:
        keys = self.keys()
        for i in range(0, len(keys), batch):
            yield from (r for r in self.get_many(keys[i : i + batch]) if r is not None)

    @_redis_errors
    def key_for_dest(self, dest: str) -> str | None:
        raw = self._r.get(self._dest(dest))
        return raw.decode() if raw else None

    # -- leases ------------------------------------------------------------------------------
    @_redis_errors
    def acquire_lease(self, key: str, holder: str, ttl_s: float) -> bool:
        return bool(self._r.set(self._lease(key), holder, nx=True, px=int(ttl_s * 1000)))

    @_redis_errors
    def renew_lease(self, key: str, holder: str, ttl_s: float) -> bool:
        return bool(self._renew(keys=[self._lease(key)], args=[holder, int(ttl_s * 1000)]))

    @_redis_errors
    def release_lease(self, key: str, holder: str) -> None:
        self._release(keys=[self._lease(key)], args=[holder])

    @_redis_errors
    def lease_holder(self, key: str) -> str | None:
        raw = self._r.get(self._lease(key))
        return raw.decode() if raw else None

    @_redis_errors
    def lease_remaining_s(self, key: str) -> float:
        """Seconds before the lease on ``key`` expires unless renewed; 0 when there is none."""
        return max(0, int(self._r.pttl(self._lease(key)))) / 1000

    @_redis_errors
    def live_lease_with_prefix(self, key_prefix: str) -> bool:
        """Whether any lease's key starts with ``key_prefix`` (owner tags carry a prefix)."""
        pattern = f"{self._lease(key_prefix)}*"
        return any(True for _ in self._r.scan_iter(match=pattern, count=1000))

    # -- attempts: a message that kills its worker must not loop forever ----------------------
    @_redis_errors
    def count_attempt(self, key: str) -> int:
        name = f"{self._p}attempts:{key}"
        pipe = self._r.pipeline(transaction=False)
        pipe.incr(name)
        pipe.expire(name, 7 * 24 * 3600)
        return int(pipe.execute()[0])

    @_redis_errors
    def clear_attempts(self, key: str) -> None:
        self._r.delete(f"{self._p}attempts:{key}")

    # -- workers -----------------------------------------------------------------------------
    @_redis_errors
    def worker_seen(self, name: str) -> None:
        self._r.zadd(f"{self._p}workers", {name: time.time()})

    @_redis_errors
    def worker_gone(self, name: str) -> None:
        self._r.zrem(f"{self._p}workers", name)

    @_redis_errors
    def live_workers(self, within_s: float) -> list[str]:
        members = self._r.zrangebyscore(f"{self._p}workers", time.time() - within_s, "+inf")
        return [m.decode() for m in members]

    @_redis_errors
    def forget(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self._r.delete(*[self._rec(k) for k in keys])
            self._r.srem(self._all, *keys)
