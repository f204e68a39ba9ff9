"""How a record is stored in Redis: a 3-byte header, then its JSON, deflated.

A labs-wide registry holds millions of records, so each is kept small: the key is the Redis
key's name and not repeated, and the JSON is deflated against a preset dictionary of what
every record says (field names, kinds, algorithms), which leaves mostly the paths and digests.

The header is what the registry's Lua scripts read without inflating anything:

- byte 0, the status: ``q`` queued, ``b`` building, ``v`` valid, ``s`` stale, ``i`` invalid,
  ``f`` failed;
- byte 1, the rebuild flag: ``r`` (the artifact on disk must not be reused) or ``-``;
- byte 2, the format: ``1``. Changing the preset dictionary needs a new format byte.

A record written before this format (plain JSON) is still read.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

STATUS_CODE = {
    "queued": "q",
    "building": "b",
    "valid": "v",
    "stale": "s",
    "invalid": "i",
    "failed": "f",
}
_STATUS_OF_CODE = {code: name for name, code in STATUS_CODE.items()}
FORMAT = "1"
HEADER_LEN = 3

# What records say over and over; deflate finds the later entries in fewer bits.
_PRESET = (
    b'"annot_tracks":null,"tracks":null,"strand_column":null,"samples":null,'
    b'"max_jitter":0,"extend_to_length":true,"variants":"","regions":"",'
    b'{"kind":"dataset","dest":"","request":{"kind":"dataset",'
    b'"algorithm":"blake2b","n_bytes_hashed":1048576,"digest":"","size_bytes":'
    b',"error":null,"started_at":null,"finished_at":null,"build_seconds":null,'
    b'"size_bytes":null,"checksum":null,"worker":null,"action":null}'
    b'"checksum":"sha256:","checksum":"crc32x4MiB:","worker":"celery@","worker":"inline@",'
    b'"action":"built"}"action":"reused"}"action":"rebuilt"}"action":"reindexed"}'
    b'.vcf.gz",".bed",".bw",".svar",".pgen",".fa.gz",".fasta",".fa",".gvl",".gvlfa"'
    b'{"kind":"cache","dest":"","request":{"kind":"cache","fasta":"","dest":".gvlfa"},'
    b'"sources":{"fasta":{"algorithm":"blake2b","n_bytes_hashed":1048576,"digest":"'
    b'"status":"","created_at":17,"updated_at":17'
)
_LEVEL = 6


def encode(fields: dict[str, Any]) -> bytes:
    """A record's JSON fields (as ``model_dump(mode="json")`` gives them) as stored."""
    body = {k: v for k, v in fields.items() if k not in ("key", "status", "rebuild")}
    packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _PRESET)
    deflated = packer.compress(json.dumps(body, separators=(",", ":")).encode())
    header = STATUS_CODE[fields["status"]] + ("r" if fields.get("rebuild") else "-") + FORMAT
    return header.encode() + deflated + packer.flush()


def decode(key: str, raw: bytes) -> dict[str, Any]:
    """The record's JSON fields back, key included."""
    if raw[:1] == b"{":
        return json.loads(raw)
    if raw[2:3] != FORMAT.encode():
        raise ValueError(f"record {key} is in an unknown format; run `farm reindex`")
    inflater = zlib.decompressobj(-15, _PRESET)
    fields = json.loads(inflater.decompress(raw[HEADER_LEN:]) + inflater.flush())
    return {
        "rebuild": raw[1:2] == b"r",
        "key": key,
        "status": _STATUS_OF_CODE[chr(raw[0])],
        **fields,
    }


def status_of(raw: bytes) -> str:
    """The status alone, from the header: what a waiter needs, with nothing inflated."""
    if raw[:1] == b"{":
        return str(json.loads(raw)["status"])
    return _STATUS_OF_CODE[chr(raw[0])]


# Lua's view of the header, for the registry's scripts (a record in the old format is JSON).
LUA_STATUS = """
local CODES = {q='queued', b='building', v='valid', s='stale', i='invalid', f='failed'}
local function status_of(v)
  local c = string.sub(v, 1, 1)
  if c == '{' then return cjson.decode(v)['status'] end
  return CODES[c]
end
local function in_flight(v)
  local s = status_of(v)
  return s == 'queued' or s == 'building'
end
"""
