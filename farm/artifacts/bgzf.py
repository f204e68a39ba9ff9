"""BGZF, the block gzip of bgzip and htslib: is a file BGZF, was it cut short, and its blocks."""

from __future__ import annotations

import os
from concurrent.futures import Executor
from enum import StrEnum
from pathlib import Path

import numpy as np
from isal import isal_zlib

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


class BgzfError(ValueError):
    """A BGZF block that is cut short or not a BGZF block at all."""


class Blocks:
    """The blocks of a whole BGZF file, inflated on demand.

    A BGZF file is a series of independent gzip members of at most 64 KiB of text each, so
    any run of blocks inflates without the ones before it, on as many threads as there are
    cores (isal's inflate lets go of the GIL). ``coffsets[i]`` is where block ``i`` starts in
    the file, ``ustarts[i]`` where its text starts in the whole inflated stream. Blocks are
    read with ``pread``, not mapped: a mapping would count the whole file in the reader's RSS.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(self._fd).st_size
            coffsets, usizes = _walk_blocks(self._fd, self.size, path)
        except BaseException:
            os.close(self._fd)
            raise
        self.coffsets = np.asarray([*coffsets, self.size], np.int64)
        usize = np.asarray(usizes, np.int64)
        self.ustarts = np.zeros(len(usize) + 1, np.int64)
        np.cumsum(usize, out=self.ustarts[1:])

    @property
    def n(self) -> int:
        return len(self.coffsets) - 1

    @property
    def text_size(self) -> int:
        return int(self.ustarts[-1])

    def inflate_run(self, a: int, b: int, pool: Executor | None = None) -> bytes:
        """The text of blocks ``[a, b)``, inflated on ``pool``'s threads when given."""
        if pool is not None and b - a >= 8:
            step = -(-(b - a) // 4)
            runs = [(i, min(i + step, b)) for i in range(a, b, step)]
            return b"".join(pool.map(lambda r: self.inflate_run(*r), runs))
        c0 = int(self.coffsets[a])
        raw = memoryview(os.pread(self._fd, int(self.coffsets[b]) - c0, c0))
        out = []
        for i in range(a, b):
            start, end = int(self.coffsets[i]) - c0, int(self.coffsets[i + 1]) - c0
            xlen = int.from_bytes(raw[start + 10 : start + 12], "little")
            try:
                out.append(isal_zlib.decompress(raw[start + 12 + xlen : end - 8], -15))
            except isal_zlib.error as e:
                raise BgzfError(f"block {i} at byte {c0 + start} does not inflate ({e})") from e
        return b"".join(out)

    def text(self, u0: int, u1: int, pool: Executor | None = None) -> bytes:
        """Inflated bytes ``[u0, u1)`` of the whole text."""
        a = int(np.searchsorted(self.ustarts, u0, "right")) - 1
        b = int(np.searchsorted(self.ustarts, u1, "left"))
        data = self.inflate_run(a, b, pool)
        off = u0 - int(self.ustarts[a])
        return data[off : off + (u1 - u0)]

    def close(self) -> None:
        os.close(self._fd)


def _walk_blocks(fd: int, size: int, path: Path) -> tuple[list[int], list[int]]:
    """Start offset and inflated size of every block, from the headers and trailers alone."""
    coffsets: list[int] = []
    usizes: list[int] = []
    pos = 0
    base, data = 0, b""
    while pos < size:
        if pos + (1 << 16) > base + len(data):  # keep a whole block's worth ahead in ``data``
            base, data = pos, os.pread(fd, 1 << 24, pos)
        at = pos - base
        head = data[at : at + 18]
        if len(head) < 18 or head[:4] != b"\x1f\x8b\x08\x04":
            raise BgzfError(f"{path} is not BGZF or is cut short at byte {pos}")
        xlen = int.from_bytes(head[10:12], "little")
        bsize = _bsize(data[at + 12 : at + 12 + xlen])
        if bsize is None:
            raise BgzfError(f"{path} has a gzip member without BGZF's size field at byte {pos}")
        end = pos + bsize + 1
        if end > size:
            raise BgzfError(f"{path} is cut short inside the block at byte {pos}")
        coffsets.append(pos)
        usizes.append(int.from_bytes(data[end - base - 4 : end - base], "little"))
        pos = end
    return coffsets, usizes


def _bsize(extra: bytes) -> int | None:
    i = 0
    while i + 4 <= len(extra):
        slen = int.from_bytes(extra[i + 2 : i + 4], "little")
        if extra[i : i + 2] == b"BC" and slen == 2:
            return int.from_bytes(extra[i + 4 : i + 6], "little")
        i += 4 + slen
    return None
