"""Keep worker main processes alive when the Redis broker restarts (a kombu workaround).

Why: Redis dies while a worker runs a build (an unacknowledged message, ``acks_late``) and has
a free pool slot (a ``BRPOP`` in flight). Celery's ``on_connection_error_after_connected``
closes the connection in two passes. In the first (``Connection.collect``) the task channel's
close stops at the dead ``BRPOP`` socket and the control channel's close at its dead socket, so
the task channel stays open; then ``transport.client`` is set to ``None``. The second pass
(``connection.close()``) closes the task channel again: ``restore_unacked`` asks for a new
Redis pool, and ``Channel._connparams`` reads ``transport.client.hostname``. That
``AttributeError`` is not a connection error, nothing catches it, and the main process exits
("Unrecoverable error"). A build finishing later on such a channel fails its ack the same way.

The fix: a channel whose kombu connection is closed raises a Redis ``ConnectionError`` instead,
which every caller already handles as "the broker is away": the close goes on, a late ack is
logged as not done. Nothing is lost: a delivered message stays in Redis's ``unacked`` hash until
acknowledged, and the visibility-timeout sweep (``restore_visible``, which every worker runs)
puts it back in its queue; a redelivered build that already published changes nothing.

Upstream: the same ``AttributeError`` in ``_connparams`` from a channel closed after its
connection was released, https://github.com/celery/kombu/issues/582 (reported on kombu 3.0,
closed); still reachable in kombu 5.7.0 / celery 5.7.0 through the path above.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_MARK = "_farm_broker_fix"


def _detached(channel: Any) -> bool:
    """True once the channel's kombu connection is closed: nothing left to connect with."""
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
