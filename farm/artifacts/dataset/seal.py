"""The seal on a dataset's ``farm.json``: a checksum of the record itself.

``farm.json`` holds the checksums of every other file, but nothing held its own: a byte changed
in a source fingerprint read as a changed source (stale) and one in the request as another
request's dataset, when both are damage. The seal is the SHA-256 of the record's canonical
JSON without the seal, so any change to the record is told apart from a change to a source.
Records written before the seal have none and are read as before.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

SEAL = "seal"
# Every key a record holds; another one is a damaged key name.
FIELDS = frozenset(
    {"kind", "farm_version", "format_version", "request", "sources", "checksums", "fence", SEAL}
)


def _digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != SEAL}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def sealed(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its seal, last."""
    return {**{k: v for k, v in record.items() if k != SEAL}, SEAL: _digest(record)}


def damage(record: dict[str, Any]) -> str | None:
    """What is wrong with a record as written, or None when it is as the build wrote it
    (or was written before records were sealed)."""
    if unknown := sorted(set(record) - FIELDS):
        return f"holds a field no build writes ({unknown[0][:40]!r})"
    if SEAL in record and record[SEAL] != _digest(record):
        return "was changed after the build (its seal does not match)"
    return None
