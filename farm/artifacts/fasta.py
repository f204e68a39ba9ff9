"""Stream a FASTA file (plain, bgzipped or plain-gzipped) as upper-cased contig sequence.

One pass, bounded memory: the file is read in fixed-size blocks and each run of sequence is
cleaned by two C-speed passes, ``bytes.translate`` (upper-case; every byte htslib would drop
becomes ``\\n``) then ``bytes.replace(b"\\n", b"")`` (a memchr/memcpy loop). That pair runs at
~1.7 GB/s where a single ``translate`` with a delete set manages ~1.2 GB/s, because the delete
set costs a branch per byte. No ``.fai`` is needed (it is a random-access index, and we read
sequentially), which is also why a plain-gzip FASTA, which htslib cannot index, is supported.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from farm.errors import InputError

# 4 MiB blocks keep translate's output in L2/L3 for the replace that follows; larger blocks
# are no faster and every block in flight costs memory (see the memory test).
BLOCK_SIZE = 4 << 20
_GZIP_MAGIC = b"\x1f\x8b"
# A bgzip file ends with this empty block; without it the file was cut at a block boundary,
# which the gzip format itself cannot notice.
_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
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


def _is_bgzf_truncated(path: Path) -> bool:
    """True for a BGZF file (gzip with the 'BC' extra field) that lacks its EOF block."""
    with open(path, "rb") as f:
        head = f.read(16)
        if not (head[3:4] == b"\x04" and head[12:14] == b"BC"):
            return False  # plain gzip: the gzip reader's own checks are all there is
        size = os.fstat(f.fileno()).st_size
        if size < len(_BGZF_EOF):
            return True
        f.seek(size - len(_BGZF_EOF))
        return f.read() != _BGZF_EOF


def _open(path: Path) -> BinaryIO:
    try:
        if is_gzip(path):
            if _is_bgzf_truncated(path):
                raise InputError(
                    f"FASTA file {path} is a truncated bgzip file (its end-of-file block is "
                    "missing); re-download it or recompress it with bgzip."
                )
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
        return self.contigs


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
