"""Source fingerprints (GenVarLoader's cheap identity check) and full-content checksums.

The fingerprint is byte-for-byte GenVarLoader's record, so a cache the farm writes is taken as
fresh by GenVarLoader and the other way round. It only hashes the first MiB plus the size, so a
same-size edit past the first MiB is invisible to it; the content checksum closes that gap for
deep verification, at the price of reading every byte.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict

FINGERPRINT_WINDOW = 1 << 20
CHECKSUM_ALGORITHM = "sha256"  # SHA-NI makes it the fastest strong hash hashlib offers here
_READ_CHUNK = 8 << 20


class Fingerprint(BaseModel):
    """GenVarLoader's fingerprint record; field names and order are part of its format."""

    model_config = ConfigDict(frozen=True)

    algorithm: Literal["blake2b"] = "blake2b"
    n_bytes_hashed: int
    digest: str
    size_bytes: int

    def matches(self, other: Fingerprint) -> bool:
        return self.size_bytes == other.size_bytes and self.digest == other.digest


def fingerprint(path: str | os.PathLike[str]) -> Fingerprint:
    """Fingerprint a file as stored (compressed bytes for a bgzipped file)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = min(FINGERPRINT_WINDOW, size)
        digest = hashlib.blake2b(f.read(n)).hexdigest()
    return Fingerprint(n_bytes_hashed=n, digest=digest, size_bytes=size)


def new_checksum() -> hashlib._Hash:
    """A running checksum, for builders that hash bytes as they write them."""
    return hashlib.new(CHECKSUM_ALGORITHM)


def format_checksum(h: hashlib._Hash) -> str:
    return f"{CHECKSUM_ALGORITHM}:{h.hexdigest()}"


def checksum(path: str | os.PathLike[str]) -> str:
    """Full-content checksum, as ``sha256:<hex>``."""
    h = new_checksum()
    _feed(path, h.update, _READ_CHUNK)
    return format_checksum(h)


def _feed(path: str | os.PathLike[str], update: Callable[[memoryview], object], size: int) -> None:
    """Hand every byte of a file to ``update``, through one reused buffer."""
    buf = bytearray(size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            update(view[:n])


# --- chunked CRC: the checksum a parallel builder can compute ----------------------------------

# ``sequence.bin`` is checked against accidental damage (bit rot, a half-written copy, pages
# zeroed by a crash), not against an adversary; like ZFS's default fletcher4, a non-
# cryptographic check is enough there. CRC-32 per fixed 4 MiB chunk runs at ~5 GB/s (sha256:
# ~2 GB/s, and it is sequential), and fixed chunks let builder threads check their own slices.
# The per-chunk CRCs are folded into one sha256 so the record has a fixed size.
CHUNK_CRC_ALGORITHM = "crc32x4MiB"
CHECK_CHUNK = 4 << 20


def chunk_crc_digest(crcs: list[int]) -> str:
    """Fold per-chunk CRCs, in file order, into the recorded checksum string."""
    folded = hashlib.sha256(b"".join(c.to_bytes(4, "big") for c in crcs)).hexdigest()
    return f"{CHUNK_CRC_ALGORITHM}:{folded}"


class ChunkedCrc:
    """Running chunked CRC for a writer that sees the bytes in order, in any block sizes."""

    def __init__(self) -> None:
        self._crcs: list[int] = []
        self._crc = 0
        self._filled = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), CHECK_CHUNK - self._filled)
            self._crc = zlib.crc32(view[:take], self._crc)
            self._filled += take
            view = view[take:]
            if self._filled == CHECK_CHUNK:
                self._crcs.append(self._crc)
                self._crc = self._filled = 0

    def hexdigest(self) -> str:
        crcs = self._crcs + ([self._crc] if self._filled else [])
        return chunk_crc_digest(crcs)


def chunk_crc_checksum(path: str | os.PathLike[str]) -> str:
    running = ChunkedCrc()
    _feed(path, running.update, CHECK_CHUNK)
    return running.hexdigest()


def content_matches(path: str | os.PathLike[str], recorded: str) -> bool | None:
    """Whether ``path`` has the recorded content checksum; None for an unknown algorithm."""
    algorithm = recorded.split(":", 1)[0]
    if algorithm == CHUNK_CRC_ALGORITHM:
        return chunk_crc_checksum(path) == recorded
    if algorithm == CHECKSUM_ALGORITHM:
        return checksum(path) == recorded
    return None
