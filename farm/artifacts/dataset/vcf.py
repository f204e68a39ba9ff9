"""VCF/BCF input. A bgzipped text VCF is read as BGZF blocks, inflated on every core.

Sites: one pass over the whole text, which GenVarLoader's variant table needs (a stored
variant index is a row number in it), taking only each record's first five fields and where
its line starts; the blocks inflate on threads (isal lets go of the GIL) while the main thread
splits lines. Genotypes: only the records of the regions' windows, found by those line starts
(so the work grows with the records the regions touch), a window at a time; a record whose
calls are all ``a|b`` or ``a/b`` with alleles 0, 1 or ``.`` (what cohort VCFs hold) is
decoded by numpy passes over its bytes, any other (haploid, half-missing, more FORMAT
fields) by a plain parse of its calls with the same meaning as htslib's.

A BCF goes through cyvcf2 (htslib) instead: one pass for sites, a forward pass per contig.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cyvcf2
import numpy as np
from numpy.typing import NDArray

from farm.artifacts.bgzf import BgzfError, Blocks
from farm.artifacts.dataset.select import (
    Calls,
    CarrierBuffer,
    ContigSites,
    Policy,
    calls_from_matrix,
)
from farm.artifacts.dataset.sites import SITES_STAGE, SiteTable
from farm.errors import InputError
from farm.progress import NO_PROGRESS, Progress

PLOIDY = 2
_HEAD = 512  # bytes of a line that usually hold its first nine fields
_CHUNK_BLOCKS = 64  # BGZF blocks (up to 4 MiB of text) inflated per task
_ALLELE_SPLIT = re.compile(rb"[|/]")


def threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _open(path: Path, samples: list[str] | None = None) -> cyvcf2.VCF:
    try:
        if samples is None:
            return cyvcf2.VCF(str(path), lazy=True, threads=1)
        return cyvcf2.VCF(str(path), lazy=True, threads=1, samples=samples)
    except OSError as e:
        raise InputError(
            f"Cannot open {path} as VCF/BCF ({e}); pass a bgzipped, indexed VCF or a BCF."
        ) from e


class VcfFile:
    policy: Policy = "vcf"

    def __init__(self, path: Path) -> None:
        self.path = path
        vcf = _open(path)
        self.samples: list[str] = list(vcf.samples)
        vcf.close()
        self._text = not path.name.lower().endswith(".bcf")
        self._blocks: Blocks | None = None
        self._lines: NDArray[np.int64] | None = None  # each record's line start, + its end
        self._pool: ThreadPoolExecutor | None = None

    def before_fork(self) -> None:
        """Stop the inflating threads: a forked reader inflates its windows on its own core."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def close(self) -> None:
        self.before_fork()
        if self._blocks is not None:
            self._blocks.close()

    def read_sites(self, table: SiteTable, progress: Progress = NO_PROGRESS) -> None:
        """Every record's site, in file order, into ``table``; the text's bytes read (a BCF:
        its records, of a total not known) reported to ``progress`` as they go."""
        if self._text:
            self._scan_text(table, progress)
            return
        vcf = _open(self.path, [])
        progress.start(0, "records", stage=SITES_STAGE)
        try:
            batch: tuple[list[str], list[int], list[str], list[str]] = ([], [], [], [])
            for rec in vcf:
                alts = rec.ALT
                for col, v in zip(
                    batch,
                    (rec.CHROM, rec.POS, rec.REF, ",".join(alts) if alts else "."),
                    strict=True,
                ):
                    col.append(v)  # type: ignore[attr-defined]
                if len(batch[0]) >= 1 << 16:
                    _add(table, *batch)
                    progress.advance(len(batch[0]))
                    batch = ([], [], [], [])
            _add(table, *batch)
        except (OSError, ValueError) as e:  # htslib: truncated or corrupt block
            raise self._unreadable(e) from e
        finally:
            vcf.close()

    def _unreadable(self, e: Exception) -> InputError:
        return InputError(
            f"Variant file {self.path} could not be read to the end ({e}); it is "
            f"truncated or corrupt: copy or export it again."
        )

    def _scan_text(self, table: SiteTable, progress: Progress) -> None:
        try:
            self._blocks = blocks = Blocks(self.path)
        except BgzfError as e:
            raise self._unreadable(e) from e
        progress.start(blocks.text_size, "B", stage=SITES_STAGE)
        self._pool = pool = ThreadPoolExecutor(threads())
        starts: list[NDArray[np.int64]] = []
        carry = b""  # the unfinished line at the end of the previous chunk
        carry_at = 0
        cols = _Columns()
        for u0, data, nl in _chunks(blocks, pool):
            progress.advance(len(data))
            if not nl:
                carry += data
                continue
            if carry:
                cols.add(carry + data[: nl[0]], carry_at, self.path)
                cols.add_lines(data, [n + 1 for n in nl[:-1]], nl[1:], u0, self.path)
            else:
                cols.add_lines(data, [0, *(n + 1 for n in nl[:-1])], nl, u0, self.path)
            carry, carry_at = data[nl[-1] + 1 :], u0 + nl[-1] + 1
            if len(cols.at) >= 1 << 16:
                cols.flush(table, starts)
        if carry.strip():
            cols.add(carry, carry_at, self.path)
        cols.flush(table, starts)
        ends = np.asarray([blocks.text_size], np.int64)
        self._lines = np.concatenate([*starts, ends])

    def buffer(self, contig: str, sites: ContigSites, samples: list[str]) -> CarrierBuffer:
        """Forward reader of a contig's calls, haplotypes in ``samples`` order."""
        pos_in_file = {s: i for i, s in enumerate(self.samples)}
        hap_of_col = np.full(len(self.samples) * PLOIDY, -1, np.int32)
        for d, s in enumerate(samples):
            for p in range(PLOIDY):
                hap_of_col[pos_in_file[s] * PLOIDY + p] = d * PLOIDY + p
        if self._text:
            return self._text_buffer(contig, sites, hap_of_col)
        return self._bcf_buffer(contig, sites, samples)

    def _text_buffer(
        self, contig: str, sites: ContigSites, hap_of_col: NDArray[np.int32]
    ) -> CarrierBuffer:
        assert self._blocks is not None and self._lines is not None
        blocks, lines, pool = self._blocks, self._lines, self._pool
        n_file = len(self.samples)

        def read(a: int, b: int) -> Calls:
            u = lines[sites.base + a : sites.base + b + 1]
            try:
                text = blocks.text(int(u[0]), int(u[-1]), pool)
            except BgzfError as e:
                raise self._unreadable(e) from e
            rec, col = _decode(text, u - u[0], n_file, self.path, contig, sites.starts[a:b])
            haps = hap_of_col[col]
            keep = haps >= 0
            if sites.spanning is not None:
                keep &= ~sites.spanning[a:b][rec]
            rec, haps = rec[keep], haps[keep]
            ptr = np.zeros(b - a + 1, np.int64)
            np.cumsum(np.bincount(rec, minlength=b - a), out=ptr[1:])
            return ptr, haps

        return CarrierBuffer(sites.n, read, _no_skip)

    def _bcf_buffer(self, contig: str, sites: ContigSites, samples: list[str]) -> CarrierBuffer:
        """Forward reader through htslib, columns in the file's order of the chosen samples."""
        chosen = set(samples)
        file_order = [s for s in self.samples if s in chosen]
        pos = {s: i for i, s in enumerate(samples)}
        hap_of_col = np.asarray(
            [pos[s] * PLOIDY + p for s in file_order for p in range(PLOIDY)], np.int32
        )
        subset = None if file_order == self.samples else file_order
        vcf = _open(self.path, subset)
        records: Iterator[cyvcf2.Variant] = iter(vcf(contig))

        def read(a: int, b: int) -> Calls:
            out = np.empty((b - a, len(file_order), PLOIDY), np.bool_)
            for k in range(b - a):
                rec = _next(records, contig, a + k, sites)
                np.equal(self._alleles(rec, contig), 1, out=out[k])
            if sites.spanning is not None:
                out[sites.spanning[a:b]] = False
            return calls_from_matrix(out.reshape(b - a, -1), hap_of_col)

        def skip(a: int, b: int) -> None:
            for k in range(b - a):
                _next(records, contig, a + k, sites)

        return CarrierBuffer(sites.n, read, skip)

    def _alleles(self, rec: cyvcf2.Variant, contig: str) -> NDArray[np.int16]:
        """(samples, 2) allele codes. A haploid call is its allele and nothing on the second
        copy (as GenVarLoader reads it); a missing allele (-1) or none (-2) carries nothing."""
        try:
            gt = rec.genotype.array()
        except Exception as e:  # cyvcf2 raises a bare Exception for a record without GT
            raise _no_gt(self.path, contig, rec.POS) from e
        if gt.shape[1] == PLOIDY:  # every call haploid: the second column is the phase flag
            haploid = np.full_like(gt, -2)
            haploid[:, 0] = gt[:, 0]
            return haploid
        if gt.shape[1] > PLOIDY + 1:
            raise _ploidy(self.path, contig, rec.POS, gt.shape[1] - 1)
        return gt[:, :PLOIDY]


def _no_skip(a: int, b: int) -> None:
    return None


def _no_gt(path: Path, contig: str, pos: int) -> InputError:
    return InputError(
        f"Variant file {path} has a record without genotypes (no GT) at "
        f"{contig}:{pos}; drop that record or give it a GT field."
    )


def _ploidy(path: Path, contig: str, pos: int, ploidy: int) -> InputError:
    return InputError(
        f"Variant file {path} has a call of ploidy {ploidy} at "
        f"{contig}:{pos}; GenVarLoader datasets hold haploid and diploid calls only."
    )


def _add(table: SiteTable, chrom: list[str], pos: list[int], ref: list, alt: list) -> None:
    table.add_batch(chrom, np.asarray(pos, np.int64), ref, alt)


def _chunks(blocks: Blocks, pool: ThreadPoolExecutor) -> Iterator[tuple[int, bytes, list[int]]]:
    """(text offset, text, newline positions) of runs of blocks, in order; the runs inflate on
    the pool's threads a few ahead of the caller."""

    def work(a: int, b: int) -> tuple[int, bytes, list[int]]:
        data = blocks.inflate_run(a, b)
        nl, find = [], data.find  # lines are long: memchr from one newline to the next
        i = find(b"\n")
        while i >= 0:
            nl.append(i)
            i = find(b"\n", i + 1)
        return int(blocks.ustarts[a]), data, nl

    spans = [(a, min(a + _CHUNK_BLOCKS, blocks.n)) for a in range(0, blocks.n, _CHUNK_BLOCKS)]
    ahead = 2 * threads()
    queue: list[Future | None] = [pool.submit(work, *s) for s in spans[:ahead]]
    for k in range(len(spans)):
        future = queue[k]
        assert future is not None
        try:
            out = future.result()
        except BgzfError as e:
            raise InputError(
                f"Variant file {blocks.path} could not be read to the end ({e}); it is "
                f"truncated or corrupt: copy or export it again."
            ) from e
        queue[k] = None
        if k + ahead < len(spans):
            queue.append(pool.submit(work, *spans[k + ahead]))
        yield out


class _Columns:
    """The first five fields of a chunk's records and where their lines start."""

    def __init__(self) -> None:
        self._names: dict[bytes, str] = {}
        self._reset()

    def _reset(self) -> None:
        self.chrom: list[str] = []
        self.pos: list[bytes] = []
        self.ref: list[bytes] = []
        self.alt: list[bytes] = []
        self.at: list[int] = []

    def add(self, line: bytes, at: int, path: Path) -> None:
        if not line or line[:1] == b"#":
            return
        f = line.split(b"\t", 5)
        if len(f) < 6:
            raise InputError(
                f"Variant file {path} has a line with fewer than eight columns at byte {at} "
                f"of its text; it is not a VCF or is corrupt."
            )
        self._one(f, at)

    def _one(self, f: list[bytes], at: int) -> None:
        name = self._names.get(f[0])
        if name is None:
            name = self._names[f[0]] = f[0].decode()
        self.chrom.append(name)
        self.pos.append(f[1])
        self.ref.append(f[3])
        self.alt.append(f[4])
        self.at.append(at)

    def add_lines(
        self, data: bytes, starts: list[int], ends: list[int], u0: int, path: Path
    ) -> None:
        chrom, pos, ref, alt, at, names = (
            self.chrom, self.pos, self.ref, self.alt, self.at, self._names
        )  # fmt: skip
        for s, e in zip(starts, ends, strict=True):
            f = data[s : min(s + _HEAD, e)].split(b"\t", 5)
            if len(f) < 6 or f[0][:1] == b"#":  # a header line, or a long REF/ALT/ID
                self.add(data[s:e], u0 + s, path)
                continue
            name = names.get(f[0])
            if name is None:
                name = names[f[0]] = f[0].decode()
            chrom.append(name)
            pos.append(f[1])
            ref.append(f[3])
            alt.append(f[4])
            at.append(u0 + s)

    def flush(self, table: SiteTable, starts: list[NDArray[np.int64]]) -> None:
        if not self.at:
            return
        try:
            pos = np.fromiter(map(int, self.pos), np.int64, len(self.pos))
        except ValueError as e:
            raise InputError(
                f"Variant file {table.source} has a POS that is not a number ({e}); it is "
                f"not a VCF or is corrupt."
            ) from e
        table.add_batch(self.chrom, pos, self.ref, self.alt)
        starts.append(np.asarray(self.at, np.int64))
        self._reset()


def _decode(
    text: bytes,
    lines: NDArray[np.int64],
    n_file: int,
    path: Path,
    contig: str,
    starts: NDArray[np.int64],
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(record, file haplotype) of every ALT call of the records whose lines start at
    ``lines[:-1]`` in ``text`` (``lines[-1]`` is where the last one ends), record-major."""
    k = len(lines) - 1
    width = 4 * n_file - 1  # "a|b" and a tab per sample, no tab after the last
    fast_rows: list[int] = []
    fast_at: list[int] = []
    slow_rows: list[int] = []
    for r in range(k):
        s, e = int(lines[r]), int(lines[r + 1])
        if text[e - 1 : e] == b"\n":
            e -= 1
        f = text[s : min(s + _HEAD, e)].split(b"\t", 9)
        if len(f) == 10 and f[8] == b"GT":
            at = s + sum(map(len, f[:9])) + 9
            if e - at == width:
                fast_rows.append(r)
                fast_at.append(at)
                continue
        slow_rows.append(r)
    rec: list[NDArray[np.int64]] = []
    hap: list[NDArray[np.int64]] = []
    if fast_rows:
        u8 = np.frombuffer(text, np.uint8)
        m = np.empty((len(fast_rows), width + 1), np.uint8)
        m[:, width] = 0x09
        for i, at in enumerate(fast_at):
            m[i, :width] = u8[at : at + width]
        # each call is one little-endian word "a", sep, "b", tab: phased or not, 0/1 alleles
        w = m.view("<u4") | 0x00010001
        ok = ((w == 0x09317C31) | (w == 0x09312F31)).all(axis=1)
        if not ok.all():  # missing alleles ('.') pass here; anything else is parsed in full
            cells = m[~ok].reshape(-1, n_file, 4)
            sep = cells[:, :, 1]
            ok[~ok] = (
                _is_allele(cells[:, :, 0]).all(axis=1)
                & _is_allele(cells[:, :, 2]).all(axis=1)
                & ((sep == 0x7C) | (sep == 0x2F)).all(axis=1)
                & (cells[:, :, 3] == 0x09).all(axis=1)
            )
            slow_rows += np.asarray(fast_rows)[~ok].tolist()
        ones = np.flatnonzero(m[ok] == 0x31)  # in a checked call, '1' is only ever an allele
        row, byte = np.divmod(ones, width + 1)
        rec.append(np.asarray(fast_rows, np.int64)[ok][row])
        hap.append(byte // 4 * PLOIDY + (byte % 4) // 2)
    if slow_rows:
        out = np.zeros((len(slow_rows), n_file, PLOIDY), np.bool_)
        for i, r in enumerate(slow_rows):
            line = text[int(lines[r]) : int(lines[r + 1])].rstrip(b"\n")
            _decode_line(line, out[i], n_file, path, contig, int(starts[r]) + 1)
        row, col = np.nonzero(out.reshape(len(slow_rows), -1))
        rec.append(np.asarray(slow_rows, np.int64)[row])
        hap.append(col)
    records, haps = np.concatenate(rec), np.concatenate(hap)
    if slow_rows and fast_rows:
        order = np.argsort(records, kind="stable")
        records, haps = records[order], haps[order]
    return records, haps


def _is_allele(a: NDArray[np.uint8]) -> NDArray[np.bool_]:
    return (a == 0x30) | (a == 0x31) | (a == 0x2E)


def _decode_line(
    line: bytes, out: NDArray[np.bool_], n_file: int, path: Path, contig: str, pos: int
) -> None:
    """One record's calls, parsed in full: an allele carries the ALT when it is exactly 1."""
    f = line.split(b"\t")
    keys = f[8].split(b":") if len(f) > 8 else []
    if b"GT" not in keys:
        raise _no_gt(path, contig, pos)
    gi = keys.index(b"GT")
    for j, cell in enumerate(f[9 : 9 + n_file]):
        parts = cell.split(b":")
        if gi >= len(parts):
            continue
        alleles = _ALLELE_SPLIT.split(parts[gi])
        if len(alleles) > PLOIDY:
            raise _ploidy(path, contig, pos, len(alleles))
        for p, allele in enumerate(alleles):
            out[j, p] = allele == b"1"


def _next(records: Iterator[cyvcf2.Variant], contig: str, j: int, sites: ContigSites):
    try:
        rec = next(records)
    except StopIteration:
        rec = None
    if rec is None or sites.starts[j] != rec.POS - 1:
        raise InputError(
            f"The index of the variant file disagrees with its records on contig {contig} "
            f"(record {j}); index it again (tabix -p vcf / bcftools index)."
        )
    return rec
