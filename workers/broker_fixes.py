"""Keep worker main processes alive when the Redis broker restarts (a kombu workaround).

Why: when Redis dies while a worker holds an unacknowledged message (a build running with
``acks_late``) and has a ``BRPOP`` in flight (a free pool slot), Celery's
``on_connection_error_after_connected`` tears the connection down in two passes. The first
(``Connection.collect``) gives up on the task channel early, then sets ``transport.client`` to
``None``; the second (``connection.close()``) closes that channel again, and its
``restore_unacked`` needs a new Redis pool, built by ``Channel._connparams`` from
``transport.client``. The resulting ``AttributeError: 'NoneType' object has no attribute
'hostname'`` is not a connection error, so nothing on the way catches it and the main process
exits ("Unrecoverable error"). Later, the ack of a build that finishes on such a channel fails
the same way (``... no attribute 'client'``).

The fix: a channel whose kombu connection is closed raises a Redis ``ConnectionError`` when it
needs a new pool, which every caller already handles as "the broker is away" (the close goes
on, a late ack is logged as not done). Nothing is lost: a delivered message stays in Redis's
``unacked`` hash until acked, and the visibility-timeout sweep (``restore_visible``, run by
every worker) puts it back in its queue; a build that already published is then a no-op.
Same failure as https://github.com/celery/kombu/issues/582 (closed without a fix for this
path); still present in kombu 5.7.0.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_MARK = "_farm_broker_fix"


def _detached(channel: Any) -> bool:
    """True once the channel's kombu connection is closed: it has nothing to connect with."""
    transport = getattr(channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


def install() -> None:
    """Make a detached kombu Redis channel fail with a connection error. Idempotent."""
    channel_cls: Any = kombu_redis.Channel
    original = channel_cls._connparams
    if getattr(original, _MARK, False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        if _detached(self):
            raise redis.ConnectionError(
                "broker connection already closed; unacknowledged messages stay in Redis "
                "and are redelivered after the visibility timeout"
            )
        return original(self, asynchronous=asynchronous)

    setattr(_connparams, _MARK, True)
    _connparams.__wrapped__ = original  # type: ignore[attr-defined]
    channel_cls._connparams = _connparams
