"""Source fingerprints (GenVarLoader's cheap identity check), source stamps, content checksums.

The fingerprint is byte-for-byte GenVarLoader's record, so a cache the farm writes is taken as
fresh by GenVarLoader and the other way round. It only hashes the first MiB plus the size, so a
same-size edit past the first MiB is invisible to it; the content checksum closes that gap for
deep verification, at the price of reading every byte. During a build, a :class:`SourceStamp`
closes it at the price of one ``fstat``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from isal import isal_zlib
from pydantic import BaseModel, ConfigDict

from farm.errors import SourceChangedError

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
        return _fingerprint_open(f, os.fstat(f.fileno()).st_size)


def _fingerprint_open(f: BinaryIO, size: int) -> Fingerprint:
    n = min(FINGERPRINT_WINDOW, size)
    digest = hashlib.blake2b(f.read(n)).hexdigest()
    return Fingerprint(n_bytes_hashed=n, digest=digest, size_bytes=size)


# A file's ctime comes from a clock that, before Linux 6.13's multigrain timestamps, advances
# once per timer tick: 10 ms at the slowest standard rate (HZ=100). Twice that leaves a margin.
SETTLE_NS = 20_000_000
_SETTLE_TRIES = 5


@dataclass(frozen=True)
class SourceStamp:
    """A source file as a build is about to read it, to compare with the file after the build.

    The fingerprint alone misses a same-size edit past the first MiB, and size plus mtime miss
    it too once mtime is set back (``os.utime``, ``touch -d``, ``cp -p``, ``rsync -t``). The
    stamp adds what a user cannot set back: ``ctime``, which the kernel moves on every write,
    truncate, chmod or utime of the inode, and the device and inode number, which a file
    replaced by a rename (editors, ``cp`` to a temp name then ``mv``) does not keep.

    Timestamp granularity: a change within the same clock step as the stamped ctime may keep
    the ctime. On Linux >= 6.13 (ext4, xfs, btrfs, tmpfs) the ``fstat`` here makes the next
    change get a fine-grained, later ctime. Elsewhere the step is one timer tick (1-10 ms), so
    :meth:`take` waits until the file's ctime is :data:`SETTLE_NS` older than the clock before
    stamping; from then on every change gets a later ctime. Not covered: filesystems whose
    stamps are coarser (FAT's 2 s, network filesystems whose server sets the times) and a clock
    set backwards; there a same-size edit past the first MiB with mtime restored, in the same
    step as the previous change, is seen only by a full checksum (``farm verify``).
    """

    path: Path
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    fingerprint: Fingerprint

    @classmethod
    def take(cls, path: str | os.PathLike[str]) -> SourceStamp:
        """Stamp ``path`` before reading it, once its ctime has settled (see the class doc).

        Raises :class:`SourceChangedError` for a file that keeps changing while it settles.
        """
        for _ in range(_SETTLE_TRIES):
            now = time.time_ns()  # before the fstat: the clock had passed ``now`` by then
            stamp = cls._read(Path(path))
            age = now - stamp.ctime_ns
            # Settled; or stamped by a clock far ahead of ours (a server's): waiting is futile.
            if not -SETTLE_NS <= age < SETTLE_NS:
                return stamp
            time.sleep((SETTLE_NS - age) / 1e9)
        raise SourceChangedError(
            f"{path} is being written to right now; nothing was built from it, submit the "
            "build again once the file is final."
        )

    @classmethod
    def _read(cls, path: Path) -> SourceStamp:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())  # before reading, so a write after it moves ctime
            fp = _fingerprint_open(f, st.st_size)
        return cls(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, fp)

    def unchanged(self) -> bool:
        """Whether the file at :attr:`path` is still the one stamped: same inode, untouched."""
        try:
            return self._read(self.path) == self
        except OSError:  # gone, or made unreadable (a chmod, which moves ctime anyway)
            return False


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
            self._crc = isal_zlib.crc32(view[:take], self._crc)  # zlib's CRC-32, SIMD
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
