"""What a worker says about the keys it moves, and the JSON form of its log.

One line per state change of a key (``building``, then ``valid``, ``failed``, or ``queued``
again when a stopping worker hands it back or the watchdog requeues it), on the
``farm.keys`` logger, with the same fields in both forms: ``key``, ``kind``, ``status``,
``worker``, ``duration_s``, ``size_b``, ``error``, ``action`` and ``dest``. As text (the
default) the line is ``key=... status=...`` pairs; with ``FARM_LOG_FORMAT=json`` every log
line of the worker is one JSON object (:class:`JsonFormatter`), which ``workers/`` installs
in place of Celery's formatter.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

KEYS = logging.getLogger("farm.keys")
# Where no logging is set up (the CLI's inline builds), these lines go nowhere rather than to
# Python's last-resort stderr handler: a command says what happened in its own words.
KEYS.addHandler(logging.NullHandler())
FORMATS = ("text", "json")
# What every key line carries, in this order (absent values are null in JSON, left out as text).
FIELDS = ("key", "kind", "status", "action", "worker", "duration_s", "size_b", "dest", "error")


def key_changed(
    key: str,
    *,
    kind: str,
    status: str,
    worker: str,
    action: str | None = None,
    duration_s: float | None = None,
    size_b: int | None = None,
    dest: str | None = None,
    error: str | None = None,
) -> None:
    """Log one state change of ``key``: a failure as a warning (seen at Celery's default
    level), the rest as info."""
    fields: dict[str, Any] = {
        "key": key,
        "kind": kind,
        "status": status,
        "action": action,
        "worker": worker,
        "duration_s": None if duration_s is None else round(duration_s, 3),
        "size_b": size_b,
        "dest": dest,
        "error": error,
    }
    level = logging.WARNING if status == "failed" else logging.INFO
    KEYS.log(level, "%s", _logfmt(fields), extra={"farm_fields": fields})


def _logfmt(fields: dict[str, Any]) -> str:
    parts = []
    for name in FIELDS:
        value = fields.get(name)
        if value is None:
            continue
        text = str(value)
        if not text or any(c in text for c in ' "=\n\t'):
            text = json.dumps(text)
        parts.append(f"{name}={text}")
    return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``, the
    fields of a key line at the top level, and ``exc`` with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "farm_fields", None)
        if isinstance(fields, dict):
            line["msg"] = f"{fields.get('status')} {fields.get('kind')} {fields.get('key')}"
            line.update(fields)
        else:
            line["msg"] = record.getMessage()
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def json_line(level: str, logger: str, msg: str) -> str:
    """A JSON log line written without logging (where a signal handler must not take
    logging's locks)."""
    line = {"ts": _iso(time.time()), "level": level, "logger": logger, "msg": msg}
    return json.dumps(line, ensure_ascii=False) + "\n"


def _iso(created: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


def use_json(handlers: list[logging.Handler]) -> None:
    """Give ``handlers`` the JSON formatter."""
    formatter = JsonFormatter()
    for handler in handlers:
        handler.setFormatter(formatter)
