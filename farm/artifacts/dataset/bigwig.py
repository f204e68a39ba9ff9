"""Read bigWig intervals for many windows at numpy speed.

A dataset needs the records of ~200 regions from each of ~50 bigWigs: about a million
intervals, where pyBigWig's ``intervals()`` spends a microsecond building each Python tuple.
This reader follows the published UCSC bbi layout (64-byte header, chromosome B+ tree, R-tree
index of zlib-compressed data blocks holding bedGraph / varStep / fixedStep sections) and does
the per-record work in numpy: per call it reads each needed block once, parses its sections
with ``np.frombuffer`` and selects the records of every window with ``searchsorted`` and a
ragged gather. Python loops run per node, per block and per section, never per record.

Records are returned clipped to the window, zeros and equal neighbours kept, fixed/varStep
items expanded one record each: the semantics of GenVarLoader 0.43.1's track writer.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path
from types import TracebackType

import numpy as np
from isal import isal_zlib  # zlib-compatible, about twice as fast to inflate: most of the work
from numpy.typing import NDArray

from farm.errors import InputError

_BIGWIG_MAGIC = 0x888FFC26
_BIGBED_MAGIC = 0x8789F2EB
_CHROM_TREE_MAGIC = 0x78CA8C91
_RTREE_MAGIC = 0x2468ACE0

_HEADER = "IHHQQQHHQQIQ"  # magic .. extensionOffset: 64 bytes
_CHROM_TREE_HEADER = "IIIIQQ"  # magic, blockSize, keySize, valSize, itemCount, reserved
_RTREE_HEADER = "IIQIIIIQII"  # magic, blockSize, itemCount, bounds, endFileOffset, ...
_NODE_HEADER = "BBH"  # isLeaf, reserved, count
_SECTION = "IIIIIBBH"  # chromId, start, end, itemStep, itemSpan, type, reserved, itemCount

_BEDGRAPH, _VARSTEP, _FIXEDSTEP = 1, 2, 3
_MAX_DEPTH = 64  # a deeper tree has a cycle or is garbage: real trees are a few levels
_MAX_RUN = 16 << 20  # coalesce adjacent blocks into reads of at most this many bytes
_MAX_CANDIDATES = 1 << 24  # bound the ragged gather when overlapping records inflate it
_INT32_MAX = 2**31 - 1
_NO_END = np.int64(1) << 40  # a block that runs on into later chroms ends "never" on this one

Int64 = NDArray[np.int64]


class BigWig:
    """One bigWig file, opened for repeated window queries."""

    def __init__(self, path: Path) -> None:
        self._fd: int | None = None
        self.path = Path(path)
        self._by_chrom: dict[int, tuple[Int64, Int64, Int64, Int64]] = {}
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise InputError(f"bigWig file {self.path} does not exist; check the path.") from None
        except OSError as e:
            raise InputError(
                f"bigWig file {self.path} cannot be opened ({e.strerror}); check its permissions."
            ) from None
        try:
            info = os.fstat(self._fd)
            if not stat.S_ISREG(info.st_mode):  # Linux opens a directory read-only happily
                raise InputError(f"bigWig path {self.path} is not a regular file; name the file.")
            self._size = info.st_size
            self._open()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- opening

    def _open(self) -> None:
        """Read the header and the chromosome tree (the R-tree waits for the first query)."""
        head = self._pread(0, 64)
        if len(head) < 4:
            raise self._not_bigwig("it is shorter than a bigWig header")
        (magic_le,) = struct.unpack_from("<I", head)
        (magic_be,) = struct.unpack_from(">I", head)
        if _BIGWIG_MAGIC in (magic_le, magic_be):
            self._e = "<" if magic_le == _BIGWIG_MAGIC else ">"
        elif _BIGBED_MAGIC in (magic_le, magic_be):
            raise InputError(
                f"{self.path} is a bigBed file, not a bigWig; give a bigWig (.bw) file for the "
                "track, or convert it with bedGraphToBigWig."
            )
        else:
            raise self._not_bigwig("its first bytes are not the bigWig magic number")
        if len(head) < 64:
            raise self._corrupt("the header is truncated")
        e = self._e
        self._section = struct.Struct(e + _SECTION)
        self._items = {
            _BEDGRAPH: np.dtype([("s", e + "u4"), ("e", e + "u4"), ("v", e + "f4")]),
            _VARSTEP: np.dtype([("s", e + "u4"), ("v", e + "f4")]),
            _FIXEDSTEP: np.dtype(e + "f4"),
        }
        h = struct.unpack_from(e + _HEADER, head)
        chrom_tree_offset, index_offset, self._ubuf = h[3], h[5], h[10]
        self._chroms, self._chrom_ids = self._read_chrom_tree(chrom_tree_offset)
        self._index_offset = index_offset
        self._leaves_read: NDArray[np.void] | None = None

    @property
    def _leaves(self) -> NDArray[np.void]:
        """The R-tree's leaves, read at the first query: checking a request needs only the
        chromosomes, and a genome-wide file's index runs to megabytes."""
        if self._leaves_read is None:
            self._leaves_read = self._read_rtree(self._index_offset)
        return self._leaves_read

    def _read_chrom_tree(self, offset: int) -> tuple[dict[str, int], dict[str, int]]:
        """Names -> lengths in tree order (as pyBigWig lists them), and names -> chromIds."""
        e = self._e
        head = self._need(offset, 32, "the chromosome tree header")
        magic, _block, key_size, val_size, _count, _ = struct.unpack_from(
            e + _CHROM_TREE_HEADER, head
        )
        if magic != _CHROM_TREE_MAGIC or val_size < 8:
            raise self._corrupt("the chromosome tree is damaged")
        lengths: dict[str, int] = {}
        ids: dict[str, int] = {}
        stack = [(offset + 32, 0)]
        seen: set[int] = set()
        while stack:
            node, depth = stack.pop()
            if node in seen or depth > _MAX_DEPTH:
                raise self._corrupt("the chromosome tree loops")
            seen.add(node)
            is_leaf, _, count = struct.unpack_from(e + _NODE_HEADER, self._need(node, 4, "a node"))
            item = key_size + (val_size if is_leaf else 8)
            body = self._need(node + 4, count * item, "a chromosome tree node")
            rec = np.frombuffer(body, np.uint8).reshape(count, item)
            names = [bytes(k).rstrip(b"\0").decode("utf-8", "replace") for k in rec[:, :key_size]]
            if is_leaf:
                vals = np.frombuffer(rec[:, key_size : key_size + 8].tobytes(), e + "u4")
                for i, name in enumerate(names):
                    ids[name] = int(vals[2 * i])
                    lengths[name] = int(vals[2 * i + 1])
            else:
                kids = np.frombuffer(rec[:, key_size:].tobytes(), e + "u8")
                stack.extend((int(k), depth + 1) for k in kids[::-1])  # visit in file order
        return lengths, ids

    def _read_rtree(self, offset: int) -> NDArray[np.void]:
        """Every leaf of the R-tree (one per data block) as one structured array."""
        e = self._e
        head = self._need(offset, 48, "the R-tree index header")
        magic, block_size, item_count = struct.unpack_from(e + _RTREE_HEADER, head)[:3]
        if magic != _RTREE_MAGIC:
            raise self._corrupt("the R-tree index is damaged")
        bounds = [("sc", e + "u4"), ("ss", e + "u4"), ("ec", e + "u4"), ("es", e + "u4")]
        leaf_t = np.dtype([*bounds, ("off", e + "u8"), ("size", e + "u8")])
        node_t = np.dtype([*bounds, ("child", e + "u8")])
        leaves: list[NDArray[np.void]] = []
        stack = [(offset + 48, 0)]
        seen: set[int] = set()
        while stack and item_count:
            node, depth = stack.pop()
            if node in seen or depth > _MAX_DEPTH:
                raise self._corrupt("the R-tree index loops")
            seen.add(node)
            buf = self._pread(node, 4 + max(block_size, 1) * leaf_t.itemsize)
            if len(buf) < 4:
                raise self._corrupt("an R-tree node is past the end of the file")
            is_leaf, _, count = struct.unpack_from(e + _NODE_HEADER, buf)
            kind = leaf_t if is_leaf else node_t
            if len(buf) < 4 + count * kind.itemsize:
                raise self._corrupt("an R-tree node is cut short")
            items = np.frombuffer(buf, kind, count, 4)
            if is_leaf:
                leaves.append(items)
            else:
                stack.extend((int(c), depth + 1) for c in items["child"][::-1])
        out = np.concatenate(leaves) if leaves else np.zeros(0, leaf_t)
        if len(out) != item_count:
            raise self._corrupt("the R-tree index and its header disagree on the block count")
        if len(out) and int((out["off"] + out["size"]).max()) > self._size:
            raise self._corrupt("a data block runs past the end of the file")
        return out

    def _blocks_of(self, cid: int) -> tuple[Int64, Int64, Int64, Int64]:
        """This chrom's blocks sorted by start: starts, running-max ends, offsets, sizes."""
        got = self._by_chrom.get(cid)
        if got is None:
            lv = self._leaves
            sc, ec = lv["sc"].astype(np.int64), lv["ec"].astype(np.int64)
            mine = np.flatnonzero((sc <= cid) & (ec >= cid))
            bs = np.where(sc[mine] == cid, lv["ss"][mine].astype(np.int64), 0)
            be = np.where(ec[mine] == cid, lv["es"][mine].astype(np.int64), _NO_END)
            order = np.argsort(bs, kind="stable")
            got = (
                bs[order],
                np.maximum.accumulate(be[order]) if len(order) else be,
                lv["off"][mine][order].astype(np.int64),
                lv["size"][mine][order].astype(np.int64),
            )
            self._by_chrom[cid] = got
        return got

    # ----------------------------------------------------------------- queries

    @property
    def chroms(self) -> dict[str, int]:
        """Chromosome name -> length, in the file's order."""
        return dict(self._chroms)

    def intervals(
        self, chrom: str, starts: NDArray[np.integer], ends: NDArray[np.integer]
    ) -> tuple[Int64, NDArray[np.int32], NDArray[np.int32], NDArray[np.float32]]:
        """For query windows i (int64 starts/ends, any order, may overlap, may be zero-length,
        start may be negative): counts (int64, len n), then starts (int32), ends (int32),
        values (float32) of every record overlapping each window, concatenated window by window
        in the order of the queries, records within a window in file order.

        A record [s, e) is kept iff s < qe and e > qs, with qs = max(start, 0) and
        qe = min(end, chrom length) (a negative end means the chrom's length), and is written
        clipped to [qs, qe): a zero-length window at q yields (q, q, v) for each s < q < e.
        """
        if self._fd is None:
            raise ValueError(f"bigWig file {self.path} is closed")
        cid = self._chrom_ids[chrom]  # KeyError for a chrom the file lacks: callers alias
        length = self._chroms[chrom]
        if length > _INT32_MAX:
            raise InputError(
                f"bigWig file {self.path} has chrom {chrom} of {length} bp, longer than the "
                f"{_INT32_MAX} bp int32 positions can hold; split the chrom or drop the track."
            )
        qs = np.maximum(np.asarray(starts, np.int64), 0)
        qe = np.asarray(ends, np.int64)
        if qs.ndim != 1 or qe.shape != qs.shape:
            raise ValueError("starts and ends must be 1-D arrays of the same length")
        qe = np.where(qe < 0, length, np.minimum(qe, length))
        n = len(qs)
        rs, re, rv = self._records(cid, qs, qe)
        if len(rs) == 0:
            return _empty(n)

        if (re[:-1] <= rs[1:]).all() and (rs <= re).all():
            return _select_disjoint(rs, re, rv, qs, qe)
        return _select_general(rs, re, rv, qs, qe)

    def _records(self, cid: int, qs: Int64, qe: Int64) -> tuple[Int64, Int64, NDArray[np.float32]]:
        """Every record of chrom `cid` in the blocks that overlap any window, in file order."""
        bs, be_max, offs, sizes = self._blocks_of(cid)
        nb = len(bs)
        if nb == 0 or len(qs) == 0:
            return _no_records()
        lo = np.searchsorted(be_max, qs, "right")
        hi = np.searchsorted(bs, qe, "left")
        hit = hi > lo
        if not hit.any():
            return _no_records()
        cover = np.cumsum(
            np.bincount(lo[hit], minlength=nb + 1) - np.bincount(hi[hit], minlength=nb + 1)
        )
        need = np.flatnonzero(cover[:nb] > 0)
        need = need[np.argsort(offs[need], kind="stable")]  # file order
        starts: list[NDArray[np.integer]] = []
        ends: list[NDArray[np.integer]] = []
        values: list[NDArray[np.floating]] = []
        for off, block in self._read_blocks(offs[need], sizes[need]):
            self._parse_block(off, block, cid, starts, ends, values)
        if not starts:
            return _no_records()
        # concatenate first, cast after: casting inside concatenate is several times slower
        return (
            np.concatenate(starts).astype(np.int64, copy=False),
            np.concatenate(ends).astype(np.int64, copy=False),
            np.concatenate(values).astype(np.float32, copy=False),
        )

    def _read_blocks(self, offs: Int64, sizes: Int64) -> list[tuple[int, bytes | memoryview]]:
        """Each block's bytes, decompressed; adjacent blocks are read with one pread."""
        out: list[tuple[int, bytes | memoryview]] = []
        ends = offs + sizes
        breaks = np.flatnonzero(offs[1:] != ends[:-1]) + 1
        for run in np.split(np.arange(len(offs)), breaks):
            while len(run):
                # cap a run's bytes; always take at least one block
                k = max(int(np.searchsorted(ends[run] - offs[run[0]], _MAX_RUN, "right")), 1)
                part, run = run[:k], run[k:]
                base = int(offs[part[0]])
                raw = memoryview(self._pread(base, int(ends[part[-1]]) - base))
                if len(raw) != int(ends[part[-1]]) - base:
                    raise self._corrupt(f"the data block at byte {base} is cut short")
                for i in part:
                    a = int(offs[i]) - base
                    chunk = raw[a : a + int(sizes[i])]
                    if self._ubuf:
                        try:
                            chunk = isal_zlib.decompress(chunk, bufsize=self._ubuf)
                        except (zlib.error, isal_zlib.error):
                            raise self._corrupt(
                                f"the data block at byte {int(offs[i])} fails to decompress"
                            ) from None
                    out.append((int(offs[i]), chunk))
        return out

    def _parse_block(
        self,
        off: int,
        block: bytes | memoryview,
        cid: int,
        starts: list[NDArray[np.integer]],
        ends: list[NDArray[np.integer]],
        values: list[NDArray[np.floating]],
    ) -> None:
        """Append the records of every section of chrom `cid` in one decompressed block."""
        header, dtypes = self._section, self._items
        pos, size = 0, len(block)
        while pos < size:
            if pos + 24 > size:
                raise self._corrupt(f"the data block at byte {off} ends inside a section header")
            chrom, start, _end, step, span, kind, _, count = header.unpack_from(block, pos)
            pos += 24
            item = dtypes.get(kind)
            if item is None:
                raise self._corrupt(f"the data block at byte {off} holds a section of type {kind}")
            nbytes = count * item.itemsize
            if pos + nbytes > size:
                raise self._corrupt(f"the data block at byte {off} ends inside a section")
            if chrom == cid and count:
                items = np.frombuffer(block, item, count, pos)
                if kind == _BEDGRAPH:
                    starts.append(items["s"])
                    ends.append(items["e"])
                    values.append(items["v"])
                elif kind == _VARSTEP:
                    s = items["s"].astype(np.int64)
                    starts.append(s)
                    ends.append(s + span)
                    values.append(items["v"])
                else:
                    s = start + np.arange(count, dtype=np.int64) * step
                    starts.append(s)
                    ends.append(s + span)
                    values.append(items)
            pos += nbytes

    # ----------------------------------------------------------------- plumbing

    def _pread(self, offset: int, n: int) -> bytes:
        """Up to n bytes at offset (fewer at the end of the file); pread keeps threads apart."""
        if self._fd is None:
            raise ValueError(f"bigWig file {self.path} is closed")
        n = min(n, self._size - offset)  # a garbage size field must not allocate gigabytes
        if offset < 0 or n <= 0:
            return b""
        try:
            return os.pread(self._fd, n, offset)
        except OSError as err:
            raise InputError(
                f"bigWig file {self.path} cannot be read ({err.strerror}); check the disk or the "
                "file system it is on."
            ) from None

    def _need(self, offset: int, n: int, what: str) -> bytes:
        """Exactly n bytes at offset, or an InputError saying the file is truncated."""
        buf = self._pread(offset, n)
        if len(buf) != n:
            raise self._corrupt(f"{what} at byte {offset} is past the end of the file")
        return buf

    def _corrupt(self, why: str) -> InputError:
        return InputError(
            f"bigWig file {self.path} is truncated or corrupt ({why}); re-create or re-download it."
        )

    def _not_bigwig(self, why: str) -> InputError:
        return InputError(
            f"{self.path} is not a bigWig file ({why}); give a bigWig (.bw) file for the track."
        )

    def close(self) -> None:
        """Release the file descriptor; further queries raise ValueError."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> BigWig:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BigWig({str(self.path)!r})"


def _select_disjoint(
    rs: Int64, re: Int64, rv: NDArray[np.float32], qs: Int64, qe: Int64
) -> tuple[Int64, NDArray[np.int32], NDArray[np.int32], NDArray[np.float32]]:
    """Sorted, non-overlapping records (what writers produce): each window takes one slice,
    and only its first record can start before qs, only its last end after qe."""
    lo = np.searchsorted(re, qs, "right")  # first record ending after qs
    counts = np.maximum(np.searchsorted(rs, qe, "left") - lo, 0)  # up to the first at/after qe
    p = ragged_index(lo, counts)
    out_s = rs.astype(np.int32)[p]
    out_e = re.astype(np.int32)[p]
    full = np.flatnonzero(counts)
    last = np.cumsum(counts)[full] - 1
    first = last - counts[full] + 1
    out_s[first] = np.maximum(out_s[first], qs[full])
    out_e[last] = np.minimum(out_e[last], qe[full])
    return counts, out_s, out_e, rv[p]


def _select_general(
    rs: Int64, re: Int64, rv: NDArray[np.float32], qs: Int64, qe: Int64
) -> tuple[Int64, NDArray[np.int32], NDArray[np.int32], NDArray[np.float32]]:
    """Any records, overlapping or out of order: gather candidates, filter, restore file order."""
    n = len(qs)
    order: Int64 | None = None
    if (rs[1:] < rs[:-1]).any():  # starts out of order: select in sorted order, restore later
        order = np.argsort(rs, kind="stable")
        ss, se = rs[order], re[order]
    else:
        ss, se = rs, re
    # Records before `lo` all end at or before qs (running max of ends); records from `hi` on
    # start at or after qe. Between them, a record hidden by an earlier, longer one may not match.
    lo = np.searchsorted(np.maximum.accumulate(se), qs, "right")
    cand = np.maximum(np.searchsorted(ss, qe, "left") - lo, 0)
    counts = np.zeros(n, np.int64)
    parts: list[tuple[Int64, Int64]] = []
    for a, b in _groups(cand):
        w = np.repeat(np.arange(a, b, dtype=np.int64), cand[a:b])
        p = ragged_index(lo[a:b], cand[a:b])
        keep = se[p] > qs[w]  # p < hi already gives ss[p] < qe[w]
        w, p = w[keep], p[keep]
        idx = p if order is None else order[p]
        if order is not None:  # back to file order within each window
            resort = np.lexsort((idx, w))
            w, idx = w[resort], idx[resort]
        counts[a:b] = np.bincount(w - a, minlength=b - a)
        parts.append((w, idx))
    w = np.concatenate([x for x, _ in parts])
    idx = np.concatenate([y for _, y in parts])
    out_s = np.maximum(rs[idx], qs[w]).astype(np.int32)
    out_e = np.minimum(re[idx], qe[w]).astype(np.int32)
    return counts, out_s, out_e, rv[idx]


def _groups(cand: Int64) -> list[tuple[int, int]]:
    """Split windows into runs whose candidate records fit in _MAX_CANDIDATES (at least one)."""
    n = len(cand)
    total = int(cand.sum())
    if total <= _MAX_CANDIDATES:
        return [(0, n)]
    csum = np.cumsum(cand)
    out: list[tuple[int, int]] = []
    a = 0
    while a < n:
        base = int(csum[a - 1]) if a else 0
        b = max(int(np.searchsorted(csum, base + _MAX_CANDIDATES, "right")), a + 1)
        out.append((a, b))
        a = b
    return out


def ragged_index(lo: Int64, cnt: Int64) -> Int64:
    """The concatenated ranges [lo_i, lo_i + cnt_i), without a Python loop."""
    first = np.cumsum(cnt) - cnt  # where each window's run begins in the output
    return np.arange(int(cnt.sum()), dtype=np.int64) + np.repeat(lo - first, cnt)


def _no_records() -> tuple[Int64, Int64, NDArray[np.float32]]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def _empty(n: int) -> tuple[Int64, NDArray[np.int32], NDArray[np.int32], NDArray[np.float32]]:
    return (
        np.zeros(n, np.int64),
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
        np.zeros(0, np.float32),
    )
