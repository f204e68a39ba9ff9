"""The registry: one record per idempotency key of what exists, is valid, and why not.

The artifacts on disk describe themselves, so the registry can always be rebuilt from them
(``farm reindex``); it is an index of the truth, not the truth. Leases, worker heartbeats and
the bookkeeping of keys in flight live beside the records, behind this one module, so nothing
else in the farm speaks Redis. Records are stored compactly (:mod:`farm.stored`); those that
hold no valid artifact may be set to expire (``FARM_FORGET_UNUSABLE_AFTER_S``).

What is kept per key is only its record; the rest is shared or bounded:

- ``rec:<key>`` holds the record. Listing walks these by SCAN, a batch at a time.
- ``dests:<hash prefix>`` (16,384 small hashes) maps each destination to the key whose valid
  record holds it, so a newer valid build of a destination marks the older one stale.
- ``inflight`` (sorted set, score: when the key was claimed) holds every non-terminal key. A
  reconciliation walks it, so its cost grows with the work in flight, not with the registry.
- ``due`` (sorted set, score: a deadline) holds the keys whose progress must be checked by
  then: a claim whose message has not been confirmed sent, and a build whose lease must be
  renewed. The watchdog looks only at entries past their deadline (see :mod:`farm.watchdog`).
- ``done`` (a stream, the newest :data:`COMPLETIONS_KEPT`) announces each key that turns
  terminal, so a waiter's work follows what changed, not what it waits for.
- ``counts``, ``expiring`` and ``stats`` are what the scripts below count as they change
  records (:mod:`farm.tally`), so ``farm metrics`` never scans; ``workers`` (sorted set, by
  last heartbeat) and ``worker:<name>`` (what a worker said of itself, expiring) are the
  workers.

Every write that moves a key between states is one Lua script or one MULTI, so a Redis that
keeps an append-only file and dies mid-way never restores a record without its bookkeeping.
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from farm import stored, tally
from farm.errors import BrokerError
from farm.limits import JOB_TAG_LEN
from farm.stored import LUA_STATUS
from farm.tally import LUA_RECOUNT, LUA_STATS, Tally

if TYPE_CHECKING:
    from farm.records import ArtifactRecord, Status

P = ParamSpec("P")
R = TypeVar("R")


# How many completions the stream keeps for waiters that fell behind (then they reconcile).
COMPLETIONS_KEPT = 10_000


def _redis_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise BrokerError(
                f"Cannot reach the farm's Redis ({e}); check that it is running and that "
                "FARM_REDIS_URL points at it, then retry."
            ) from e

    return wrapper


# The hot scripts (a builder's first and last word) name their keys from the prefix and the
# key (ARGV[1], ARGV[2]) rather than taking a dozen names: a single Redis, not a cluster.
_LUA_KEY_NAMES = f"""
local P, KEY = ARGV[1], ARGV[2]
local REC, LEASE, PROGRESS = P .. 'rec:' .. KEY, P .. 'lease:' .. KEY, P .. 'progress:' .. KEY
local TAG = P .. 'leasetag:' .. string.sub(KEY, 1, {JOB_TAG_LEN})
local ATTEMPTS = P .. 'attempts:' .. KEY
local INFLIGHT, DUE, DONE = P .. 'inflight', P .. 'due', P .. 'done'
local GENS, GF = P .. 'gens:' .. string.sub(KEY, 1, 4), string.sub(KEY, 5, 20)
local PUBWATCH = P .. 'pubwatch'
local COUNTS, EXPIRING, STATS = P .. 'counts', P .. 'expiring', P .. 'stats'
"""
# Fencing. Every grant of a key's lease gets the next generation of the key, kept in a small
# hash entry that never expires (``gens:<4 hex>``, field: the next 16 hex of the key), with
# its holder while the grant lasts: "<generation> <holder>". Whatever a builder sends after
# it was granted (renew, progress, publish, finish, hand back) is taken only while that entry
# still names its generation and holder, so a builder that was frozen or cut off past its
# lease, and any command of its delivered late, changes nothing once another took over or
# the key was finished. The lease key itself only says whether the holder is alive.
_LUA_GRANT = """
local function grant()
  local v = redis.call('HGET', GENS, GF)
  if not v then return 0, '' end
  local sp = string.find(v, ' ', 1, true)
  if not sp then return tonumber(v), '' end
  return tonumber(string.sub(v, 1, sp - 1)), string.sub(v, sp + 1)
end
local function holds(gen, holder)
  local g, h = grant()
  return holder ~= '' and g == tonumber(gen) and h == holder
end
-- Only the newest grant of a key still in flight may act (REC: with LUA_STATUS loaded first).
local function granted_in_flight(gen, holder)
  if not holds(gen, holder) then return false end
  local cur = redis.call('GET', REC)
  return cur and in_flight(cur)
end
local function spend()
  local g = grant()
  if g > 0 then redis.call('HSET', GENS, GF, g) end
end
"""
# Claim a key for building, atomically: only the first submitter of a request enqueues it.
# A taken claim is its destination's newest request (``<dest field>+`` in the destination's
# index bucket): an older request still building for that destination may no longer publish.
# A key in flight is followed (the watchdog, not the client, heals a lost message). A valid
# record is answered as is: whether its artifact vanished is for the client to check after
# reading it (see reclaim_vanished), never before, or a publish in between would be undone.
# Failed records are taken; invalid and stale ones are taken with the rebuild flag set.
_CLAIM = (
    LUA_STATUS
    + LUA_RECOUNT
    + """
local cur = redis.call('GET', KEYS[1])
local function take(v)
  redis.call('SET', KEYS[1], v)
  recount(KEYS[6], KEYS[7], ARGV[2], cur, v, 0)
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[5], ARGV[5] .. '+', ARGV[2]) end
  return {1, v}
end
if not cur then return take(ARGV[1]) end
local s = status_of(cur)
if s == 'queued' or s == 'building' or s == 'valid' then return {0, cur} end
if s == 'invalid' or s == 'stale' then return take('qr' .. string.sub(ARGV[1], 3)) end
return take(ARGV[1])
"""
)
# Replace a record only if it is still exactly what the caller read, and no lease is held.
# A new claim (not a requeue) also becomes its destination's newest request (ARGV[6]).
_TAKE_IF_UNCHANGED = (
    LUA_STATUS
    + LUA_RECOUNT
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
recount(KEYS[6], KEYS[7], ARGV[3], ARGV[1], ARGV[2], 0)
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[3])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[5], ARGV[6] .. '+', ARGV[3]) end
return 1
"""
)
# A message is out: stop watching the claim, unless a builder already set its own deadline.
_CONFIRM_SENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end
return 1
"""
# A builder's first word: the record, and whether it may build it. A key in flight is leased
# to the caller under a new generation (idempotent for its holder), marked building (its
# header only: who builds and since when go to its progress) and its attempt counted; a
# terminal or unknown key, or one another live holder has, is answered without a lease.
_START = (
    LUA_STATUS
    + LUA_RECOUNT
    + _LUA_KEY_NAMES
    + _LUA_GRANT
    + """
local holder, ttl, deadline, worker, now = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local cur = redis.call('GET', REC)
if not cur then return {0, false, 0, 0} end
if not in_flight(cur) then return {0, cur, 0, 0} end
local h = redis.call('GET', LEASE)
if h and h ~= holder then return {0, cur, 0, 0} end
local g, gh = grant()
if gh ~= holder then
  -- A grant never spent (by a finish or a hand-back) whose lease is gone: a takeover.
  if gh ~= '' then redis.call('HINCRBY', STATS, 'takeovers', 1) end
  g = g + 1
  redis.call('HSET', GENS, GF, g .. ' ' .. holder)
end
redis.call('SET', LEASE, holder, 'PX', ttl)
redis.call('SET', TAG, holder, 'PX', ttl)
redis.call('ZADD', DUE, deadline, KEY)
local n = redis.call('INCR', ATTEMPTS)
redis.call('EXPIRE', ATTEMPTS, 604800)
if string.sub(cur, 1, 1) ~= '{' then
  local was = cur
  cur = 'b' .. string.sub(cur, 2)
  redis.call('SET', REC, cur)
  recount(COUNTS, EXPIRING, KEY, was, cur, 0)
end
redis.call('SET', PROGRESS, '{"worker":' .. cjson.encode(worker) .. ',"started_at":' .. now .. '}',
           'PX', ttl)
return {1, cur, n, g}
"""
)
# Renew, or take back a lease that ran out while nobody else was granted the key (a broker
# restart longer than the TTL), so a healthy build is not duplicated. Only for the newest
# grant of a key still in flight: a late renewal never recreates a lease.
_RENEW = (
    LUA_STATUS
    + _LUA_KEY_NAMES
    + _LUA_GRANT
    + """
local holder, gen, ttl, deadline = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if not granted_in_flight(gen, holder) then return 0 end
redis.call('SET', LEASE, holder, 'PX', ttl)
redis.call('SET', TAG, holder, 'PX', ttl)
redis.call('ZADD', DUE, deadline, KEY)
return 1
"""
)
# A build's progress, stored only for the newest grant; returns the cancel request, if any.
_PROGRESS = (
    _LUA_KEY_NAMES
    + _LUA_GRANT
    + """
if not holds(ARGV[4], ARGV[3]) then return {0, false} end
redis.call('SET', PROGRESS, ARGV[5], 'PX', ARGV[6])
return {1, redis.call('GET', P .. 'cancel:' .. KEY)}
"""
)
# Just before a rename: may this grant publish at its destination? Only the newest grant of a
# key in flight, and only for the destination's newest request: the newest claim, or, once
# that finished valid (its entry is then dropped), the key the index names. A grant that may
# publish is watched (``pubwatch``) until it finishes: if it dies or freezes between here and
# its record, the watchdog checks that the destination holds what the registry says.
_MAY_PUBLISH = (
    LUA_STATUS
    + _LUA_KEY_NAMES
    + _LUA_GRANT
    + """
local holder, gen, bucket, field, watch_at = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if not granted_in_flight(gen, holder) then return {0, ''} end
if field ~= '' then
  local newest = redis.call('HGET', bucket, field .. '+')
  if not newest then newest = redis.call('HGET', bucket, field) end
  if newest and newest ~= KEY then return {2, newest} end
end
redis.call('ZADD', PUBWATCH, watch_at, KEY .. ' ' .. gen)
return {1, ''}
"""
)
# Just after a rename: was the grant still the newest when it landed? If not, the builder
# swaps its artifact back out (see :mod:`farm.publish`).
_STILL_GRANTED = (
    LUA_STATUS
    + _LUA_KEY_NAMES
    + _LUA_GRANT
    + """
if granted_in_flight(ARGV[4], ARGV[3]) then return 1 end
return 0
"""
)
# Seed a grant's generation above what its artifact on disk records (a Redis that lost its
# counters: restarted without its append-only file, or with its last second lost).
_SEED = (
    _LUA_KEY_NAMES
    + _LUA_GRANT
    + """
local holder, gen, floor = ARGV[3], ARGV[4], tonumber(ARGV[5])
if not holds(gen, holder) then return 0 end
if floor < tonumber(gen) then return tonumber(gen) end
redis.call('HSET', GENS, GF, (floor + 1) .. ' ' .. holder)
return floor + 1
"""
)
# Raise a key's generation to at least what an artifact on disk records (reindex), unless a
# grant is live (its holder would be fenced out by a number it never saw).
_RAISE = (
    _LUA_KEY_NAMES
    + _LUA_GRANT
    + """
local g, h = grant()
if h ~= '' or g >= tonumber(ARGV[3]) then return g end
redis.call('HSET', GENS, GF, ARGV[3])
return tonumber(ARGV[3])
"""
)
# A lease and its tag go together; the tag only if still this holder's (keys sharing a tag).
_RELEASE_LEASE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Point a destination's index entry at a valid key (returning the key it named), or drop the
# entry of a key that is no longer valid. The index names valid records only, so a record
# that expires or is forgotten never leaves an entry behind.
_DROP_IF_SCORE = """
local score = redis.call('zscore', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('zrem', KEYS[1], ARGV[1])
end
return 0
"""

_LUA_INDEX = """
local function index(bucket, field, key, valid)
  local old = redis.call('HGET', bucket, field)
  if valid then
    redis.call('HSET', bucket, field, key)
    return old
  end
  if old == key then redis.call('HDEL', bucket, field) end
  return false
end
"""
_INDEX = _LUA_INDEX + "return index(KEYS[1], ARGV[1], ARGV[2], ARGV[3] == 'v')"
# Store a record whatever was there, counted (maintenance: verify, reindex, a superseded key).
_PUT = (
    LUA_STATUS
    + LUA_RECOUNT
    + """
local cur = redis.call('GET', KEYS[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
recount(KEYS[2], KEYS[3], ARGV[3], cur, ARGV[1], ARGV[2])
return 1
"""
)
# A key's last word. A builder's is written only under the newest grant of a key in flight: a
# builder that lost its grant never overwrites another's verdict. Any other verdict (holder
# '': a cancellation, maintenance) only when no live builder holds the key and it is not
# terminal. It spends the grant and ends the key's lease, attempts and watches, indexes its
# destination and announces it.
_FINISH = (
    LUA_STATUS
    + LUA_RECOUNT
    + LUA_STATS
    + _LUA_INDEX
    + _LUA_KEY_NAMES
    + _LUA_GRANT
    + """
local raw, holder, gen, bucket, field = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local ttl, kept = ARGV[8], ARGV[9]
local h = redis.call('GET', LEASE)
local cur = redis.call('GET', REC)
if holder == '' then
  if h then return {0, cur, false} end
  if cur and not in_flight(cur) then return {0, cur, false} end
elseif not granted_in_flight(gen, holder) then
  return {0, cur, false}
end
spend()
if tonumber(ttl) > 0 then
  redis.call('SET', REC, raw, 'PX', ttl)
else
  redis.call('SET', REC, raw)
end
recount(COUNTS, EXPIRING, KEY, cur, raw, ttl)
tally(STATS, ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14])
redis.call('ZREM', INFLIGHT, KEY)
redis.call('ZREM', DUE, KEY)
if h then redis.call('DEL', LEASE) end
if holder ~= '' and redis.call('GET', TAG) == holder then redis.call('DEL', TAG) end
redis.call('DEL', ATTEMPTS)
redis.call('ZREM', PUBWATCH, KEY .. ' ' .. gen)
local status = status_of(raw)
local old = false
if field ~= '' then
  old = index(bucket, field, KEY, status == 'valid')
  -- The newest request, now valid, is what the index names: its entry has done its work.
  if status == 'valid' and redis.call('HGET', bucket, field .. '+') == KEY then
    redis.call('HDEL', bucket, field .. '+')
  end
end
redis.call('XADD', DONE, 'MAXLEN', '~', kept, '*', 'k', KEY, 's', status)
return {1, raw, old}
"""
)
# Forget one record and everything kept for its key, and its destination's index entry if it
# names this key. A key in flight is kept (its builder would write it back).
_FORGET = (
    LUA_STATUS
    + LUA_RECOUNT
    + """
local cur = redis.call('GET', KEYS[1])
if cur and ARGV[3] ~= '1' and (in_flight(cur) or redis.call('EXISTS', KEYS[7]) == 1) then
  return 0
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[8], ARGV[2]) == ARGV[1] then
  redis.call('HDEL', KEYS[8], ARGV[2])
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[8], ARGV[2] .. '+') == ARGV[1] then
  redis.call('HDEL', KEYS[8], ARGV[2] .. '+')
end
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if cur then recount(KEYS[9], KEYS[10], ARGV[1], cur, false, 0) end
if cur then return 1 end
return 0
"""
)
# A stopping worker gives the key back: queued again, due at once, lease released, and the
# interrupted attempt not counted against the key.
_HAND_BACK = (
    LUA_STATUS
    + LUA_RECOUNT
    + _LUA_KEY_NAMES
    + _LUA_GRANT
    + """
local raw, holder, gen, now = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if not granted_in_flight(gen, holder) then return 0 end
spend()
local cur = redis.call('GET', REC)
redis.call('SET', REC, raw)
recount(COUNTS, EXPIRING, KEY, cur, raw, 0)
redis.call('HINCRBY', STATS, 'builds|' .. ARGV[7] .. '|handed_back', 1)
redis.call('DEL', LEASE)
if redis.call('GET', TAG) == holder then redis.call('DEL', TAG) end
redis.call('ZADD', DUE, now, KEY)
local n = tonumber(redis.call('GET', ATTEMPTS) or '0')
if n > 0 then redis.call('DECR', ATTEMPTS) end
return 1
"""
)


@dataclass(frozen=True)
class Claim:
    enqueue: bool
    record: ArtifactRecord
    raw: bytes  # the record as stored, for a later compare-and-set


@dataclass(frozen=True)
class Start:
    """What a builder learns first (see ``_START``)."""

    leased: bool  # the caller holds the lease and must finish or hand back the key
    record: ArtifactRecord | None  # None: the key is not (or no longer) recorded
    attempt: int  # the caller's attempt at the key, counting those killed mid-way
    generation: int = 0  # the grant's fencing number (0: no grant)


@dataclass(frozen=True)
class PublishVerdict:
    """Whether a grant may publish (see ``_MAY_PUBLISH``)."""

    allowed: bool
    newer_key: str | None = None  # set when a newer request holds the destination


def _record(key: str, raw: bytes) -> ArtifactRecord:
    from farm.records import ArtifactRecord  # pydantic: loaded by the first reader of records

    return ArtifactRecord.model_validate(stored.decode(key, raw))


def _stored(record: ArtifactRecord) -> bytes:
    return stored.encode(record.model_dump(mode="json"))


def _status(name: str) -> Status:
    from farm.records import Status

    return Status(name)


def _bytes(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _outcome(record: ArtifactRecord, holder: str) -> str:
    """How a last word is counted in ``gvlfarm_builds_total`` ('': not counted)."""
    if not holder:  # no builder: a cancellation (or a test's verdict)
        return "cancelled" if str(record.status) == "failed" else ""
    if str(record.status) == "valid":
        return record.action if record.action in tally.OUTCOMES else "built"
    return "failed"


def _is_unusable(status: str) -> bool:
    """Records that hold no valid artifact: those an expiry may forget."""
    return status in ("failed", "invalid", "stale")


def command_timeout(lease_ttl_s: float) -> float:
    """How long a worker's registry command may take: a third of the lease, the renewal
    period, so a renewal that hangs gives up in time for the next one, and nothing a worker
    sends is delivered later than a lease after it was sent."""
    return lease_ttl_s / 3


def _tcp_options(timeout_s: float) -> dict[int, int]:
    """Keepalive probes that find a dead link within about ``timeout_s``, and the kernel's
    bound on unacknowledged data: past it, the connection is dropped with what it held."""
    idle = max(1, int(timeout_s))
    return {
        socket.TCP_KEEPIDLE: idle,
        socket.TCP_KEEPINTVL: 1,
        socket.TCP_KEEPCNT: 3,
        socket.TCP_USER_TIMEOUT: max(1, int(timeout_s * 1000)),
    }


class Registry:
    """Records, leases and worker heartbeats in one Redis, under one key prefix.

    ``forget_unusable_after_s``: failed, invalid and stale records written through this
    registry expire after that many seconds (0: kept until ``farm forget``).
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "farm:",
        url: str | None = None,
        *,
        forget_unusable_after_s: float = 0.0,
    ) -> None:
        self._r = client
        self._p = prefix
        self._url = url
        self._expire_ms = int(forget_unusable_after_s * 1000)
        self._impatient: Registry | None = None
        self._timeout_s: float | None = None
        self._claim = client.register_script(_CLAIM)
        self._take_if_unchanged = client.register_script(_TAKE_IF_UNCHANGED)
        self._confirm_sent = client.register_script(_CONFIRM_SENT)
        self._start = client.register_script(_START)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._index = client.register_script(_INDEX)
        self._finish = client.register_script(_FINISH)
        self._hand_back = client.register_script(_HAND_BACK)
        self._forget = client.register_script(_FORGET)
        self._release_lease = client.register_script(_RELEASE_LEASE)
        self._report = client.register_script(_PROGRESS)
        self._may_publish = client.register_script(_MAY_PUBLISH)
        self._still_granted = client.register_script(_STILL_GRANTED)
        self._seed = client.register_script(_SEED)
        self._raise = client.register_script(_RAISE)
        self._drop_staging = client.register_script(_DROP_IF_SCORE)
        self._put = client.register_script(_PUT)
        self.tally = Tally(client, prefix)

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "farm:",
        *,
        patience_s: float = 0.0,
        forget_unusable_after_s: float = 0.0,
        timeout_s: float | None = None,
    ) -> Registry:
        """``patience_s``: how long a call retries while Redis is unreachable (a broker
        restart) before it raises :class:`BrokerError`. Workers wait; clients answer fast.

        ``timeout_s``: how long one send may take (a worker passes a third of its lease,
        :func:`command_timeout`). A command sent into a cut link gives up after it instead of
        redis-py's fixed 5 s, and over TCP the kernel drops what it could not deliver by then
        (``TCP_USER_TIMEOUT``) rather than retransmitting it for minutes: a command is
        delivered within ``timeout_s`` of its send or never, so one that outlived the lease
        it was sent under cannot arrive after a takeover. A retry is a new send, carrying
        its generation, which the scripts refuse once it is not the newest."""
        kwargs: dict[str, Any] = {"health_check_interval": 30}
        if patience_s > 0:
            cap = 1.0
            kwargs["retry"] = Retry(
                ExponentialWithJitterBackoff(base=0.05, cap=cap),
                retries=max(3, int(patience_s / cap) + 5),
            )
            kwargs["retry_on_error"] = [redis.ConnectionError, redis.TimeoutError]
        if timeout_s is not None:
            kwargs["socket_timeout"] = kwargs["socket_connect_timeout"] = timeout_s
            # A connection idle this long is checked with a PING before it is used again.
            kwargs["health_check_interval"] = max(1, min(30, int(timeout_s)))
            if not url.startswith("unix:") and hasattr(socket, "TCP_USER_TIMEOUT"):
                kwargs["socket_keepalive"] = True
                kwargs["socket_keepalive_options"] = _tcp_options(timeout_s)
        client = redis.Redis.from_url(url, **kwargs)
        registry = cls(client, prefix, url, forget_unusable_after_s=forget_unusable_after_s)
        registry._timeout_s = timeout_s
        return registry

    def impatient(self) -> Registry:
        """This registry without retries, for calls that must not wait out a Redis outage
        (a builder's progress reports: the build goes on without them)."""
        if self._url is None:
            return self
        if self._impatient is None:
            self._impatient = Registry.from_url(
                self._url,
                self._p,
                forget_unusable_after_s=self._expire_ms / 1000,
                timeout_s=self._timeout_s,
            )
        return self._impatient

    # -- keys --------------------------------------------------------------------------------
    def _rec(self, key: str) -> str:
        return f"{self._p}rec:{key}"

    def _progress(self, key: str) -> str:
        return f"{self._p}progress:{key}"

    def _cancel(self, key: str) -> str:
        return f"{self._p}cancel:{key}"

    def _lease(self, key: str) -> str:
        return f"{self._p}lease:{key}"

    def _lease_tag(self, key: str) -> str:
        """Held with a lease, under the key's prefix that owner tags on disk carry."""
        return f"{self._p}leasetag:{key[:JOB_TAG_LEN]}"

    def _dest_slot(self, dest: str) -> tuple[str, str]:
        """Where a destination's index entry lives: one of 16,384 small hashes. Up to about
        2M destinations Redis packs each as a list (a fifth of a top-level key's memory per
        entry); beyond, as a table, which still costs less than a key of its own."""
        digest = hashlib.blake2b(dest.encode(), digest_size=10).hexdigest()
        return f"{self._p}dests:{int(digest[:4], 16) >> 2:04x}", digest[4:]

    def _attempts(self, key: str) -> str:
        return f"{self._p}attempts:{key}"

    @property
    def _inflight(self) -> str:
        return f"{self._p}inflight"

    @property
    def _due(self) -> str:
        return f"{self._p}due"

    @property
    def _done(self) -> str:
        return f"{self._p}done"

    @property
    def _workers(self) -> str:
        return f"{self._p}workers"

    @property
    def _pubwatch(self) -> str:
        return f"{self._p}pubwatch"

    def _ttl_ms(self, status: str) -> int:
        return self._expire_ms if _is_unusable(status) else 0

    # -- records -----------------------------------------------------------------------------
    @_redis_errors
    def ping(self) -> None:
        self._r.ping()

    @_redis_errors
    def server_run_id(self) -> str:
        """Changes whenever the Redis server restarts (it may have lost recent writes)."""
        return str(self._r.info("server").get("run_id", ""))

    @_redis_errors
    def claim_many(self, records: list[ArtifactRecord], *, send_grace_s: float) -> list[Claim]:
        """Claim each record's key in one round trip; ``enqueue`` says who must send it.

        A taken claim is due after ``send_grace_s``: if its sender dies before confirming
        (:meth:`confirm_sent`), the watchdog sends the message instead.
        """
        now = time.time()
        pipe = self._r.pipeline(transaction=False)
        for record in records:
            bucket, field = self._dest_slot(record.dest) if record.dest else ("", "")
            self._claim(
                keys=[
                    self._rec(record.key),
                    self._lease(record.key),
                    self._inflight,
                    self._due,
                    bucket or self._inflight,
                    self.tally.counts_key,
                    self.tally.expiring_key,
                ],
                args=[_stored(record), record.key, now, now + send_grace_s, field],
                client=pipe,
            )
        return [
            Claim(bool(flag), _record(record.key, raw), _bytes(raw))
            for record, (flag, raw) in zip(records, pipe.execute(), strict=True)
        ]

    @_redis_errors
    def replace_if_unchanged(
        self,
        changes: list[tuple[bytes, ArtifactRecord]],
        *,
        send_grace_s: float,
        new_claim: bool = False,
    ) -> list[bool]:
        """Put each new record in flight, due after ``send_grace_s``, only if the stored one
        is still byte for byte what the caller read and nobody holds its lease: a valid
        record whose artifact vanished, or a key whose builder died or whose message was lost.
        ``new_claim``: a submission (not a requeue), which makes each its destination's
        newest request.
        """
        now = time.time()
        pipe = self._r.pipeline(transaction=False)
        for seen_raw, new in changes:
            bucket, field = self._dest_slot(new.dest) if new_claim and new.dest else ("", "")
            self._take_if_unchanged(
                keys=[
                    self._rec(new.key),
                    self._lease(new.key),
                    self._inflight,
                    self._due,
                    bucket or self._inflight,
                    self.tally.counts_key,
                    self.tally.expiring_key,
                ],
                args=[seen_raw, _stored(new), new.key, now, now + send_grace_s, field],
                client=pipe,
            )
        return [bool(flag) for flag in pipe.execute()]

    @_redis_errors
    def confirm_sent(self, keys: Iterable[str]) -> None:
        pipe = self._r.pipeline(transaction=False)
        for key in keys:
            self._confirm_sent(keys=[self._lease(key), self._due], args=[key], client=pipe)
        pipe.execute()

    @_redis_errors
    def get(self, key: str) -> ArtifactRecord | None:
        raw = self._r.get(self._rec(key))
        return None if raw is None else _record(key, raw)

    @_redis_errors
    def get_many(self, keys: list[str]) -> list[ArtifactRecord | None]:
        """Records in order, a thousand keys a round trip (no call blocks Redis long)."""
        return [
            None if raw is None else _record(key, raw)
            for key, raw in zip(keys, self._mget_records(keys), strict=True)
        ]

    @_redis_errors
    def statuses(self, keys: list[str]) -> list[str | None]:
        """Each key's status alone (None: unknown), read from the records' headers."""
        return [None if raw is None else stored.status_of(raw) for raw in self._mget_records(keys)]

    def _mget_records(self, keys: list[str], batch: int = 1000) -> Iterator[bytes | None]:
        for i in range(0, len(keys), batch):
            yield from self._r.mget([self._rec(k) for k in keys[i : i + batch]])

    @_redis_errors
    def get_many_raw(self, keys: list[str]) -> list[tuple[dict | None, dict | None]]:
        """Records and their builds' progress as plain JSON, in one round trip: what a light
        reader (``farm status``) shows, with no pydantic to load. A building record is shown
        with who builds it and since when, from its progress (the builder does not rewrite
        the record to say so: see ``_START``)."""
        if not keys:
            return []
        pipe = self._r.pipeline(transaction=False)
        pipe.mget([self._rec(k) for k in keys])
        pipe.mget([self._progress(k) for k in keys])
        records, progress = pipe.execute()
        out: list[tuple[dict | None, dict | None]] = []
        for key, raw, raw_figures in zip(keys, records, progress, strict=True):
            row = None if raw is None else stored.decode(key, raw)
            figures = None if raw_figures is None else json.loads(raw_figures)
            if row is not None and figures and row["status"] == "building":
                row["worker"] = row.get("worker") or figures.get("worker")
                row["started_at"] = row.get("started_at") or figures.get("started_at")
            out.append((row, figures))
        return out

    def shown(self, keys: list[str]) -> list[ArtifactRecord | None]:
        """Records as a reader is shown them (see :meth:`get_many_raw`)."""
        from farm.records import ArtifactRecord

        return [
            None if row is None else ArtifactRecord.model_validate(row)
            for row, _ in self.get_many_raw(keys)
        ]

    @_redis_errors
    def report_progress(
        self, key: str, holder: str, generation: int, progress: dict, ttl_s: float
    ) -> tuple[bool, str | None]:
        """Store a build's progress under its grant; return whether the grant is still the
        newest, and the cancel request on its key, if any (one round trip: a builder learns
        that it was cancelled or fenced out when it reports)."""
        ok, cancel = self._report(
            args=[self._p, key, holder, generation, json.dumps(progress), int(ttl_s * 1000)]
        )
        return bool(ok), None if cancel is None else _text(cancel)

    @_redis_errors
    def request_cancel(self, key: str, claim: str, ttl_s: float) -> None:
        """Ask the builder of ``key`` to stop. ``claim`` names the claim being cancelled (its
        record's ``created_at``), so a later claim of the same key is not cancelled."""
        self._r.set(self._cancel(key), claim, px=int(ttl_s * 1000))

    @_redis_errors
    def put(self, record: ArtifactRecord) -> None:
        """Store a record unconditionally (maintenance: verify, reindex, a builder's start).

        A valid one also supersedes an older key's record for its destination.
        """
        status = str(record.status)
        pipe = self._r.pipeline(transaction=True)
        self._put(
            keys=[self._rec(record.key), self.tally.counts_key, self.tally.expiring_key],
            args=[_stored(record), self._ttl_ms(status), record.key],
            client=pipe,
        )
        if record.status.terminal:
            pipe.zrem(self._inflight, record.key)
            pipe.zrem(self._due, record.key)
            self._announce(pipe, record.key, status)
            if record.dest:
                bucket, field = self._dest_slot(record.dest)
                self._index(keys=[bucket], args=[field, record.key, status[0]], client=pipe)
        else:
            pipe.zadd(self._inflight, {record.key: record.created_at}, nx=True)
        replies = pipe.execute()
        if record.status.terminal and record.dest:
            self._supersede(replies[-1], record)

    def _announce(self, pipe: redis.client.Pipeline, key: str, status: str) -> None:
        pipe.xadd(self._done, {"k": key, "s": status}, maxlen=COMPLETIONS_KEPT, approximate=True)

    @_redis_errors
    def finish(
        self,
        record: ArtifactRecord,
        holder: str,
        generation: int = 0,
        *,
        ran_s: float | None = None,
    ) -> ArtifactRecord | None:
        """A terminal record, written only if the caller still has the right to (see
        ``_FINISH``: a builder under its grant's ``generation``; ``holder`` '' for anyone
        else); returns the record that stands (None: it was forgotten meanwhile).

        A builder's finish is counted (:mod:`farm.tally`): its outcome, how long it ran
        (``ran_s``; a valid record's ``build_seconds`` by default) and the bytes it published."""
        status = str(record.status)
        bucket, field = self._dest_slot(record.dest) if record.dest else ("", "")
        outcome = _outcome(record, holder)
        if ran_s is None and outcome and status == "valid":
            ran_s = record.build_seconds
        published = record.size_bytes if outcome in ("built", "rebuilt") else 0
        written, raw, old = self._finish(
            args=[
                self._p,
                record.key,
                _stored(record),
                holder,
                generation,
                bucket,
                field,
                self._ttl_ms(status),
                COMPLETIONS_KEPT,
                *tally.stats_args(record.kind, outcome, ran_s if outcome else None, published),
            ],
        )
        if not written:
            return None if raw is None else _record(record.key, raw)
        self._supersede(old, record)
        return record

    def _supersede(self, old_key: bytes | str | None, new: ArtifactRecord) -> None:
        """The key the destination's index named before ``new`` became valid there is stale."""
        if not old_key:
            return
        old_key = old_key.decode() if isinstance(old_key, bytes) else old_key
        if old_key == new.key:
            return
        old = self.get(old_key)
        if old is not None and old.status == "valid" and old.dest == new.dest:
            self.put(
                old.evolve(
                    status=_status("stale"),
                    rebuild=True,
                    error=f"superseded by a newer build of the same destination ({new.key}).",
                )
            )

    @_redis_errors
    def hand_back(self, record: ArtifactRecord, holder: str, generation: int) -> bool:
        """Give an interrupted build's key back (see ``_HAND_BACK``); False when the grant
        was no longer ours (then the key is someone else's to finish)."""
        queued = record.evolve(status=_status("queued"), worker=None, action="handed back")
        return bool(
            self._hand_back(
                args=[
                    self._p,
                    record.key,
                    _stored(queued),
                    holder,
                    generation,
                    time.time(),
                    record.kind,
                ]
            )
        )

    def key_batches(self, batch: int = 1000) -> Iterator[list[str]]:
        """Every recorded key, a batch at a time, by SCAN: Redis is never blocked for more
        than one batch, and memory holds one batch whatever the registry's size. Keys added
        or removed during the walk may or may not be seen; the others are seen at least once
        (SCAN may repeat one while Redis resizes its table)."""
        cursor = 0
        pattern = f"{self._p}rec:*"
        cut = len(self._rec(""))
        while True:
            try:
                cursor, raw = self._r.scan(cursor, match=pattern, count=batch, _type="string")
            except (redis.ConnectionError, redis.TimeoutError) as e:
                raise BrokerError(f"Redis is unreachable ({e}); check FARM_REDIS_URL.") from e
            if raw:
                yield [k[cut:].decode() for k in raw]
            if cursor == 0:
                return

    def raw_records(self, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every record as its JSON object (no model: listing a million is I/O, not parsing)."""
        for keys in self.key_batches(batch):
            for key, raw in zip(keys, self._mget([self._rec(k) for k in keys]), strict=True):
                if raw is not None:
                    yield stored.decode(key, raw)

    def records(self, batch: int = 500) -> Iterator[ArtifactRecord]:
        for keys in self.key_batches(batch):
            yield from (r for r in self.get_many(keys) if r is not None)

    @_redis_errors
    def _mget(self, names: list[str]) -> list[bytes | None]:
        return self._r.mget(names)

    @_redis_errors
    def keys_with_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        """Up to ``limit`` recorded keys that start with ``prefix`` (a user's short key)."""
        if len(prefix) >= 64:
            return [prefix] if self._r.exists(self._rec(prefix)) else []
        found: list[str] = []
        cut = len(self._rec(""))
        for raw in self._r.scan_iter(match=f"{self._rec(prefix)}*", count=1000, _type="string"):
            found.append(raw[cut:].decode())
            if len(found) >= limit:
                break
        return found

    @_redis_errors
    def key_for_dest(self, dest: str) -> str | None:
        """The key whose valid record holds ``dest``, if any."""
        bucket, field = self._dest_slot(dest)
        raw = self._r.hget(bucket, field)
        return raw.decode() if raw else None

    # -- completions (for waiters) -------------------------------------------------------------
    @_redis_errors
    def completion_cursor(self) -> str:
        """Where a waiter starts reading completions: after the newest one so far."""
        newest = self._r.xrevrange(self._done, count=1)
        return newest[0][0].decode() if newest else "0-0"

    @_redis_errors
    def completions(self, after: str, block_s: float, count: int = 10_000) -> list[tuple[str, str]]:
        """The keys that turned terminal after cursor ``after``, as (cursor, key), waiting up
        to ``block_s`` for the first."""
        reply = self._r.xread({self._done: after}, count=count, block=max(1, int(block_s * 1000)))
        if not reply:
            return []
        return [(i.decode(), f[b"k"].decode()) for i, f in reply[0][1]]

    @_redis_errors
    def completions_lost_after(self, cursor: str) -> bool:
        """Whether completions after ``cursor`` may have been trimmed before they were read
        (the stream keeps the newest :data:`COMPLETIONS_KEPT`); when unsure, True."""
        try:
            info = self._r.xinfo_stream(self._done)
        except redis.ResponseError:
            return True  # no stream at all: it went with a Redis that lost its data
        first = info.get("first-entry")
        return first is not None and _stream_id(_text(first[0])) > _stream_id(cursor)

    # -- keys in flight (for the watchdog) -----------------------------------------------------
    @_redis_errors
    def due_keys(self, now: float, limit: int = 500) -> list[str]:
        return [k.decode() for k in self._r.zrangebyscore(self._due, "-inf", now, 0, limit)]

    @_redis_errors
    def inflight_keys(self, claimed_before: float, start: int, count: int) -> list[str]:
        raw = self._r.zrangebyscore(self._inflight, "-inf", claimed_before, start, count)
        return [k.decode() for k in raw]

    @_redis_errors
    def inflight_count(self) -> int:
        return int(self._r.zcard(self._inflight))

    @_redis_errors
    def progress(self, keys: list[str]) -> list[tuple[tuple[ArtifactRecord, bytes] | None, float]]:
        """For each key: its record with the bytes stored (None: unknown), and its lease's
        remaining seconds (0: none)."""
        pipe = self._r.pipeline(transaction=False)
        for key in keys:
            pipe.get(self._rec(key))
            pipe.pttl(self._lease(key))
        out = pipe.execute()
        return [
            (
                None if out[2 * i] is None else (_record(key, out[2 * i]), out[2 * i]),
                max(0, int(out[2 * i + 1])) / 1000,
            )
            for i, key in enumerate(keys)
        ]

    @_redis_errors
    def set_due(self, key: str, at: float) -> None:
        self._r.zadd(self._due, {key: at}, xx=True)

    @_redis_errors
    def drop_inflight(self, keys: list[str]) -> None:
        if keys:
            pipe = self._r.pipeline(transaction=True)
            pipe.zrem(self._inflight, *keys)
            pipe.zrem(self._due, *keys)
            pipe.execute()

    @_redis_errors
    def try_lock(self, name: str, holder: str, ttl_s: float) -> bool:
        """A farm-wide mutex for work one worker should do at a time (it expires by itself)."""
        return bool(self._r.set(f"{self._p}lock:{name}", holder, nx=True, px=int(ttl_s * 1000)))

    @_redis_errors
    def unlock(self, name: str, holder: str) -> None:
        self._release(keys=[f"{self._p}lock:{name}"], args=[holder])

    # -- leases ------------------------------------------------------------------------------
    @_redis_errors
    def start(self, key: str, holder: str, ttl_s: float, *, worker: str = "") -> Start:
        """Read ``key`` and, if it is in flight and free, lease it, mark it building and count
        the attempt: a builder's first round trip. The key is then due when the lease would
        run out. The record itself is not rewritten: ``worker`` and the start time are in the
        key's progress (what ``farm status`` shows for a building key)."""
        now = time.time()
        leased, raw, attempt, generation = self._start(
            args=[self._p, key, holder, int(ttl_s * 1000), now + ttl_s, worker or holder, now]
        )
        record = None if raw is None else _record(key, raw)
        return Start(bool(leased), record, int(attempt), int(generation))

    @_redis_errors
    def renew_lease(self, key: str, holder: str, generation: int, ttl_s: float) -> bool:
        """Keep the grant's lease alive; False once the grant is no longer the newest."""
        return bool(
            self._renew(
                args=[self._p, key, holder, generation, int(ttl_s * 1000), time.time() + ttl_s]
            )
        )

    # -- fencing ------------------------------------------------------------------------------
    @_redis_errors
    def may_publish(
        self, key: str, holder: str, generation: int, dest: str, *, watch_s: float
    ) -> PublishVerdict:
        """Asked just before a rename (see ``_MAY_PUBLISH``); an allowed grant is watched
        from ``watch_s`` on until it finishes."""
        bucket, field = self._dest_slot(dest)
        verdict, newer = self._may_publish(
            args=[self._p, key, holder, generation, bucket, field, time.time() + watch_s]
        )
        if int(verdict) == 2:
            return PublishVerdict(False, _text(newer))
        return PublishVerdict(bool(verdict))

    @_redis_errors
    def still_granted(self, key: str, holder: str, generation: int) -> bool:
        """Asked just after a rename: whether the grant was still the newest when it landed."""
        return bool(self._still_granted(args=[self._p, key, holder, generation]))

    @_redis_errors
    def seed_generation(self, key: str, holder: str, generation: int, floor: int) -> int:
        """The grant's generation, raised above ``floor`` (what the key's artifact on disk
        records) if Redis lost count; 0 when the grant is no longer ours."""
        return int(self._seed(args=[self._p, key, holder, generation, floor]))

    @_redis_errors
    def raise_generation(self, key: str, floor: int) -> int:
        """Make the key's next grant newer than ``floor`` (reindex), unless one is live."""
        return int(self._raise(args=[self._p, key, floor]))

    @_redis_errors
    def generation(self, key: str) -> int:
        """The key's newest grant (0: never granted, or Redis lost count)."""
        raw = self._r.hget(f"{self._p}gens:{key[:4]}", key[4:20])
        return int(_text(raw).split(" ", 1)[0]) if raw else 0

    @_redis_errors
    def publish_watches(self, now: float, limit: int = 100) -> list[tuple[str, int]]:
        """Grants that were allowed to publish before ``now - watch`` and have not finished:
        (key, generation), for the watchdog to check their destinations."""
        out = []
        for member in self._r.zrangebyscore(self._pubwatch, "-inf", now, 0, limit):
            key, _, gen = _text(member).partition(" ")
            out.append((key, int(gen or 0)))
        return out

    @_redis_errors
    def watch_publish(self, key: str, generation: int, at: float) -> None:
        """Check (again) at ``at`` what the grant published; also how a builder that learns
        it published late asks for the check at once."""
        self._r.zadd(self._pubwatch, {f"{key} {generation}": at})

    @_redis_errors
    def unwatch_publish(self, key: str, generation: int) -> None:
        self._r.zrem(self._pubwatch, f"{key} {generation}")

    @_redis_errors
    def release_lease(self, key: str, holder: str) -> None:
        self._release_lease(keys=[self._lease(key), self._lease_tag(key)], args=[holder])

    @_redis_errors
    def lease_holder(self, key: str) -> str | None:
        raw = self._r.get(self._lease(key))
        return raw.decode() if raw else None

    @_redis_errors
    def lease_remaining_s(self, key: str) -> float:
        """Seconds before the lease on ``key`` expires unless renewed; 0 when there is none."""
        return max(0, int(self._r.pttl(self._lease(key)))) / 1000

    @_redis_errors
    def live_lease_for_job(self, job: str) -> bool:
        """Whether a lease is held on a key whose owner tag is ``job`` (a staging directory's
        builder): one lookup, whatever the registry's size."""
        return bool(self._r.exists(self._lease_tag(job)))

    # -- staging parents (for the staging sweep) -----------------------------------------------
    @property
    def _staging(self) -> str:
        return f"{self._p}stagingdirs"

    @_redis_errors
    def note_staging_parent(self, parent: str) -> None:
        """A build is about to stage in ``parent``: the sweep looks there for leftovers."""
        self._r.zadd(self._staging, {parent: time.time()})

    @_redis_errors
    def staging_parents(self, limit: int) -> list[tuple[str, float]]:
        """Directories builds staged in, with when one last did, least recent first."""
        pairs = self._r.zrange(self._staging, 0, limit - 1, withscores=True)
        return [(_text(member), float(score)) for member, score in pairs]

    @_redis_errors
    def drop_staging_parent(self, parent: str, noted_at: float) -> bool:
        """Forget ``parent`` unless a build noted it again since ``noted_at``."""
        return bool(self._drop_staging(keys=[self._staging], args=[parent, repr(noted_at)]))

    # -- workers -----------------------------------------------------------------------------
    def _worker(self, name: str) -> str:
        return f"{self._p}worker:{name}"

    @_redis_errors
    def worker_seen(self, name: str, info: dict[str, Any] | None = None, ttl_s: float = 0) -> None:
        """A worker's heartbeat; ``info`` (what ``farm workers`` shows) is kept ``ttl_s``, so
        a worker killed without a word drops off the listing by itself."""
        pipe = self._r.pipeline(transaction=False)
        pipe.zadd(self._workers, {name: time.time()})
        if info is not None and ttl_s > 0:
            ttl_ms = int(ttl_s * 1000)
            body = json.dumps({**info, "name": name, "ttl_ms": ttl_ms}, separators=(",", ":"))
            pipe.set(self._worker(name), body, px=ttl_ms)
        pipe.execute()

    @_redis_errors
    def worker_gone(self, name: str) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.zrem(self._workers, name)
        pipe.delete(self._worker(name))
        pipe.execute()

    @_redis_errors
    def workers(self) -> list[dict[str, Any]]:
        """The live workers as their last heartbeat described them, each with
        ``heartbeat_age_s`` (by Redis's clock, so clocks that disagree do not matter); two
        round trips, whatever the registry's size."""
        names = [_text(n) for n in self._r.zrange(self._workers, 0, -1)]
        if not names:
            return []
        pipe = self._r.pipeline(transaction=False)
        for name in names:
            pipe.get(self._worker(name))
            pipe.pttl(self._worker(name))
        replies = pipe.execute()
        out = []
        for i in range(len(names)):
            raw, left_ms = replies[2 * i], int(replies[2 * i + 1])
            if raw is None or left_ms < 0:
                continue  # no word within its TTL: dead, or a worker too old to describe itself
            info = json.loads(raw)
            ttl_ms = int(info.pop("ttl_ms", left_ms))
            info["heartbeat_age_s"] = round(max(0, ttl_ms - left_ms) / 1000, 3)
            out.append(info)
        return sorted(out, key=lambda w: w["name"])

    @_redis_errors
    def live_workers(self, within_s: float) -> list[str]:
        members = self._r.zrangebyscore(self._workers, time.time() - within_s, "+inf")
        return [m.decode() for m in members]

    @_redis_errors
    def reap_silent_workers(self, silent_for_s: float) -> list[str]:
        """Remove workers whose heartbeat stopped; each is returned to one caller only."""
        cutoff = time.time() - silent_for_s
        reaped = []
        for raw in self._r.zrangebyscore(self._workers, "-inf", cutoff):
            if self._r.zrem(self._workers, raw):
                reaped.append(raw.decode())
                self._r.delete(self._worker(raw.decode()))
        return reaped

    # -- what the farm counts as it works (see farm.tally) --------------------------------------
    @_redis_errors
    def snapshot(self) -> tally.Snapshot:
        """Everything ``farm metrics`` shows: a few round trips, never a scan."""
        counts, oldest, stats, recounted_at = self.tally.read()
        builds, durations, published, takeovers = tally.parse_stats(stats)
        return tally.Snapshot(
            records=counts,
            oldest_queued_at=oldest,
            builds=builds,
            durations=durations,
            published_bytes=published,
            takeovers=takeovers,
            workers=self.workers(),
            recounted_at=recounted_at,
        )

    @_redis_errors
    def recount(self) -> dict[str, int]:
        """Rebuild the counts of records by status from the records themselves (a scan: for
        ``farm reindex``, and once on a registry written before the farm counted)."""
        return self.tally.recount(self.key_batches())

    @_redis_errors
    def recount_if_never_counted(self, holder: str) -> bool:
        """Recount once, farm-wide, if the counts were never rebuilt (a registry that
        predates them); True if this call did."""
        if self.tally.counted() or not self.try_lock("recount", holder, 3600.0):
            return False
        try:
            if self.tally.counted():
                return False
            self.recount()
            return True
        finally:
            self.unlock("recount", holder)

    @_redis_errors
    def forget(self, keys: Iterable[str], *, in_flight: bool = False) -> list[str]:
        """Remove records and all kept for their keys (progress, cancel flag, attempts, the
        destination index when it names them); return the keys whose record went. Keys queued
        or building are kept unless ``in_flight``: their builder would write them back."""
        keys = list(keys)
        # A key's destination is fixed by the key (it is hashed into it), so reading it
        # before the script cannot race with a rewrite of the record.
        dests = [
            None if raw is None else stored.decode(key, raw).get("dest")
            for key, raw in zip(keys, self._r.mget([self._rec(k) for k in keys]) if keys else [],
                                strict=True)
        ]  # fmt: skip
        pipe = self._r.pipeline(transaction=False)
        for key, dest in zip(keys, dests, strict=True):
            bucket, field = self._dest_slot(dest) if dest else (self._rec(key), "")
            self._forget(
                keys=[
                    self._rec(key),
                    self._inflight,
                    self._due,
                    self._progress(key),
                    self._cancel(key),
                    self._attempts(key),
                    self._lease(key),
                    bucket,
                    self.tally.counts_key,
                    self.tally.expiring_key,
                ],
                args=[key, field, "1" if in_flight else "0"],
                client=pipe,
            )
        return [key for key, gone in zip(keys, pipe.execute(), strict=True) if gone]
