"""A GRCh38-size synthetic genome for the lab-scale cache benchmark.

The 25 primary contigs of GRCh38 at their real lengths (chr1..22, X, Y, M: 3,088,286,401 bp),
in 60-column lines, with what makes a real reference more than random letters:

- soft-masking: lower-case runs (repeats) covering about half the sequence, run lengths
  geometric with a mean of 400 bp, as RepeatMasker's Alu/L1 mix gives;
- N gaps: 10 kb telomeres at both ends, one 0.5-3 Mb centromere-like run per chromosome, the
  short arms of the acrocentric chromosomes (13, 14, 15, 21, 22), chrY's heterochromatin
  (about 30 Mb), and a few 50 kb gaps per chromosome: about 4.6 % N (GRCh38: about 5 %);
- headers with a description after the name (``>chr1 LN:248956422 AS:GRCh38-synthetic``).

Written plain (``genome.fa`` + ``.fai``) and bgzipped (``genome.fa.gz`` + ``.fai`` + ``.gzi``,
as ``bgzip -i`` and ``samtools faidx`` make them), in one pass: bases are sliced from a random
pool at random offsets (deflate's 32 KiB window cannot see the repeats, so the compressed size
is a random sequence's), and the BGZF blocks are deflated on every core with isal. ``scale``
shrinks every contig for a quick run.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from isal import isal_zlib

# GRCh38 primary assembly (GCA_000001405.15), UCSC names.
GRCH38 = {
    "chr1": 248_956_422,
    "chr2": 242_193_529,
    "chr3": 198_295_559,
    "chr4": 190_214_555,
    "chr5": 181_538_259,
    "chr6": 170_805_979,
    "chr7": 159_345_973,
    "chr8": 145_138_636,
    "chr9": 138_394_717,
    "chr10": 133_797_422,
    "chr11": 135_086_622,
    "chr12": 133_275_309,
    "chr13": 114_364_328,
    "chr14": 107_043_718,
    "chr15": 101_991_189,
    "chr16": 90_338_345,
    "chr17": 83_257_441,
    "chr18": 80_373_285,
    "chr19": 58_617_616,
    "chr20": 64_444_167,
    "chr21": 46_709_983,
    "chr22": 50_818_468,
    "chrX": 156_040_895,
    "chrY": 57_227_415,
    "chrM": 16_569,
}
# N-only short arms of the acrocentric chromosomes, and chrY's heterochromatin (start, end)
_ARMS = {"chr13": 16_000_000, "chr14": 16_000_000, "chr15": 17_000_000, "chr21": 5_010_000}
_ARMS["chr22"] = 10_510_000
_Y_HET = (26_673_214, 56_673_214)

LINE = 60
_CHUNK = LINE * (1 << 20)  # bases generated at once (63 MB)
_POOL = 1 << 26
_BLOCK = 65_280  # bytes of text per BGZF block, as bgzip
_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
_HEADER = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00"


def contig_lengths(scale: float = 1.0) -> dict[str, int]:
    return {name: max(LINE + 7, int(n * scale)) for name, n in GRCH38.items()}


def gaps(name: str, length: int, scale: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """N runs of one contig, as (start, end) in contig coordinates."""
    if name == "chrM":
        return []
    tel = max(1, int(10_000 * scale))
    out = [(0, tel), (length - tel, length)]
    if name in _ARMS:
        out.append((tel, int(_ARMS[name] * scale)))
    else:
        mid = int(length * rng.uniform(0.3, 0.5))
        out.append((mid, mid + int(rng.uniform(0.5e6, 3e6) * scale)))
    if name == "chrY":
        out.append((int(_Y_HET[0] * scale), int(_Y_HET[1] * scale)))
    for at in rng.integers(0, length, 4):
        out.append((int(at), int(at) + int(50_000 * scale)))
    return [(max(0, a), min(length, b)) for a, b in out if b > a]


def _pools(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Upper-case bases, and a 0/32 case mask in geometric runs (mean 400 bp each way)."""
    bases = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, _POOL + _CHUNK, np.uint8)]
    runs = rng.geometric(1 / 400, (_POOL + _CHUNK) // 200).astype(np.int64)
    flags = np.zeros(len(runs), np.uint8)
    flags[1::2] = 32
    mask = np.repeat(flags, runs)[: _POOL + _CHUNK]
    return bases, mask


def _sequence(
    length: int, spans: list[tuple[int, int]], pools: tuple[np.ndarray, np.ndarray], rng
) -> Iterator[np.ndarray]:
    """A contig's bases in chunks of ``_CHUNK`` (a multiple of the line length)."""
    bases, mask = pools
    for a in range(0, length, _CHUNK):
        n = min(_CHUNK, length - a)
        i, j = rng.integers(0, _POOL, 2)
        seq = bases[i : i + n] | mask[j : j + n]
        for g0, g1 in spans:
            lo, hi = max(g0, a), min(g1, a + n)
            if lo < hi:
                seq[lo - a : hi - a] = ord("N")
        yield seq


def _lines(seq: np.ndarray) -> bytes:
    full = len(seq) // LINE * LINE
    rows = np.empty((full // LINE, LINE + 1), np.uint8)
    rows[:, :LINE] = seq[:full].reshape(-1, LINE)
    rows[:, LINE] = 10
    tail = seq[full:].tobytes()
    return rows.tobytes() + (tail + b"\n" if tail else b"")


def _bgzf_block(data: bytes) -> bytes:
    deflated = isal_zlib.compress(data, 1, wbits=-15)
    size = len(_HEADER) + 2 + len(deflated) + 8 - 1
    crc = struct.pack("<II", zlib.crc32(data), len(data))
    return _HEADER + struct.pack("<H", size) + deflated + crc


class _Bgzip:
    """BGZF text written on ``pool``'s threads, recording every block start for the .gzi."""

    def __init__(self, path: Path, pool: ThreadPoolExecutor) -> None:
        self._f = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._pool = pool
        self._buf = bytearray()
        self.starts: list[tuple[int, int]] = []  # (compressed, uncompressed) of each block
        self._c = self._u = 0

    def write(self, text: bytes) -> None:
        self._buf += text
        if len(self._buf) >= 256 * _BLOCK:
            n = len(self._buf) // _BLOCK * _BLOCK
            self._emit(bytes(self._buf[:n]))
            del self._buf[:n]

    def _emit(self, data: bytes) -> None:
        parts = [data[i : i + _BLOCK] for i in range(0, len(data), _BLOCK)]
        for part, block in zip(parts, self._pool.map(_bgzf_block, parts), strict=True):
            self.starts.append((self._c, self._u))
            self._f.write(block)
            self._c += len(block)
            self._u += len(part)

    def close(self) -> None:
        if self._buf:
            self._emit(bytes(self._buf))
        self._f.write(_EOF)
        self._f.close()

    def write_gzi(self, path: Path) -> None:
        """htslib's .gzi: a count, then (compressed, uncompressed) offsets of every block
        start but the first (little-endian uint64)."""
        entries = self.starts[1:]
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(entries)))
            f.write(np.asarray(entries, "<u8").tobytes())


def write_genome(out: Path, *, scale: float = 1.0, seed: int = 0) -> dict[str, Path]:
    """Write ``genome.fa`` (+ .fai) and ``genome.fa.gz`` (+ .fai, .gzi) under ``out``."""
    rng = np.random.default_rng(seed)
    pools = _pools(rng)
    plain, bgz = out / "genome.fa", out / "genome.fa.gz"
    fai: list[str] = []
    offset = 0
    with ThreadPoolExecutor(2) as pool, open(plain, "wb") as f:
        packed = _Bgzip(bgz, pool)
        for name, length in contig_lengths(scale).items():
            header = f">{name} LN:{length} AS:GRCh38-synthetic\n".encode()
            f.write(header)
            packed.write(header)
            offset += len(header)
            fai.append(f"{name}\t{length}\t{offset}\t{LINE}\t{LINE + 1}\n")
            for seq in _sequence(length, gaps(name, length, scale, rng), pools, rng):
                text = _lines(seq)
                f.write(text)
                packed.write(text)
                offset += len(text)
        packed.close()
    packed.write_gzi(Path(f"{bgz}.gzi"))
    for path in (plain, bgz):
        Path(f"{path}.fai").write_text("".join(fai))
    return {"plain": plain, "bgzip": bgz}
