"""Read a BED file into the sorted, jittered region table a dataset stores.

GenVarLoader orders regions by natural contig order ("2" before "10"), then start, then end,
and keeps the BED as given (plus ``r_idx_map``, input row -> sorted row) so a user's region
index still finds its row. Jitter widens every region by ``max_jitter`` on both sides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from farm.errors import InputError

STRANDS = {"+": 1, "-": -1, ".": 1, "": 1}
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key that puts "chr2" before "chr10", as natsort's default does for contigs."""
    parts = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


@dataclass(frozen=True)
class Regions:
    """A BED's rows in input order, plus the sorted order GenVarLoader stores them in."""

    chrom: list[str]
    starts: NDArray[np.int64]
    ends: NDArray[np.int64]
    strand: NDArray[np.int32]  # +1 / -1
    names: list[str | None] | None  # column 4, when the BED has one
    order: NDArray[np.intp]  # sorted row k is input row order[k]
    contigs: list[str]  # distinct contigs, natural order

    @property
    def n(self) -> int:
        return len(self.chrom)

    def r_idx_map(self) -> NDArray[np.int64]:
        """Input row -> sorted row (what GenVarLoader's ``input_regions.arrow`` records)."""
        out = np.empty(self.n, np.int64)
        out[self.order] = np.arange(self.n, dtype=np.int64)
        return out

    def sorted_table(self, max_jitter: int) -> NDArray[np.int64]:
        """(n, 4) contig index, start, end, strand in sorted order, widened by jitter."""
        c_idx = {c: i for i, c in enumerate(self.contigs)}
        o = self.order
        table = np.empty((self.n, 4), np.int64)
        table[:, 0] = [c_idx[self.chrom[i]] for i in o]
        table[:, 1] = self.starts[o] - max_jitter
        table[:, 2] = self.ends[o] + max_jitter
        table[:, 3] = self.strand[o]
        return table


def _bad(path: Path, line_no: int, why: str) -> InputError:
    return InputError(f"{path} is not a usable BED file: line {line_no} {why}.")


_DETECT_ROWS = 10_000


def detect_strand_column(path: Path) -> int:
    """The 1-based column that holds the strand, found from the BED itself: column 6 when it
    holds only ``+``, ``-`` and ``.`` (standard BED), else the first column that does with at
    least one ``+`` or ``-`` (BED-like files with extra columns); else none.
    Looks at the first rows only; a later row that disagrees fails the build with its line.
    An unreadable file gives 6: the checks that follow say what is wrong with it."""
    try:
        with open(path, "rb") as f:
            head = f.read(8 << 20)
        text = head.decode()
    except (OSError, UnicodeDecodeError):
        return 6
    rows = []
    for line in text.splitlines()[: _DETECT_ROWS * 2]:
        if line.strip() and not line.startswith(("#", "track", "browser")):
            rows.append(line.rstrip("\r").split("\t"))
            if len(rows) >= _DETECT_ROWS:
                break

    def holds_strands(column: int, *, signed: bool) -> bool:
        values = [r[column - 1].strip() if len(r) >= column else None for r in rows]
        strands = all(v in ("+", "-", ".") for v in values)
        return strands and (not signed or any(v in ("+", "-") for v in values))

    if not rows:
        return 6
    if holds_strands(6, signed=False):
        return 6  # standard BED, even when every strand is '.'
    widest = max(len(r) for r in rows)
    for column in range(4, widest + 1):
        if holds_strands(column, signed=True):  # elsewhere, a column of names like '.' is not
            return column
    # No strand anywhere. Narrower than 6 columns, 6 means "none" to the reader and keeps the
    # key earlier versions gave; wider, 6 would be read as a strand, so 0.
    return 0 if widest >= 6 else 6


def read_bed(path: Path, strand_column: int = 6) -> Regions:
    """Parse a BED3+ file; ``strand_column`` is 1-based (6 in standard BED), 0 for none.

    Every defect is reported as one sentence naming the file and line, because a BED that
    half-parses would silently build the wrong dataset.
    """
    chrom: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    strands: list[int] = []
    names: list[str | None] = []
    has_names = True
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as e:
        raise InputError(f"BED file {path} does not exist; check the path.") from e
    except IsADirectoryError as e:
        raise InputError(f"{path} is a directory, not a BED file; name the BED file.") from e
    if raw[:2] == b"\x1f\x8b":
        raise InputError(f"BED file {path} is gzip-compressed; decompress it (gunzip) first.")
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not a BED file: it is not text; pass a BED file.") from e
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) < 3:
            raise _bad(path, line_no, "has fewer than 3 tab-separated columns")
        try:
            start, end = int(fields[1]), int(fields[2])
        except ValueError as e:
            raise _bad(path, line_no, "has a start or end that is not an integer") from e
        if start < 0:
            raise _bad(path, line_no, f"has a negative start ({start})")
        if end <= start:
            raise _bad(path, line_no, f"has end {end} <= start {start}; fix or drop that row")
        if strand_column and len(fields) >= strand_column:
            s = fields[strand_column - 1].strip()
            if s not in STRANDS:
                raise InputError(
                    f"{path} line {line_no}: column {strand_column} holds {s!r}, not a strand "
                    f"(+, - or .); pass --strand-column N (strand_column in a manifest) for "
                    f"the column that holds the strand, or 0 for none."
                )
            strands.append(STRANDS[s])
        else:
            strands.append(1)
        chrom.append(fields[0])
        starts.append(start)
        ends.append(end)
        if len(fields) >= 4:
            names.append(fields[3] or None)
        else:
            has_names = False
    if not chrom:
        raise InputError(f"BED file {path} has no regions; add at least one row.")
    contigs = sorted(set(chrom), key=natural_key)
    c_idx = {c: i for i, c in enumerate(contigs)}
    s_arr = np.asarray(starts, np.int64)
    e_arr = np.asarray(ends, np.int64)
    c_arr = np.asarray([c_idx[c] for c in chrom], np.int64)
    order = np.lexsort((e_arr, s_arr, c_arr))  # stable: ties keep input order
    return Regions(
        chrom=chrom,
        starts=s_arr,
        ends=e_arr,
        strand=np.asarray(strands, np.int32),
        names=names if has_names else None,
        order=order,
        contigs=contigs,
    )
