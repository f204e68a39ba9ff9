"""Stream a FASTA file (plain, bgzipped or plain-gzipped) as upper-cased contig sequence.

One pass, bounded memory: the file is read in fixed-size blocks, line breaks and blanks are
dropped and letters upper-cased by one ``bytes.translate`` per block, and the result is handed
to a sink. No ``.fai`` is needed (it is a random-access index, and we read sequentially), which
is also why a plain-gzip FASTA, which htslib cannot index, is supported here.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from pathlib import Path

from farm.errors import InputError

BLOCK_SIZE = 8 << 20
_GZIP_MAGIC = b"\x1f\x8b"
# htslib keeps only isgraph() bytes of sequence lines; whitespace goes, letters are upper-cased.
_UPPER = bytes.maketrans(
    bytes(range(ord("a"), ord("z") + 1)), bytes(range(ord("A"), ord("Z") + 1))
)
_DROP = b"\n\r\t\v\f "

Sink = Callable[[bytes], object]


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _open(path: Path):
    try:
        if is_gzip(path):
            return gzip.open(path, "rb")
        return open(path, "rb")
    except FileNotFoundError as e:
        raise InputError(f"FASTA file {path} does not exist; check the path.") from e
    except IsADirectoryError as e:
        raise InputError(f"{path} is a directory, not a FASTA file; name the FASTA file.") from e
    except PermissionError as e:
        raise InputError(f"Cannot read FASTA file {path}: permission denied.") from e


def stream_contigs(path: Path, sink: Sink, *, block_size: int = BLOCK_SIZE) -> dict[str, int]:
    """Feed every contig's sequence, in file order, to ``sink``; return ``{name: length}``.

    Raises :class:`InputError` for a file that is empty, is not FASTA, is a truncated or
    corrupt gzip stream, or repeats a contig name.
    """
    contigs: dict[str, int] = {}
    name: str | None = None
    header = bytearray()
    in_header = False
    at_line_start = True
    started = False
    try:
        with _open(path) as f:
            while block := f.read(block_size):
                pos = 0
                if not started:
                    stripped = block.lstrip()
                    if not stripped:
                        continue
                    if stripped[:1] != b">":
                        raise InputError(_not_fasta(path))
                    started = True
                    pos = len(block) - len(stripped)
                n = len(block)
                while pos < n:
                    if in_header:
                        nl = block.find(b"\n", pos)
                        end = n if nl < 0 else nl
                        header += block[pos:end]
                        pos = end
                        if nl < 0:
                            break
                        name = _contig_name(path, header, contigs)
                        contigs[name] = 0
                        header.clear()
                        in_header = False
                        at_line_start = True
                        pos = nl + 1
                        continue
                    gt = block.find(b">", pos)
                    if gt >= 0 and not (block[gt - 1] == 0x0A if gt > 0 else at_line_start):
                        raise InputError(_not_fasta(path, "a '>' in the middle of a line"))
                    end = n if gt < 0 else gt
                    if end > pos:
                        seq = block[pos:end].translate(_UPPER, _DROP)
                        if seq:
                            assert name is not None
                            contigs[name] += len(seq)
                            sink(seq)
                        at_line_start = block[end - 1] == 0x0A
                    if gt < 0:
                        break
                    in_header = True
                    pos = gt + 1
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputError(
            f"FASTA file {path} is a truncated or corrupt gzip stream ({e}); "
            "re-download or recompress it with bgzip."
        ) from e
    except UnicodeDecodeError as e:
        raise InputError(_not_fasta(path, "its headers are not text")) from e
    if in_header and header:
        contigs[_contig_name(path, header, contigs)] = 0
    if not started:
        raise InputError(f"FASTA file {path} is empty; point at a FASTA with at least one contig.")
    return contigs


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
