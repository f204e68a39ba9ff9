"""The one place in ``farm`` that speaks Celery: sending build messages, and finding them.

A message is JSON and names one key (also its task id); see :class:`Sender`. Sending a batch
reuses one producer and one connection, which is most of the cost of ``apply_async``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from celery import Celery

from farm.config import BUILD_TASK, QUEUE, Settings, celery_config
from farm.embedded import celery_broker_url

# Where kombu's Redis transport keeps messages: one list per priority step (the plain name
# for priority 0), and the messages delivered but not yet acknowledged in one hash.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
_UNACKED = "unacked"
_PAGE = 500


class Sender:
    """Sends build messages: the key alone, in the smallest message a Celery worker takes.

    The request is not in the message: the worker reads it from the key's record, so a
    message forged by anyone who can reach the broker can only ask for a build someone
    submitted. Celery's own ``send_task`` adds two dozen headers that nothing here reads
    (repeating the key four times); a queued request costs Redis a third as much without them.
    """

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self._app = Celery("gvl-farm-client", set_as_current=False)
        self._app.conf.update(celery_config(settings, celery_broker_url(redis_url)))
        self._retry_policy = dict(self._app.conf.task_publish_retry_policy)

    def send(self, keys: Iterable[str]) -> int:
        sent = 0
        with self._app.producer_or_acquire() as producer:
            for key in keys:
                producer.publish(
                    [[key], {}, {}],  # Celery's message protocol 2: args, kwargs, embed
                    exchange="",
                    routing_key=QUEUE,
                    serializer="json",
                    headers={"lang": "py", "task": BUILD_TASK, "id": key},
                    retry=True,
                    retry_policy=self._retry_policy,
                )
                sent += 1
        return sent

    def close(self) -> None:
        self._app.close()


class BrokerInspector:
    """Which build messages the broker holds: queued, or delivered and not yet acknowledged.

    Reads kombu's Redis layout page by page (each read is short), so its cost grows with the
    messages in the broker, not with the registry.
    """

    def __init__(self, redis_url: str, queue: str = QUEUE) -> None:
        self._r = redis.Redis.from_url(redis_url)
        self._lists = [queue if p == 0 else f"{queue}{_PRIORITY_SEP}{p}" for p in _PRIORITY_STEPS]

    def message_ids(self) -> set[str]:
        ids = {_task_id(raw) for raw in self._queued()}
        for raw in self._unacked():
            try:
                message = json.loads(raw)[0]
            except (ValueError, IndexError, TypeError):
                continue
            ids.add(_task_id(message))
        ids.discard("")
        return ids

    def _queued(self) -> Iterator[bytes]:
        for name in self._lists:
            start = 0
            while page := self._r.lrange(name, start, start + _PAGE - 1):
                yield from page
                start += len(page)

    def _unacked(self) -> Iterator[bytes]:
        for _tag, raw in self._r.hscan_iter(_UNACKED, count=_PAGE):
            yield raw

    def close(self) -> None:
        self._r.close()


def _task_id(message: bytes | dict[str, Any]) -> str:
    try:
        data = json.loads(message) if isinstance(message, bytes | str) else message
        return str(data["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return ""
