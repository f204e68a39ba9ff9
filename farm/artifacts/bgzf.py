"""BGZF, the block gzip of bgzip and htslib: is a file BGZF, was it cut short, and its blocks."""

from __future__ import annotations

import io
import os
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
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

    def __init__(self, path: Path, *, use_gzi: bool = False) -> None:
        """``use_gzi``: take the block starts from ``PATH.gzi`` when it is at least as new as
        the file (no pass over the file before the first block inflates); each block is then
        checked as it is inflated (:meth:`read_into`), so a wrong index fails, never
        misreads. Without it, or without a usable one, every block header is walked."""
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(self._fd).st_size
            found = _read_gzi(path, self._fd, self.size) if use_gzi else None
            coffsets, usizes = found or _walk_blocks(self._fd, self.size, path)
        except BaseException:
            os.close(self._fd)
            raise
        self.from_gzi = found is not None
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

    @property
    def fd(self) -> int:
        return self._fd

    def compressed_span(self, u0: int, u1: int) -> tuple[int, int]:
        """The bytes of the file that hold text ``[u0, u1)``."""
        a = int(np.searchsorted(self.ustarts, u0, "right")) - 1
        b = int(np.searchsorted(self.ustarts, u1, "left"))
        return int(self.coffsets[max(a, 0)]), int(self.coffsets[min(b, self.n)])

    def read_into(self, u0: int, out: memoryview) -> int:
        """Inflate text from ``u0`` straight into ``out`` (up to its length); the bytes put.

        Every block is checked against the index: its header, its size field and its
        inflated length, so blocks found from a ``.gzi`` are as sure as walked ones.
        """
        u1 = min(u0 + len(out), self.text_size)
        if u1 <= u0:
            return 0
        a = int(np.searchsorted(self.ustarts, u0, "right")) - 1
        b = int(np.searchsorted(self.ustarts, u1, "left"))
        c0 = int(self.coffsets[a])
        raw = memoryview(os.pread(self._fd, int(self.coffsets[b]) - c0, c0))
        put = 0
        for i in range(a, b):
            start, end = int(self.coffsets[i]) - c0, int(self.coffsets[i + 1]) - c0
            head = raw[start : start + 18]
            xlen = int.from_bytes(head[10:12], "little") if len(head) >= 12 else 0
            if (
                len(head) < 18
                or head[:4] != b"\x1f\x8b\x08\x04"
                or _bsize(bytes(raw[start + 12 : start + 12 + xlen])) != end - start - 1
            ):
                raise BgzfError(f"{self.path}: no BGZF block of the indexed size at {c0 + start}")
            try:
                text = isal_zlib.decompress(raw[start + 12 + xlen : end - 8], -15)
            except isal_zlib.error as e:
                raise BgzfError(f"block {i} at byte {c0 + start} does not inflate ({e})") from e
            if len(text) != int(self.ustarts[i + 1] - self.ustarts[i]):
                raise BgzfError(f"{self.path}: block {i} holds {len(text)} bytes, not as indexed")
            lo = max(u0 - int(self.ustarts[i]), 0)
            n = min(len(text) - lo, u1 - u0 - put)
            out[put : put + n] = memoryview(text)[lo : lo + n]
            put += n
        return put

    def close(self) -> None:
        os.close(self._fd)


def _read_gzi(path: Path, fd: int, size: int) -> tuple[list[int], list[int]] | None:
    """Block starts and inflated sizes from htslib's ``.gzi`` (a count, then the compressed
    and inflated offset of every block start but the first), or None when there is none
    newer than the file or it does not fit the file. The last data block ends where the
    end-of-file block starts; its inflated size is its own trailer's."""
    gzi = path.with_name(path.name + ".gzi")
    try:
        if gzi.stat().st_mtime < os.fstat(fd).st_mtime:
            return None
        data = gzi.read_bytes()
    except OSError:
        return None
    if len(data) < 8 or size < 2 * len(EOF_BLOCK):
        return None
    (count,) = np.frombuffer(data[:8], "<u8")
    if len(data) != 8 + 16 * int(count):
        return None
    pairs = np.frombuffer(data[8:], "<u8").reshape(-1, 2).astype(np.int64)
    eof = size - len(EOF_BLOCK)
    coffsets = np.concatenate([[0], pairs[:, 0]])
    ustarts = np.concatenate([[0], pairs[:, 1]])
    if np.any(np.diff(coffsets) <= 0) or np.any(np.diff(ustarts) < 0) or coffsets[-1] >= eof:
        return None
    last = int.from_bytes(os.pread(fd, 4, eof - 4), "little")
    usizes = [*np.diff(ustarts).tolist(), last, 0]  # the data blocks, then the EOF block
    return [*coffsets.tolist(), eof], usizes


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


class BgzfReader(io.RawIOBase):
    """A whole BGZF file read front to back as its inflated text, the blocks inflated in runs
    on up to ``max_threads`` threads ahead of the reader.

    How many runs inflate at once is decided from what the reader sees, not fixed: it starts
    at one, takes one more each time the reader had to wait for a run (inflating is the
    bottleneck: another core helps), and gives one back after a few runs found ready (the
    reader is the bottleneck, or the machine's cores are taken: another thread would only
    compete). ``peak_threads`` says how many it went up to.
    """

    RUN = 32  # blocks a task (up to 2 MiB of text)

    def __init__(self, path: Path, max_threads: int | None = None) -> None:
        super().__init__()
        self._blocks = Blocks(path)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        self._max = max(1, max_threads or cores)
        self._pool = ThreadPoolExecutor(self._max)
        self._runs = deque(
            (a, min(a + self.RUN, self._blocks.n)) for a in range(0, self._blocks.n, self.RUN)
        )
        self._ahead: deque[Future[bytes]] = deque()
        self._target = 1
        self._ready_streak = 0
        self.peak_threads = 1
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while self._runs and len(self._ahead) < self._target:
            self._ahead.append(self._pool.submit(self._blocks.inflate_run, *self._runs.popleft()))

    def _next_run(self) -> bytes:
        self._fill()
        if not self._ahead:
            return b""
        head = self._ahead.popleft()
        if head.done():
            self._ready_streak += 1
            if self._ready_streak >= 4 and self._target > 1:
                self._target -= 1
                self._ready_streak = 0
        else:
            self._ready_streak = 0
            self._target = min(self._max, self._target + 1)
            self.peak_threads = max(self.peak_threads, self._target)
            self._fill()
        try:
            return head.result()
        except BgzfError as e:
            raise EOFError(str(e)) from e

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = [bytes(self._buf)]
            while chunk := self._next_run():
                parts.append(chunk)
            self._buf = memoryview(b"")
            return b"".join(parts)
        while not self._buf:
            chunk = self._next_run()
            if not chunk:
                return b""
            self._buf = memoryview(chunk)
        out, self._buf = self._buf[:size], self._buf[size:]
        return bytes(out)

    def close(self) -> None:
        if not self.closed:
            self._pool.shutdown(cancel_futures=True)
            self._blocks.close()
        super().close()
