"""Read a BED file into the sorted, jittered region table a dataset stores.

GenVarLoader orders regions by natural contig order ("2" before "10"), then start, then end,
and keeps the BED as given (plus ``r_idx_map``, input row -> sorted row) so a user's region
index still finds its row. Jitter widens every region by ``max_jitter`` on both sides.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from farm.errors import InputError

STRANDS = {"+": 1, "-": -1, ".": 1, "": 1}  # unknown strand: forward, as GenVarLoader reads it
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
    order: NDArray[np.intp]  # sorted row k is input row order[k]
    contigs: list[str]  # distinct contigs, natural order
    columns: pa.Table  # every column of the file, named and typed as GenVarLoader reads it

    @property
    def n(self) -> int:
        return len(self.chrom)

    def r_idx_map(self) -> NDArray[np.int64]:
        """Input row -> sorted row (what GenVarLoader's ``input_regions.arrow`` records)."""
        out = np.empty(self.n, np.int64)
        out[self.order] = np.arange(self.n, dtype=np.int64)
        return out

    def input_regions(self) -> pa.Table:
        """``input_regions.arrow``: the file's columns in input order, plus ``r_idx_map``."""
        return self.columns.append_column("r_idx_map", pa.array(self.r_idx_map(), pa.int64()))

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


def _is_meta(line: str) -> bool:
    """Header, comment, ``track`` and ``browser`` lines, and blank ones: not regions."""
    if not line.strip() or line.startswith("#"):
        return True
    first = line.split(None, 1)[0]
    return first in ("track", "browser")


def _read_text(path: Path, limit: int | None = None) -> str:
    """The file's text, gunzipped when it is gzip or BGZF (``.bed.gz``, ``.narrowPeak.gz``)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(2)
            f.seek(0)
            if raw == b"\x1f\x8b":
                with gzip.open(f) as g:
                    data = g.read(-1 if limit is None else limit)
            else:
                data = f.read(-1 if limit is None else limit)
    except FileNotFoundError as e:
        raise InputError(f"BED file {path} does not exist; check the path.") from e
    except IsADirectoryError as e:
        raise InputError(f"{path} is a directory, not a BED file; name the BED file.") from e
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(
            f"BED file {path} is a damaged gzip file ({e}); compress it again or pass it plain."
        ) from e
    try:
        return data.decode() if limit is None else data.decode(errors="ignore")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not a BED file: it is not text; pass a BED file.") from e


def detect_strand_column(path: Path) -> int:
    """The 1-based column that holds the strand, found from the BED itself: column 6 when it
    holds only ``+``, ``-`` and ``.`` (standard BED), else the first column that does with at
    least one ``+`` or ``-`` (BED-like files with extra columns); else none.
    Looks at the first rows only; a later row that disagrees fails the build with its line.
    An unreadable file gives 6: the checks that follow say what is wrong with it."""
    try:
        text = _read_text(path, limit=8 << 20)
    except InputError:
        return 6
    rows = []
    for line in text.splitlines()[: _DETECT_ROWS * 2]:
        if not _is_meta(line):
            rows.append(line.rstrip("\r").split("\t"))
            if len(rows) >= _DETECT_ROWS:
                break

    def holds_strands(column: int, *, signed: bool) -> bool:
        values = [r[column - 1].strip() if len(r) >= column else None for r in rows]
        strands = all(v in ("+", "-", ".", "") for v in values)
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
    """Parse a BED-like file (BED3+, narrowPeak, broadPeak; plain or gzipped); the strand is
    read from ``strand_column`` (1-based, 6 in standard BED, 0 for none).

    Every defect is reported as one sentence naming the file and line, because a BED that
    half-parses would silently build the wrong dataset.
    """
    text = _read_text(path)
    rows: list[list[str]] = []
    line_nos: list[int] = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if _is_meta(line):
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) < 3:
            raise _bad(path, line_no, "has fewer than 3 tab-separated columns")
        rows.append(fields)
        line_nos.append(line_no)
    if not rows:
        raise InputError(f"BED file {path} has no regions; add at least one row.")
    chrom = [r[0] for r in rows]
    starts = np.empty(len(rows), np.int64)
    ends = np.empty(len(rows), np.int64)
    strands = np.ones(len(rows), np.int32)
    for i, fields in enumerate(rows):
        line_no = line_nos[i]
        if _null(fields[0]) is None:
            raise _bad(path, line_no, "has no contig name")
        start, end = _coordinate(fields[1]), _coordinate(fields[2])
        if start is None or end is None:
            raise _bad(path, line_no, "has a start or end that is not an integer")
        if start < 0:
            raise _bad(path, line_no, f"has a negative start ({start})")
        if end < start:
            raise _bad(path, line_no, f"has end {end} < start {start}; fix or drop that row")
        starts[i], ends[i] = start, end
        if strand_column and len(fields) >= strand_column:
            s = fields[strand_column - 1].strip()
            if s not in STRANDS:
                raise InputError(
                    f"{path} line {line_no}: column {strand_column} holds {s!r}, not a strand "
                    f"(+, - or .); pass --strand-column N (strand_column in a manifest) for "
                    f"the column that holds the strand, or 0 for none."
                )
            strands[i] = STRANDS[s]
    contigs = sorted(set(chrom), key=natural_key)
    c_idx = {c: i for i, c in enumerate(contigs)}
    c_arr = np.asarray([c_idx[c] for c in chrom], np.int64)
    order = np.lexsort((ends, starts, c_arr))  # stable: ties keep input order
    return Regions(
        chrom=chrom,
        starts=starts,
        ends=ends,
        strand=strands,
        order=order,
        contigs=contigs,
        columns=_columns(path, rows, strand_column),
    )


# What GenVarLoader (through seqpro) names and types each column of a BED-like file. Columns
# past these are named column_N and typed by their values.
BED_COLUMNS = (
    "chrom",
    "chromStart",
    "chromEnd",
    "name",
    "score",
    "strand",
    "thickStart",
    "thickEnd",
    "itemRgb",
    "blockCount",
    "blockSizes",
    "blockStarts",
)
PEAK_COLUMNS = {
    "narrowpeak": (*BED_COLUMNS[:6], "signalValue", "pValue", "qValue", "peak"),
    "broadpeak": (*BED_COLUMNS[:6], "signalValue", "pValue", "qValue"),
}
_TEXT = {"chrom", "name", "strand"}
_INTEGER = {"chromStart", "chromEnd", "thickStart", "thickEnd", "peak"}
_REAL = {"score", "signalValue", "pValue", "qValue"}
_COUNT = {"blockCount"}
_NUMBER_TEXT = {"itemRgb", "blockSizes", "blockStarts"}
_MINUS_ONE_IS_NULL = {"pValue", "qValue", "peak"}  # the peak formats' "not given"
_INT = re.compile(r"-?\d+")
_REAL_TEXT = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def column_names(path: Path, width: int) -> list[str]:
    name = path.name.lower().removesuffix(".gz")
    known = next((cols for fmt, cols in PEAK_COLUMNS.items() if name.endswith("." + fmt)), None)
    known = known or BED_COLUMNS
    return [known[i] if i < len(known) else f"column_{i + 1}" for i in range(width)]


def _null(value: str) -> str | None:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return None if value in ("", ".") else value


def _coordinate(value: str) -> int | None:
    """An integer coordinate; a real number is cut toward zero, as GenVarLoader reads it."""
    if _INT.fullmatch(value):
        return int(value)
    if _REAL_TEXT.fullmatch(value):
        return int(float(value))
    return None


def _columns(path: Path, rows: list[list[str]], strand_column: int) -> pa.Table:
    """The file's columns. GenVarLoader's reader takes the column named ``strand`` as the
    strand, so that name goes to the strand column wherever it is, and to no other."""
    width = max(len(r) for r in rows)
    names = column_names(path, width)
    if strand_column != 6 and width >= 6 and names[5] == "strand":
        names[5] = "column_6"
    if 0 < strand_column <= width:
        names[strand_column - 1] = "strand"
    arrays = []
    for i, name in enumerate(names):
        values = [_null(r[i]) if i < len(r) else None for r in rows]
        arrays.append(_typed(name, values))
    return pa.table(arrays, names=names)


def _typed(name: str, values: list[str | None]) -> pa.Array:
    """A column typed as GenVarLoader types it: by name for the standard columns (when every
    value fits; a file GenVarLoader would refuse keeps what its values are), else by value."""
    present = [v for v in values if v is not None]
    if name in _TEXT:
        return pa.array(values, pa.string_view())
    if name in _INTEGER and all(_coordinate(v) is not None for v in present):
        ints = [None if v is None else _coordinate(v) for v in values]
        return _minus_one_null(name, pa.array(ints, pa.int64()))
    if name in _REAL and all(_REAL_TEXT.fullmatch(v) for v in present):
        reals = [None if v is None else float(v) for v in values]
        return _minus_one_null(name, pa.array(reals, pa.float64()))
    if name in _COUNT and all(v.isdigit() for v in present):
        return pa.array([None if v is None else int(v) for v in values], pa.uint64())
    inferred = _inferred(values, present)
    if name in _NUMBER_TEXT and inferred.type != pa.string_view():
        return pa.array(
            [None if v is None else str(v) for v in inferred.to_pylist()], pa.string_view()
        )
    return inferred


def _inferred(values: list[str | None], present: list[str]) -> pa.Array:
    if not present:
        return pa.array(values, pa.string_view())
    if all(v.lower() in ("true", "false") for v in present):
        return pa.array([None if v is None else v.lower() == "true" for v in values], pa.bool_())
    if all(_INT.fullmatch(v) for v in present):
        return pa.array([None if v is None else int(v) for v in values], pa.int64())
    if all(_REAL_TEXT.fullmatch(v) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array(values, pa.string_view())


def _minus_one_null(name: str, column: pa.Array) -> pa.Array:
    if name not in _MINUS_ONE_IS_NULL:
        return column
    return pc.if_else(pc.equal(column, -1), pa.scalar(None, column.type), column)


# --- regions outside the variants' contigs ----------------------------------------------------


def outside_warnings(
    regions: Regions,
    bed: Path,
    variants: Path,
    absent: set[str],
    lengths: dict[str, int],
    max_jitter: int = 0,
) -> list[str]:
    """Sentences about regions gvl.write keeps as given although they lie outside the variant
    file's contigs: on ``absent`` contigs (the dataset then opens only with a reference that
    has them), or with a window past the contig's end in ``lengths`` (read as N there).
    Both name the file and the fix; the build is not refused, since gvl.write builds it too."""
    said: list[str] = []
    on_absent = [i for i, c in enumerate(regions.chrom) if c in absent]
    if on_absent:
        one, names = len(on_absent) == 1, sorted(absent, key=natural_key)
        it = "it" if one else "them"
        said.append(
            f"{_counted(len(on_absent), 'region')} of {bed} {'names' if one else 'name'} "
            f"{'a contig' if len(names) == 1 else 'contigs'} absent from {variants} "
            f"({_listed(names)}): gvl.write keeps {it} with no variants, and GenVarLoader "
            "opens the dataset only with a reference that has "
            f"{'that contig' if len(names) == 1 else 'those contigs'}; drop {it} from {bed} "
            "if yours does not."
        )
    past = [
        i
        for i, c in enumerate(regions.chrom)
        if c in lengths and int(regions.ends[i]) + max_jitter > lengths[c]
    ]
    if past:
        one, it = len(past) == 1, "it" if len(past) == 1 else "them"
        shown = [f"{regions.chrom[i]}:{regions.starts[i]}-{regions.ends[i]}" for i in past]
        ends = {regions.chrom[i]: lengths[regions.chrom[i]] for i in past}
        sizes = ", ".join(f"{c} is {n:,} bp" for c, n in sorted(ends.items()))
        jitter = f" with max_jitter {max_jitter}" if max_jitter else ""
        said.append(
            f"{_counted(len(past), 'region')} of {bed} {'runs' if one else 'run'} past the end "
            f"of {'its' if one else 'their'} contig in {variants}{jitter} ({_listed(shown)}; "
            f"{sizes}): gvl.write keeps {it} as given, and GenVarLoader reads N past the end; "
            f"trim {it} in {bed} if that is not what you want."
        )
    return said


def _counted(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _listed(items: list[str], shown: int = 3) -> str:
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f" and {more:,} more" if more > 0 else "")
