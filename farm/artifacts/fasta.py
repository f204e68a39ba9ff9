"""Stream a FASTA file (plain, bgzipped or plain-gzipped) as upper-cased contig sequence.

One pass, bounded memory: the file is read in fixed-size blocks and each run of sequence is
cleaned by two C-speed passes, ``bytes.translate`` (upper-case; every byte htslib would drop
becomes ``\\n``) then ``bytes.replace(b"\\n", b"")`` (a memchr/memcpy loop). That pair runs at
~1.7 GB/s where a single ``translate`` with a delete set manages ~1.2 GB/s, because the delete
set costs a branch per byte. No ``.fai`` is needed (it is a random-access index, and we read
sequentially), which is also why a plain-gzip FASTA, which htslib cannot index, is supported.

A FASTA with fixed-width lines (plain, the layout from a trustworthy ``.fai`` or from
:func:`infer_layout`; or BGZF, from a trustworthy ``.fai``) can instead take
:func:`copy_fixed_width`, which builds fixed output chunks on as many threads as pay (below);
the streaming reader stays the reference, and the fast path hands back to it at the first byte
that does not fit.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import gzip
import mmap
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from farm.artifacts.adaptive import run_adaptive
from farm.artifacts.bgzf import Bgzf, BgzfError, BgzfReader, Blocks, bgzf_state
from farm.errors import InputError

# 4 MiB blocks keep translate's output in L2/L3 for the replace that follows; larger blocks
# are no faster and every block in flight costs memory (see the memory test).
BLOCK_SIZE = 4 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_NL = 0x0A


def _clean_table() -> bytes:
    """htslib keeps only isgraph() bytes of a sequence line (0x21-0x7e) and we upper-case
    letters; everything else maps to ``\\n`` so one ``replace`` removes it."""
    table = bytearray(b"\n" * 256)
    for c in range(0x21, 0x7F):
        table[c] = c - 32 if ord("a") <= c <= ord("z") else c
    return bytes(table)


_CLEAN = _clean_table()

Sink = Callable[[bytes], object]


def clean(raw: bytes) -> bytes:
    """Sequence bytes as GenVarLoader stores them: non-graphic bytes dropped, upper-cased."""
    return raw.translate(_CLEAN).replace(b"\n", b"")


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _open(path: Path) -> BinaryIO:
    try:
        if is_gzip(path):
            state = bgzf_state(path)
            if state is Bgzf.TRUNCATED:
                raise InputError(
                    f"FASTA file {path} is a truncated bgzip file (its end-of-file block is "
                    "missing); re-download it or recompress it with bgzip."
                )
            if state is Bgzf.COMPLETE:
                # independent blocks: inflated on the cores, as many as pay (BgzfReader)
                with contextlib.suppress(BgzfError):  # not all BGZF: gzip reads it
                    return BgzfReader(path)  # type: ignore[return-value]
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb", buffering=0)
    except FileNotFoundError as e:
        raise InputError(f"FASTA file {path} does not exist; check the path.") from e
    except IsADirectoryError as e:
        raise InputError(f"{path} is a directory, not a FASTA file; name the FASTA file.") from e
    except PermissionError as e:
        raise InputError(f"Cannot read FASTA file {path}: permission denied.") from e


class _Parser:
    """State carried across blocks: are we inside a header, and did the last block end a line."""

    def __init__(self, path: Path, sink: Sink) -> None:
        self.path = path
        self.sink = sink
        self.contigs: dict[str, int] = {}
        self.name: str | None = None
        self.header = bytearray()
        self.in_header = False
        self.at_line_start = True
        self.started = False

    def feed(self, block: bytes) -> None:
        pos = 0
        n = len(block)
        if not self.started:
            stripped = block.lstrip()
            if not stripped:
                return
            if stripped[:1] != b">":
                raise InputError(_not_fasta(self.path))
            self.started = True
            pos = n - len(stripped)
        while pos < n:
            if self.in_header:
                nl = block.find(b"\n", pos)
                end = n if nl < 0 else nl
                self.header += block[pos:end]
                if nl < 0:
                    return
                self._end_header()
                pos = nl + 1
                continue
            gt = block.find(b">", pos)
            end = n if gt < 0 else gt
            if gt >= 0 and not (block[gt - 1] == _NL if gt > pos else self.at_line_start):
                raise InputError(_not_fasta(self.path, "a '>' in the middle of a line"))
            if end > pos:
                # A whole block of sequence (the common case) is cleaned without a slice copy.
                seq = clean(block if (pos == 0 and end == n) else block[pos:end])
                if seq:
                    if self.name is None:  # pragma: no cover - started implies a header first
                        raise InputError(_not_fasta(self.path))
                    self.contigs[self.name] += len(seq)
                    self.sink(seq)
                self.at_line_start = block[end - 1] == _NL
            if gt < 0:
                return
            self.in_header = True
            pos = gt + 1

    def _end_header(self) -> None:
        name = _contig_name(self.path, self.header, self.contigs)
        self.contigs[name] = 0
        self.name = name
        self.header.clear()
        self.in_header = False
        self.at_line_start = True

    def finish(self) -> dict[str, int]:
        if self.in_header:
            self._end_header()  # a last header with no newline (and so no sequence)
        if not self.started:
            raise InputError(
                f"FASTA file {self.path} is empty; point at a FASTA with at least one contig."
            )
        # htslib leaves a contig with no sequence out of its index, so GenVarLoader never
        # lists one; dropping it here keeps the metadata identical to GenVarLoader's.
        return {name: length for name, length in self.contigs.items() if length}


def stream_contigs(path: Path, sink: Sink, *, block_size: int = BLOCK_SIZE) -> dict[str, int]:
    """Feed every contig's sequence, in file order, to ``sink``; return ``{name: length}``.

    ``sink`` receives fresh ``bytes`` it may keep (they are never reused). Raises
    :class:`InputError` for a file that is empty, is not FASTA, is a truncated or corrupt
    gzip stream, or repeats a contig name.
    """
    parser = _Parser(path, sink)
    try:
        with _open(path) as f:
            while block := f.read(block_size):
                parser.feed(block)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputError(
            f"FASTA file {path} is a truncated or corrupt gzip stream ({e}); "
            "re-download it or recompress it with bgzip."
        ) from e
    except UnicodeDecodeError as e:
        raise InputError(_not_fasta(path, "its headers are not text")) from e
    return parser.finish()


def _contig_name(path: Path, header: bytearray, seen: dict[str, int]) -> str:
    fields = bytes(header).decode("utf-8").split(maxsplit=1)
    if not fields:
        raise InputError(f"FASTA file {path} has a header line with no contig name; name it.")
    name = fields[0]
    if name in seen:
        raise InputError(
            f"FASTA file {path} has the contig name {name!r} twice; contig names must be unique."
        )
    return name


def _not_fasta(path: Path, why: str = "it does not start with '>'") -> str:
    return f"{path} is not a FASTA file ({why}); point at a FASTA or bgzipped FASTA file."


# --- fixed-width fast path ------------------------------------------------------------------
#
# A FASTA with a trustworthy ``.fai`` has fixed-width lines, so every output byte's input
# position is known: sequence can be copied out of a (lines, width) view with numpy, whose
# copies and ufuncs release the GIL. Fixed output chunks can then be built by several threads
# at once, each reading, cleaning, checking and writing its own slice with pread/pwrite. Any
# byte that does not fit the layout the index promises aborts the fast path (NotFixedWidth)
# and the caller falls back to the streaming reader, which is the reference behaviour.


class NotFixedWidth(Exception):  # control flow: the caller falls back to streaming
    """The file does not match its ``.fai`` layout; use :func:`stream_contigs`."""


@dataclass(frozen=True)
class FaiRecord:
    name: str
    length: int
    offset: int
    line_bases: int
    line_width: int

    @property
    def end(self) -> int:
        """Input position just after the contig's last sequence byte."""
        if self.length == 0:
            return self.offset
        last = (self.length - 1) // self.line_bases
        return self.offset + last * self.line_width + self.length - last * self.line_bases


def read_fai(fasta: Path) -> list[FaiRecord] | None:
    """The records of ``FASTA.fai`` when it is at least as new as the FASTA, else None."""
    fai = fasta.with_name(fasta.name + ".fai")
    try:
        if fai.stat().st_mtime < fasta.stat().st_mtime:
            return None
        records = []
        for line in fai.read_text().splitlines():
            name, length, offset, bases, width = line.split("\t")[:5]
            records.append(FaiRecord(name, int(length), int(offset), int(bases), int(width)))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not records or len({r.name for r in records}) != len(records):
        return None
    return records


def infer_layout(fasta: Path) -> list[FaiRecord] | None:
    """The index a plain FASTA would have if its lines are fixed-width, found without one.

    One memchr-speed scan for line-initial '>' gives the contigs; each contig's first line
    gives its widths and its extent gives its length. Nothing here is trusted:
    :func:`copy_fixed_width` checks every line end against these records and hands back to
    the streaming reader at the first mismatch. None when the file is clearly not a
    candidate (empty, not starting with '>', a repeated name).
    """
    try:
        with open(fasta, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _scan_layout(mm)
    except (OSError, ValueError):  # ValueError: mmap of an empty file
        return None


def _scan_layout(mm: mmap.mmap) -> list[FaiRecord] | None:
    size = len(mm)
    gt = mm.find(b">")
    if gt < 0 or mm[:gt].strip():
        return None
    records: list[FaiRecord] = []
    while gt >= 0:
        header_end = mm.find(b"\n", gt)
        if header_end < 0:
            break  # a last header with no sequence
        tokens = mm[gt + 1 : header_end].split(maxsplit=1)
        gt = _next_header(mm, header_end)
        region_end = size if gt < 0 else gt
        offset = header_end + 1
        tail_start = max(offset, region_end - 4096)
        end = tail_start + len(mm[tail_start:region_end].rstrip())
        if not tokens or end == offset:
            continue  # no name (streaming says so) or no sequence (htslib skips it)
        first_nl = mm.find(b"\n", offset, region_end)
        width = (region_end if first_nl < 0 else first_nl + 1) - offset
        bases = width - (2 if mm[offset + width - 2 : offset + width] == b"\r\n" else 1)
        full, rest = divmod(end - offset, width)
        if bases <= 0 or rest > bases:
            return None
        records.append(FaiRecord(tokens[0].decode(), full * bases + rest, offset, bases, width))
    if not records or len({r.name for r in records}) != len(records):
        return None
    return records


def _next_header(mm: mmap.mmap, pos: int) -> int:
    """Position of the next '>' that starts a line, or -1. A one-byte find is memchr (~10 GB/s);
    finding b"\\n>" goes through the two-byte search, eight times slower on a genome."""
    while (gt := mm.find(b">", pos)) > 0 and mm[gt - 1] != 0x0A:
        pos = gt + 1  # a '>' inside a line: not a header (the layout check will refuse it)
    return gt


class Source(Protocol):
    """A FASTA's text by position: a plain file's bytes, or a BGZF file's inflated text."""

    size: int

    def read_into(self, start: int, out: memoryview) -> int:
        """Bytes from ``start`` into ``out`` (fewer only at the end); how many."""
        ...

    def prefetch(self, start: int, end: int) -> None:
        """Text ``[start, end)`` will be read soon: have the disk start on it now."""
        ...


def _will_need(fd: int, start: int, end: int) -> None:
    """Start reading ahead: chunks read by several threads from one descriptor are not the
    one sequential stream the kernel's readahead looks for. (On the 2-core test machine a
    cold genome built in 4.6-6.0 s with it, 4.8-7.8 s without: within its noise.)"""
    with contextlib.suppress(OSError, AttributeError):  # advice only
        os.posix_fadvise(fd, start, max(0, end - start), os.POSIX_FADV_WILLNEED)


class _PlainSource:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.size = os.fstat(fd).st_size

    def read_into(self, start: int, out: memoryview) -> int:
        got = 0
        while got < len(out) and (n := os.preadv(self._fd, [out[got:]], start + got)):
            got += n
        return got

    def prefetch(self, start: int, end: int) -> None:
        _will_need(self._fd, start, end)


class _BgzfSource:
    """Inflates just the blocks a chunk needs, in the thread that asks (every core at once).
    A block that is not what the index says is NotFixedWidth: the streaming reader then
    reads the file and says what is wrong with it."""

    def __init__(self, blocks: Blocks) -> None:
        self._blocks = blocks
        self.size = blocks.text_size

    def read_into(self, start: int, out: memoryview) -> int:
        try:
            return self._blocks.read_into(start, out)
        except BgzfError as e:
            raise NotFixedWidth(str(e)) from e

    def prefetch(self, start: int, end: int) -> None:
        c0, c1 = self._blocks.compressed_span(start, end)
        _will_need(self._blocks.fd, c0, c1)


@contextlib.contextmanager
def open_source(path: Path) -> Iterator[Source]:
    """The text of a plain FASTA, or of a whole BGZF one (its blocks found from its ``.gzi``
    when that is newer than the file, else walked); NotFixedWidth for any other gzip."""
    if is_gzip(path):
        if bgzf_state(path) is not Bgzf.COMPLETE:
            raise NotFixedWidth("not a complete BGZF file")
        try:
            blocks = Blocks(path, use_gzi=True)
        except BgzfError as e:
            raise NotFixedWidth(str(e)) from e
        try:
            yield _BgzfSource(blocks)
        finally:
            blocks.close()
        return
    with open(path, "rb", buffering=0) as f:
        yield _PlainSource(f.fileno())


def _check_layout(source: Source, records: list[FaiRecord], size: int) -> None:
    """Headers, gaps and line widths exactly as the index says, or NotFixedWidth."""
    prev_end = 0
    names = {r.name.encode() for r in records}
    for r in records:
        if not (r.length > 0 and r.line_bases > 0 and r.line_width - r.line_bases in (1, 2)):
            raise NotFixedWidth(r.name)
        gap = _pread_small(source, prev_end, r.offset)
        if not gap.endswith(b"\n"):
            raise NotFixedWidth(r.name)
        # Between two contigs: blank lines, then headers. All but the last are contigs with
        # no sequence, which htslib leaves out of the index; their names must still be new.
        lines = [line for line in gap.split(b"\n") if line.strip()]
        if not lines or not all(line.startswith(b">") for line in lines):
            raise NotFixedWidth(r.name)
        tokens = [line[1:].split(maxsplit=1)[:1] for line in lines]
        if [] in tokens or tokens[-1][0] != r.name.encode():
            raise NotFixedWidth(r.name)
        empty = [t[0] for t in tokens[:-1]]
        if len(set(empty)) != len(empty) or names.intersection(empty):
            raise NotFixedWidth(r.name)
        names.update(empty)
        prev_end = r.end
    if _pread_small(source, prev_end, size).strip() or prev_end > size:
        raise NotFixedWidth("trailing bytes")


def _pread_small(source: Source, start: int, end: int) -> bytes:
    if end < start or end - start > 1 << 16:
        raise NotFixedWidth("gap")
    buf = bytearray(end - start)
    return bytes(buf[: source.read_into(start, memoryview(buf))])


class _Scratch(threading.local):
    """Per-thread buffers, reused across chunks so no chunk allocates (or page-faults)."""

    def __init__(self) -> None:
        self.raw = np.empty(0, np.uint8)
        self.compact = np.empty(0, np.uint8)
        self.out = np.empty(0, np.uint8)
        self.mask = np.empty(0, np.bool_)

    @staticmethod
    def grow(arr: np.ndarray, n: int) -> np.ndarray:
        return arr if arr.size >= n else np.empty(max(n, arr.size * 2), arr.dtype)

    @staticmethod
    def grow_aligned(arr: np.ndarray, n: int) -> np.ndarray:
        """Page-aligned memory (an anonymous map), as a direct write needs."""
        if arr.size >= n:
            return arr
        return np.frombuffer(mmap.mmap(-1, max(n, arr.size * 2)), np.uint8)


_PAGE = 4096
_LOOKAHEAD = 4  # chunks whose input is read ahead of the one being built


def _text_at(records: list[FaiRecord], starts: list[int], p: int) -> int:
    """Where in the text output byte ``p`` comes from."""
    i = bisect.bisect_right(starts, p) - 1
    r, q = records[i], p - starts[i]
    return r.offset + q // r.line_bases * r.line_width + q % r.line_bases


def _direct_fd(out_fd: int) -> int | None:
    """A second descriptor of the output that writes past the page cache (O_DIRECT), or
    None where the system or the filesystem has none (tmpfs, some FUSE).

    Why: the farm fsyncs a cache before it publishes it, so the disk bounds a build either
    way. Through the page cache the disk starts late (writeback) and the build first pays
    for faulting in a page for every byte (3 GB of them for a human genome: half the build
    on the 2-core test machine); written direct, each chunk goes to the disk from a buffer
    reused by its thread, while the next chunks are built. The cache is then not in the page
    cache for the next reader, and it evicts nobody else's pages either.
    """
    flag = getattr(os, "O_DIRECT", 0)
    if not flag or not os.path.exists(f"/proc/self/fd/{out_fd}"):
        return None
    try:
        return os.open(f"/proc/self/fd/{out_fd}", os.O_WRONLY | flag)
    except OSError:
        return None


def _copy_segment(
    source: Source, r: FaiRecord, q0: int, q1: int, dest: np.ndarray, s: _Scratch
) -> None:
    """Contig bases [q0, q1) into ``dest``, checking every line end they cross."""
    lb, lw = r.line_bases, r.line_width
    l0, l1 = q0 // lb, (q1 - 1) // lb + 1
    start, nbytes = r.offset + l0 * lw, (l1 - l0) * lw
    s.raw = s.grow(s.raw, nbytes)
    raw = s.raw[:nbytes]
    got = source.read_into(start, memoryview(raw))
    needed = (q1 - 1) // lb * lw + (q1 - 1) % lb + 1 - l0 * lw
    if got < needed:
        raise NotFixedWidth(r.name)
    lines = raw.reshape(l1 - l0, lw)
    with_end = min(l1, (r.length - 1) // lb) - l0  # lines here that are not the contig's last
    if with_end > 0:
        ends = lines[:with_end, lb:]
        if lw - lb == 1:
            ok = bool((ends == 0x0A).all())
        else:
            ok = bool((ends[:, 0] == 0x0D).all() and (ends[:, 1] == 0x0A).all())
        if not ok:
            raise NotFixedWidth(r.name)
    # Whole lines go straight into dest through a 2-D view; only the partial first and last
    # lines are copied piecewise.
    head, pos = q0 - l0 * lb, 0
    first = 1 if head else 0
    if head:
        take = min(lb - head, q1 - q0)
        dest[:take] = lines[0, head : head + take]
        pos = take
    full = (q1 - q0 - pos) // lb
    if full:
        np.copyto(dest[pos : pos + full * lb].reshape(full, lb), lines[first : first + full, :lb])
        pos += full * lb
    if pos < q1 - q0:
        dest[pos:] = lines[first + full, : q1 - q0 - pos]


def _upper_and_check(v: np.ndarray, s: _Scratch) -> None:
    """Upper-case in place; NotFixedWidth for any byte htslib would drop, or a '>'."""
    s.mask = s.grow(s.mask, v.size)
    s.compact = s.grow(s.compact, v.size)
    mask, tmp = s.mask[: v.size], s.compact[: v.size]
    # uint8 scalars keep every ufunc on its SIMD uint8 loop (a left shift, or a Python int
    # operand, takes a slow path: 4 GB/s instead of 40).
    np.subtract(v, np.uint8(ord("a")), out=tmp)  # wraps: a..z become 0..25, all else >= 26
    np.less(tmp, np.uint8(26), out=mask)
    np.multiply(mask.view(np.uint8), np.uint8(32), out=tmp)
    np.subtract(v, tmp, out=v)
    if v.size and (v.min() < 0x21 or v.max() > 0x7E or np.any(v == ord(">"))):
        raise NotFixedWidth("bytes outside the fixed layout")


def copy_fixed_width(
    path: Path,
    records: list[FaiRecord],
    out_fd: int,
    *,
    chunk_size: int,
    on_chunk: Callable[[int, memoryview], object],
    threads: int = 2,
) -> dict[str, int]:
    """Write the cleaned sequence of a fixed-width FASTA, plain or BGZF, to ``out_fd``.

    Output chunks are built on up to ``threads`` threads, as many as measurably pay
    (:func:`~farm.artifacts.adaptive.run_adaptive`). ``on_chunk(k, bytes)`` sees output
    chunk ``k`` (bytes ``[k*chunk_size, ...)``) once, from a worker thread, before it is
    written. Raises NotFixedWidth (nothing useful written) when the file departs from its
    index, or is a gzip file that is not whole BGZF.
    """
    with open_source(path) as source:
        _check_layout(source, records, source.size)
        starts = np.cumsum([0] + [r.length for r in records]).tolist()
        total = starts[-1]
        os.ftruncate(out_fd, total)
        scratch = _Scratch()
        opened = _direct_fd(out_fd) if chunk_size % _PAGE == 0 else None
        direct = [opened]  # None once a direct write is refused

        def write(view: memoryview, at: int) -> None:
            fd = direct[0]
            if fd is not None and at % _PAGE == 0 and len(view) % _PAGE == 0:
                try:
                    done = 0
                    while done < len(view):
                        done += os.pwrite(fd, view[done:], at + done)
                    return
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    direct[0] = None  # alignment this filesystem refuses: write buffered
            done = 0
            while done < len(view):
                done += os.pwrite(out_fd, view[done:], at + done)

        n_chunks = -(-total // chunk_size)

        def prefetch(k: int) -> None:
            if k < n_chunks:
                a, b = k * chunk_size, min(total, (k + 1) * chunk_size)
                source.prefetch(_text_at(records, starts, a), _text_at(records, starts, b - 1))

        def build_chunk(k: int) -> None:
            for ahead in range(1, _LOOKAHEAD + 1) if k == 0 else (_LOOKAHEAD,):
                prefetch(k + ahead)
            a, b = k * chunk_size, min(total, (k + 1) * chunk_size)
            scratch.out = scratch.grow_aligned(scratch.out, b - a)
            out = scratch.out[: b - a]
            i = bisect.bisect_right(starts, a) - 1
            pos = a
            while pos < b:
                r, base = records[i], starts[i]
                q1 = min(b, base + r.length) - base
                if q1 > pos - base:
                    _copy_segment(source, r, pos - base, q1, out[pos - a : q1 + base - a], scratch)
                pos = base + max(q1, pos - base)
                i += 1
            _upper_and_check(out, scratch)
            view = memoryview(out)
            on_chunk(k, view)
            write(view, a)

        try:
            run_adaptive(n_chunks, build_chunk, threads)
        finally:
            if opened is not None:
                os.close(opened)
    return {r.name: r.length for r in records}
