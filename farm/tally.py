"""What the farm counts as it works, so that metrics never scan the registry.

Kept in Redis beside the records, by the same scripts that change them (:mod:`farm.registry`
loads :data:`LUA_RECOUNT` and :data:`LUA_STATS` into each), so a count can never disagree with
the records it counts, even across a Redis crash and an append-only file's replay:

- ``counts`` (hash): records by status (``queued``, ``building``, ``valid``...).
- ``expiring`` (sorted set): unusable records written with a time to live
  (``FARM_FORGET_UNUSABLE_AFTER_S``), as ``<status code><key>`` scored by when they expire.
  An expired key cannot decrement anything, so its count is settled later: by the next read
  of the counts (:meth:`Tally.snapshot`), or by the next write of the same key.
- ``stats`` (hash): counters that only grow, written where a builder has its last word:
  builds by kind and outcome, the build-duration histogram, bytes published, takeovers.

A scrape is thus a handful of round trips, whatever the registry's size. ``recount`` rebuilds
``counts`` and ``expiring`` from the records (after ``farm reindex``, or on a registry written
before counting existed); it walks every record, so it is exact only if nothing changes meanwhile.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from farm.stored import LUA_STATUS, STATUS_CODE

STATUSES = tuple(STATUS_CODE)  # queued, building, valid, stale, invalid, failed
# Upper bounds of the build-duration histogram, in seconds: builds take from a second to a
# day (Flower's histogram stops at 10 s), so the buckets grow by about 2-3x up to 24 h.
DURATION_BUCKETS = (
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
    3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0,
)  # fmt: skip
INF = "+Inf"
# How a builder's last word ends, as ``gvlfarm_builds_total{outcome}`` says it.
OUTCOMES = ("built", "rebuilt", "reused", "migrated", "failed", "cancelled", "handed_back")

# Keep ``counts`` in step with one record's change from ``old`` to ``new`` (either may be
# false: created, removed). ``ttl`` > 0: the new record expires then. Needs LUA_STATUS.
LUA_RECOUNT = """
local UNUSABLE = {f=true, i=true, s=true}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function recount(counts, expiring, key, old, new, ttl)
  local was, now = false, false
  if old then was = status_of(old) end
  if new then now = status_of(new) end
  if not old then
    -- The key may have expired unsettled: settle it now, before its new record counts.
    local left = redis.call('ZMSCORE', expiring, 'f' .. key, 'i' .. key, 's' .. key)
    for i, code in ipairs({'f', 'i', 's'}) do
      if left[i] then
        redis.call('HINCRBY', counts, CODES[code], -1)
        redis.call('ZREM', expiring, code .. key)
      end
    end
  end
  if was ~= now then
    if was then redis.call('HINCRBY', counts, was, -1) end
    if now then redis.call('HINCRBY', counts, now, 1) end
  end
  if was and UNUSABLE[string.sub(was, 1, 1)] then
    redis.call('ZREM', expiring, string.sub(was, 1, 1) .. key)
  end
  if now and tonumber(ttl) > 0 then
    redis.call('ZADD', expiring, now_ms() + tonumber(ttl), string.sub(now, 1, 1) .. key)
  end
end
"""
# A builder's last word, counted: ARGV-supplied kind, outcome ('' none), duration and its
# bucket ('' none) and bytes published.
LUA_STATS = """
local function tally(stats, kind, outcome, dur, le, bytes)
  if outcome ~= '' then redis.call('HINCRBY', stats, 'builds|' .. kind .. '|' .. outcome, 1) end
  if dur ~= '' then
    redis.call('HINCRBY', stats, 'duration_bucket|' .. kind .. '|' .. le, 1)
    redis.call('HINCRBYFLOAT', stats, 'duration_sum|' .. kind, dur)
  end
  if tonumber(bytes) > 0 then
    redis.call('HINCRBY', stats, 'published_bytes|' .. kind, bytes)
  end
end
"""
# Settle up to ARGV[2] expired records (KEYS: counts, expiring; ARGV[1]: the records' prefix).
_SETTLE = (
    LUA_STATUS
    + LUA_RECOUNT
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  local code, rec = string.sub(m, 1, 1), ARGV[1] .. string.sub(m, 2)
  local v = redis.call('GET', rec)
  if not v then
    redis.call('HINCRBY', KEYS[1], CODES[code], -1)
    redis.call('ZREM', KEYS[2], m)
  elseif string.sub(status_of(v), 1, 1) ~= code then
    redis.call('ZREM', KEYS[2], m)  -- rewritten since: its write counted it
  else
    local left = redis.call('PTTL', rec)
    if left < 0 then
      redis.call('ZREM', KEYS[2], m)
    else
      redis.call('ZADD', KEYS[2], now + left, m)
    end
  end
end
return #due
"""
)
# The claim time of the oldest key in flight that is queued (not building): walks the
# in-flight set from its oldest entry, past keys being built (a few per worker slot), up to
# ARGV[2] entries. KEYS[1]: inflight; ARGV[1]: the records' prefix.
_OLDEST_QUEUED = (
    LUA_STATUS
    + """
local limit, page, offset = tonumber(ARGV[2]), 200, 0
while offset < limit do
  local batch = redis.call('ZRANGE', KEYS[1], offset, offset + page - 1, 'WITHSCORES')
  if #batch == 0 then return false end
  for i = 1, #batch, 2 do
    local rec = ARGV[1] .. batch[i]
    local h = redis.call('GETRANGE', rec, 0, 0)
    if h == 'q' or (h == '{' and status_of(redis.call('GET', rec)) == 'queued') then
      return batch[i + 1]
    end
  end
  offset = offset + page
end
return false
"""
)
# Count one batch of records into a fresh tally (KEYS: counts, expiring being rebuilt;
# ARGV[1]: the records' prefix, then the keys).
_RECOUNT_BATCH = (
    LUA_STATUS
    + LUA_RECOUNT
    + """
local now, n = now_ms(), {}
for i = 2, #ARGV do
  local rec = ARGV[1] .. ARGV[i]
  local h = redis.call('GETRANGE', rec, 0, 0)
  local s = false
  if h == '{' then s = status_of(redis.call('GET', rec)) elseif h ~= '' then s = CODES[h] end
  if s then
    n[s] = (n[s] or 0) + 1
    if UNUSABLE[string.sub(s, 1, 1)] then
      local left = redis.call('PTTL', rec)
      if left > 0 then redis.call('ZADD', KEYS[2], now + left, string.sub(s, 1, 1) .. ARGV[i]) end
    end
  end
end
for s, c in pairs(n) do redis.call('HINCRBY', KEYS[1], s, c) end
return 1
"""
)
# Put the rebuilt tally in place (KEYS: counts, expiring, and the two being rebuilt).
_SWAP = """
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i + 2]) == 1 then
    redis.call('RENAME', KEYS[i + 2], KEYS[i])
  else
    redis.call('DEL', KEYS[i])
  end
end
redis.call('HSET', KEYS[1], 'recounted_at', ARGV[1])
return 1
"""

_SETTLE_PAGE = 10_000
_OLDEST_LIMIT = 10_000


def duration_bucket(seconds: float) -> str:
    """The histogram bucket a duration falls in (its upper bound, as Prometheus writes it)."""
    i = bisect.bisect_left(DURATION_BUCKETS, seconds)
    return INF if i == len(DURATION_BUCKETS) else _le(DURATION_BUCKETS[i])


def _le(bound: float) -> str:
    return f"{bound:g}" if bound < 1e6 else repr(bound)


def stats_args(
    kind: str, outcome: str, duration_s: float | None, published_bytes: int | None
) -> list[str | int | float]:
    """The ARGV a script passes to ``tally``: what to count of one builder's last word."""
    if duration_s is None:
        dur, le = "", ""
    else:
        dur, le = repr(max(0.0, float(duration_s))), duration_bucket(duration_s)
    return [kind, outcome, dur, le, int(published_bytes or 0)]


@dataclass
class Histogram:
    """Per-bucket counts (not cumulative) by upper bound, and the sum of observations."""

    buckets: dict[str, int] = field(default_factory=dict)
    sum_s: float = 0.0

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound in (*(_le(b) for b in DURATION_BUCKETS), INF):
            total += self.buckets.get(bound, 0)
            out.append((bound, total))
        return out


@dataclass
class Snapshot:
    """Everything a scrape shows, read in a few round trips."""

    records: dict[str, int]  # by status
    oldest_queued_at: float | None  # claim (or last requeue) time of the oldest queued key
    builds: dict[tuple[str, str], int]  # (kind, outcome)
    durations: dict[str, Histogram]  # by kind
    published_bytes: dict[str, int]  # by kind
    takeovers: int
    workers: list[dict]  # as Registry.workers gives them
    recounted_at: float | None = None


class Tally:
    """Reads (and, when asked, rebuilds) what the registry's scripts count."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._r = client
        self._p = prefix
        self._settle = client.register_script(_SETTLE)
        self._oldest = client.register_script(_OLDEST_QUEUED)
        self._recount_batch = client.register_script(_RECOUNT_BATCH)
        self._swap = client.register_script(_SWAP)

    @property
    def counts_key(self) -> str:
        return f"{self._p}counts"

    @property
    def expiring_key(self) -> str:
        return f"{self._p}expiring"

    @property
    def stats_key(self) -> str:
        return f"{self._p}stats"

    def settle_expired(self) -> None:
        """Uncount the records that expired since the last settlement."""
        for _ in range(1000):  # 10M expiries in one go at most; the rest at the next read
            n = self._settle(
                keys=[self.counts_key, self.expiring_key], args=[f"{self._p}rec:", _SETTLE_PAGE]
            )
            if int(n) < _SETTLE_PAGE:
                return

    def read(self) -> tuple[dict[str, int], float | None, dict[bytes, bytes], float | None]:
        """Counts by status, the oldest queued key's claim time, the raw stats, and when the
        counts were last rebuilt: one round trip, after settling expiries."""
        self.settle_expired()
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(self.counts_key)
        self._oldest(
            keys=[f"{self._p}inflight"], args=[f"{self._p}rec:", _OLDEST_LIMIT], client=pipe
        )
        pipe.hgetall(self.stats_key)
        raw_counts, oldest, stats = pipe.execute()
        counts = {s: 0 for s in STATUSES}
        recounted_at = None
        for name, value in raw_counts.items():
            name = name.decode()
            if name == "recounted_at":
                recounted_at = float(value)
            elif name in counts:
                counts[name] = int(value)
        return counts, None if oldest is None else float(oldest), stats, recounted_at

    def recount(self, key_batches: Iterable[list[str]]) -> dict[str, int]:
        """Rebuild the counts from every record (``key_batches``: the registry's SCAN) and
        put them in place at once; returns them."""
        fresh = [f"{self.counts_key}:recount", f"{self.expiring_key}:recount"]
        self._r.delete(*fresh)
        for keys in key_batches:
            self._recount_batch(keys=fresh, args=[f"{self._p}rec:", *keys])
        self._swap(keys=[self.counts_key, self.expiring_key, *fresh], args=[time.time()])
        return self.read()[0]

    def counted(self) -> bool:
        """Whether the counts were ever rebuilt from the records (else a registry written
        before counting existed may hold records they miss)."""
        return bool(self._r.hexists(self.counts_key, "recounted_at"))


def parse_stats(stats: dict[bytes, bytes]) -> tuple[
    dict[tuple[str, str], int], dict[str, Histogram], dict[str, int], int
]:  # fmt: skip
    """The ``stats`` hash as (builds by kind and outcome, durations by kind, bytes published
    by kind, takeovers)."""
    builds: dict[tuple[str, str], int] = {}
    durations: dict[str, Histogram] = {}
    published: dict[str, int] = {}
    takeovers = 0
    for raw_name, raw_value in stats.items():
        what, _, rest = raw_name.decode().partition("|")
        if what == "builds":
            kind, _, outcome = rest.partition("|")
            builds[(kind, outcome)] = int(raw_value)
        elif what == "duration_bucket":
            kind, _, le = rest.partition("|")
            durations.setdefault(kind, Histogram()).buckets[le] = int(raw_value)
        elif what == "duration_sum":
            durations.setdefault(rest, Histogram()).sum_s = float(raw_value)
        elif what == "published_bytes":
            published[rest] = int(raw_value)
        elif what == "takeovers":
            takeovers = int(raw_value)
    return builds, durations, published, takeovers
