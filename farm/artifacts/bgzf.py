"""BGZF, the block gzip of bgzip and htslib: is a file BGZF, and was it cut short."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

# Every complete BGZF file ends with this empty block; gzip itself cannot tell a file cut at
# a block boundary from a whole one, so its absence is the only sign.
EOF_BLOCK = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


class Bgzf(StrEnum):
    NOT_BGZF = "not_bgzf"  # plain, or plain gzip
    COMPLETE = "complete"
    TRUNCATED = "truncated"


def bgzf_state(path: Path) -> Bgzf:
    with open(path, "rb") as f:
        head = f.read(16)
        # gzip magic, deflate, FEXTRA set, and the "BC" subfield that makes it BGZF
        if head[:4] != b"\x1f\x8b\x08\x04" or head[12:14] != b"BC":
            return Bgzf.NOT_BGZF
        size = os.fstat(f.fileno()).st_size
        if size < len(EOF_BLOCK):
            return Bgzf.TRUNCATED
        f.seek(size - len(EOF_BLOCK))
        return Bgzf.COMPLETE if f.read() == EOF_BLOCK else Bgzf.TRUNCATED
