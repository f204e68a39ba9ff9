"""BigWig.intervals against pyBigWig's records clipped to each window (GenVarLoader's rule).

pyBigWig writes the files and is the oracle: its ``intervals(chrom)`` gives every record in file
order; the oracle keeps those with s < qe and e > qs and clips them to [qs, qe). Layouts that
pyBigWig cannot write (big-endian, uncompressed, several sections or chroms in one block,
overlapping records) come from a small bbi writer below, with the records it wrote as oracle.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pyBigWig
import pytest
from numpy.typing import NDArray

from farm.artifacts.dataset.bigwig import BigWig
from farm.errors import InputError

Records = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]
CHROMS = [("chr1", 200_000), ("2", 150_000), ("chrM", 16_569), ("chrUn_gl000220", 3_000)]


# ----------------------------------------------------------------------------- helpers


def oracle(recs: Records, length: int, starts: NDArray, ends: NDArray) -> tuple[NDArray, ...]:
    """The clipping rule, one window at a time: the slow, obviously right way."""
    s, e, v = recs
    counts, out_s, out_e, out_v = [], [], [], []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        qs = max(start, 0)
        qe = length if end < 0 else min(end, length)
        m = (s < qe) & (e > qs)
        counts.append(int(m.sum()))
        out_s.append(np.maximum(s[m], qs))
        out_e.append(np.minimum(e[m], qe))
        out_v.append(v[m])
    return (
        np.array(counts, np.int64),
        np.concatenate(out_s).astype(np.int32),
        np.concatenate(out_e).astype(np.int32),
        np.concatenate(out_v).astype(np.float32),
    )


def pybigwig_records(path: Path, chrom: str) -> Records:
    """Every record of `chrom` as pyBigWig reads it, in file order."""
    with pyBigWig.open(str(path)) as bw:
        got = bw.intervals(chrom) or ()
    arr = np.array(got, dtype=np.float64).reshape(-1, 3)
    return arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2].astype(np.float32)


def assert_same(got: tuple[NDArray, ...], want: tuple[NDArray, ...]) -> None:
    """Equal bit for bit, dtypes included."""
    for g, w, dt in zip(got, want, (np.int64, np.int32, np.int32, np.float32), strict=True):
        assert g.dtype == dt
        np.testing.assert_array_equal(g, w, strict=True)
    assert got[3].view(np.uint32).tolist() == want[3].view(np.uint32).tolist()  # -0.0, NaN bits


def windows(rng: np.random.Generator, recs: Records, length: int, n: int) -> tuple[NDArray, ...]:
    """Random windows plus the edge cases: record edges, zero length, negative, past the end."""
    s, e, _ = recs
    starts = [rng.integers(-500, length + 500, n)]
    ends = [starts[0] + rng.choice([0, 1, 7, 100, 3_000, 40_000], n)]
    if len(s):
        pick = rng.integers(0, len(s), n)
        edge = np.concatenate(
            [s[pick], e[pick], s[pick] - 1, e[pick] + 1, (s[pick] + e[pick]) // 2]
        )
        starts.append(edge)
        ends.append(edge + rng.choice([0, 0, 1, 2, 50], len(edge)))  # many zero-length
    fixed = [
        (0, length),
        (-100, length + 100),
        (-100, -1),  # a negative end means the whole chrom
        (-10, 0),
        (0, 0),
        (length, length),
        (length - 1, length),
        (length, length + 50),
        (length + 10, length + 60),
        (length - 5, length + 5),
    ]
    starts.append(np.array([a for a, _ in fixed]))
    ends.append(np.array([b for _, b in fixed]))
    st, en = np.concatenate(starts).astype(np.int64), np.concatenate(ends).astype(np.int64)
    perm = rng.permutation(len(st))  # unsorted, overlapping queries
    return st[perm], en[perm]


def check_file(path: Path, records: dict[str, Records], seed: int, n: int = 300) -> None:
    rng = np.random.default_rng(seed)
    with BigWig(path) as bw:
        for chrom, recs in records.items():
            length = bw.chroms[chrom]
            st, en = windows(rng, recs, length, n)
            assert_same(bw.intervals(chrom, st, en), oracle(recs, length, st, en))


def random_bedgraph(rng: np.random.Generator, length: int, n: int) -> Records:
    """Sorted, non-overlapping records with gaps, abutting runs, zeros and repeated values."""
    widths = rng.integers(1, 60, n)
    gaps = rng.choice([0, 0, 0, 1, 5, 200], n)  # mostly abutting
    s = np.cumsum(gaps + np.r_[0, widths[:-1]])
    e = s + widths
    keep = e <= length
    s, e = s[keep], e[keep]
    v = rng.choice([0.0, 0.0, 1.0, 1.0, 2.5, -3.25], len(s)).astype(np.float32)
    mixed = rng.random(len(s)) < 0.3
    v[mixed] = rng.normal(size=int(mixed.sum())).astype(np.float32)
    return s.astype(np.int64), e.astype(np.int64), v


def write_bedgraph(path: Path, chroms: list[tuple[str, int]], recs: dict[str, Records]) -> None:
    with pyBigWig.open(str(path), "w") as bw:
        bw.addHeader(chroms)
        for chrom, _ in chroms:
            s, e, v = recs[chrom]
            if len(s):
                bw.addEntries([chrom] * len(s), s.tolist(), ends=e.tolist(), values=v.tolist())


# A minimal bbi writer of our own, for layouts pyBigWig does not produce. A section is
# (chrom id, type, start, step, span, items): bedGraph items (s, e, v), varStep (s, v),
# fixedStep v.
Section = tuple[int, int, int, int, int, list]


def section_records(sec: Section) -> list[tuple[int, int, int, float]]:
    cid, kind, start, step, span, items = sec
    if kind == 1:
        return [(cid, s, e, v) for s, e, v in items]
    if kind == 2:
        return [(cid, s, s + span, v) for s, v in items]
    return [(cid, start + i * step, start + i * step + span, v) for i, v in enumerate(items)]


def pack_section(sec: Section, en: str) -> bytes:
    cid, kind, start, step, span, items = sec
    recs = section_records(sec)
    end = max((r[2] for r in recs), default=start)
    out = struct.pack(en + "IIIIIBBH", cid, start, end, step, span, kind, 0, len(items))
    fmt = {1: "IIf", 2: "If", 3: "f"}[kind]
    for it in items:
        out += struct.pack(en + fmt, *(it if kind != 3 else (it,)))
    return out


def write_bbi(
    path: Path,
    chroms: list[tuple[str, int]],
    blocks: list[list[Section]],
    *,
    endian: str = "<",
    compress: bool = True,
    chrom_block: int = 0,
) -> None:
    """Header, chrom tree (two levels when chrom_block < chroms), data blocks, one-node R-tree;
    no zoom levels."""
    en = endian
    key = max(len(c) for c, _ in chroms)
    ids = {c: i for i, (c, _) in enumerate(chroms)}  # ids are list order
    ordered = sorted(chroms)  # the B+ tree is sorted by name
    per = chrom_block or len(chroms)
    groups = [ordered[i : i + per] for i in range(0, len(ordered), per)]
    tree = struct.pack(en + "IIIIQQ", 0x78CA8C91, per, key, 8, len(chroms), 0)
    if len(groups) > 1:
        leaf_at = 64 + 32 + 4 + len(groups) * (key + 8)
        tree += struct.pack(en + "BBH", 0, 0, len(groups))
        for g in groups:
            tree += g[0][0].encode().ljust(key, b"\0") + struct.pack(en + "Q", leaf_at)
            leaf_at += 4 + len(g) * (key + 8)
    for g in groups:
        tree += struct.pack(en + "BBH", 1, 0, len(g))
        for name, length in g:
            tree += name.encode().ljust(key, b"\0") + struct.pack(en + "II", ids[name], length)
    data_off = 64 + len(tree)
    data = struct.pack(en + "Q", len(blocks))
    leaves = []
    ubuf = 0
    for blk in blocks:
        raw = b"".join(pack_section(s, en) for s in blk)
        ubuf = max(ubuf, len(raw))
        body = zlib.compress(raw) if compress else raw
        recs = [r for s in blk for r in section_records(s)]
        lo = min((r[0], r[1]) for r in recs)
        hi = max((r[0], r[2]) for r in recs)
        leaves.append((*lo, *hi, data_off + len(data), len(body)))
        data += body
    index_off = data_off + len(data)
    rtree = struct.pack(
        en + "IIQIIIIQII", 0x2468ACE0, 256, len(leaves), 0, 0, 0, 0, index_off, 1, 0
    )
    rtree += struct.pack(en + "BBH", 1, 0, len(leaves))
    for leaf in leaves:
        rtree += struct.pack(en + "IIIIQQ", *leaf)
    header = struct.pack(
        en + "IHHQQQHHQQIQ",
        0x888FFC26,
        4,
        0,
        64,
        data_off,
        index_off,
        0,
        0,
        0,
        0,
        ubuf if compress else 0,
        0,
    )
    path.write_bytes(header + tree + data + rtree)


def bbi_records(blocks: list[list[Section]], cid: int) -> Records:
    recs = [r for blk in blocks for s in blk for r in section_records(s) if r[0] == cid]
    return (
        np.array([r[1] for r in recs], np.int64),
        np.array([r[2] for r in recs], np.int64),
        np.array([r[3] for r in recs], np.float32),
    )


# ----------------------------------------------------------------------------- pyBigWig files


@pytest.fixture(scope="module")
def bedgraph_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Records]]:
    rng = np.random.default_rng(7)
    recs = {c: random_bedgraph(rng, n, 4_000) for c, n in CHROMS}
    recs["chrUn_gl000220"] = tuple(a[:0] for a in recs["chrUn_gl000220"])  # header only
    path = tmp_path_factory.mktemp("bw") / "random.bw"
    write_bedgraph(path, CHROMS, recs)
    return path, recs


def test_chroms_match_pybigwig(bedgraph_file: tuple[Path, dict[str, Records]]) -> None:
    path, _ = bedgraph_file
    with BigWig(path) as bw, pyBigWig.open(str(path)) as ref:
        assert list(bw.chroms.items()) == list(ref.chroms().items())
        assert list(bw.chroms.items()) == CHROMS


def test_bedgraph_matches_oracle(bedgraph_file: tuple[Path, dict[str, Records]]) -> None:
    path, written = bedgraph_file
    records = {c: pybigwig_records(path, c) for c, _ in CHROMS}
    for c in written:  # the oracle reads back what was written
        np.testing.assert_array_equal(records[c][0], written[c][0])
        np.testing.assert_array_equal(records[c][2], written[c][2])
    check_file(path, records, seed=1)


def test_window_cases_by_hand(bedgraph_file: tuple[Path, dict[str, Records]]) -> None:
    """The rule spelled out on the first records of chr1."""
    path, recs = bedgraph_file
    s, e, v = recs["chr1"]
    i = int(np.flatnonzero(e - s >= 3)[0])
    mid = int(s[i]) + 1
    with BigWig(path) as bw:
        counts, st, en, val = bw.intervals("chr1", np.array([mid, s[i]]), np.array([mid, s[i]]))
        assert counts.tolist() == [1, int(((s < s[i]) & (e > s[i])).sum())]
        assert (st[0], en[0], val[0]) == (mid, mid, v[i])  # zero-length window inside a record
        counts, *_ = bw.intervals("chr1", np.array([300_000]), np.array([300_010]))
        assert counts.tolist() == [0]  # entirely past the end
        counts, st, *_ = bw.intervals("chr1", np.zeros(0, np.int64), np.zeros(0, np.int64))
        assert counts.shape == (0,) and st.shape == (0,)
        counts, *_ = bw.intervals("chrUn_gl000220", np.array([0]), np.array([3_000]))
        assert counts.tolist() == [0]
        with pytest.raises(KeyError):
            bw.intervals("chr3", np.array([0]), np.array([10]))
        with pytest.raises(KeyError):
            bw.intervals("1", np.array([0]), np.array([10]))  # no aliasing here


def test_fixedstep_and_varstep(tmp_path: Path) -> None:
    path = tmp_path / "steps.bw"
    rng = np.random.default_rng(3)
    with pyBigWig.open(str(path), "w") as bw:
        bw.addHeader([("chr1", 100_000), ("chrM", 16_569)])
        # fixedStep: step > span (gaps), step == span (abutting), step < span is not allowed
        bw.addEntries("chr1", 100, values=rng.normal(size=500).tolist(), span=20, step=50)
        bw.addEntries("chr1", 30_000, values=[0.0, 0.0, 1.5, 1.5] * 100, span=10, step=10)
        bw.addEntries("chrM", 0, values=rng.normal(size=2_000).tolist(), span=5, step=5)
    check_file(path, {c: pybigwig_records(path, c) for c in ("chr1", "chrM")}, seed=2)

    path = tmp_path / "var.bw"
    s = np.cumsum(rng.integers(1, 40, 3_000)) + 5
    with pyBigWig.open(str(path), "w") as bw:
        bw.addHeader([("2", 200_000), ("chrM", 16_569)])
        bw.addEntries("2", s.tolist(), values=rng.normal(size=len(s)).tolist(), span=1)
        bw.addEntries("chrM", [10, 40, 50, 100], values=[1.0, 0.0, 0.0, 3.0], span=10)
    records = {c: pybigwig_records(path, c) for c in ("2", "chrM")}
    assert records["chrM"][1].tolist() == [20, 50, 60, 110]
    check_file(path, records, seed=3)


def test_many_blocks_multilevel_rtree(tmp_path: Path) -> None:
    """~800k records: pyBigWig's 32 KiB blocks give >256 blocks in a two-level R-tree."""
    rng = np.random.default_rng(11)
    n = 800_000
    length = 25_000_000
    s = np.sort(rng.choice(length // 30, n, replace=False)).astype(np.int64) * 30
    e = s + rng.integers(1, 31, n)
    v = rng.choice([0.0, 1.0, 2.0], n).astype(np.float32)
    recs = {"chr1": (s, e, v), "chr2": (s[:1000], e[:1000], v[:1000])}
    path = tmp_path / "big.bw"
    write_bedgraph(path, [("chr1", length), ("chr2", length)], recs)
    with BigWig(path) as bw:
        assert len(bw._leaves) > 256
    raw = path.read_bytes()
    index = struct.unpack_from("<Q", raw, 24)[0]
    assert raw[index + 48] == 0  # the root is not a leaf
    rng = np.random.default_rng(12)
    st = rng.integers(-1000, length + 1000, 400)
    en = st + rng.choice([0, 100, 5_000, 2_000_000], 400)
    with BigWig(path) as bw:
        for chrom, r in recs.items():
            assert_same(bw.intervals(chrom, st, en), oracle(r, length, st, en))
            whole = bw.intervals(chrom, np.array([0]), np.array([length]))
            assert whole[0].tolist() == [len(r[0])]
    ref = pybigwig_records(path, "chr2")  # the oracle agrees with what was written
    np.testing.assert_array_equal(ref[1], recs["chr2"][1])


# ----------------------------------------------------------------------------- other layouts


def mixed_blocks(rng: np.random.Generator) -> list[list[Section]]:
    """Several sections per block, mixed types, one block spanning two chroms."""
    bg = [(int(x), int(x) + 7, float(rng.normal())) for x in range(0, 700, 10)]
    return [
        [(0, 1, 0, 0, 0, bg[:30]), (0, 3, 400, 25, 10, [1.0, 0.0, 0.0, 2.0]), (0, 1, 0, 0, 0, [])],
        [(0, 2, 0, 0, 3, [(600, 0.5), (620, 0.5), (700, -1.0)]), (1, 1, 0, 0, 0, bg[:5])],
        [(1, 3, 1000, 100, 100, [float(x) for x in rng.normal(size=20)])],
        [(2, 1, 0, 0, 0, [(5, 9, 1.0)])],
    ]


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("compress", [True, False])
def test_own_writer_layouts(tmp_path: Path, endian: str, compress: bool) -> None:
    blocks = mixed_blocks(np.random.default_rng(5))
    chroms = [("chrB", 5_000), ("chrA", 3_100), ("chrC", 20)]
    path = tmp_path / "own.bw"
    write_bbi(path, chroms, blocks, endian=endian, compress=compress)
    with BigWig(path) as bw:
        assert dict(bw.chroms) == dict(chroms)
    records = {name: bbi_records(blocks, cid) for cid, (name, _) in enumerate(chroms)}
    check_file(path, records, seed=6, n=100)
    if endian == "<":
        # pyBigWig reads our little-endian files (the writer is sound), but only the first
        # section of each block: check it on one section per block, as real writers lay out.
        flat = [[s] for blk in blocks for s in blk if s[5]]
        write_bbi(path, chroms, flat, endian=endian, compress=compress)
        for cid, (name, _) in enumerate(chroms):
            ref = pybigwig_records(path, name)
            for got, want in zip(ref, bbi_records(flat, cid), strict=True):
                np.testing.assert_array_equal(got, want)
            for got, want in zip(ref, records[name], strict=True):
                np.testing.assert_array_equal(got, want)


def test_two_level_chrom_tree(tmp_path: Path) -> None:
    """UCSC's writers put 256 chroms in a node: assemblies with scaffolds get a deeper tree."""
    chroms = [(f"scaffold_{i}", 1_000 + i) for i in range(600)]
    blocks = [
        [(cid, 1, 0, 0, 0, [(10, 20, float(cid)), (20, 35, 0.0)])] for cid in (0, 7, 300, 599)
    ]
    path = tmp_path / "scaffolds.bw"
    write_bbi(path, chroms, blocks, chrom_block=256)
    with BigWig(path) as bw:
        assert list(bw.chroms.items()) == sorted(chroms)  # tree order
    records = {chroms[cid][0]: bbi_records(blocks, cid) for cid in (0, 7, 300, 599, 5)}
    check_file(path, records, seed=13, n=20)


def test_overlapping_and_unsorted_records(tmp_path: Path) -> None:
    """Not what writers produce, but the answer must still follow the rule, in file order."""
    rng = np.random.default_rng(9)
    s = rng.integers(0, 9_000, 600)
    e = s + rng.integers(1, 900, 600)
    items = [(int(a), int(b), float(c)) for a, b, c in zip(s, e, rng.normal(size=600), strict=True)]
    blocks = [[(0, 1, 0, 0, 0, items[i : i + 100])] for i in range(0, 600, 100)]
    blocks.insert(2, [(0, 1, 0, 0, 0, [(0, 10_000, 4.0)])])  # one record spanning everything
    path = tmp_path / "overlap.bw"
    write_bbi(path, [("chr1", 10_000)], blocks)
    check_file(path, {"chr1": bbi_records(blocks, 0)}, seed=10, n=200)

    items.sort()  # sorted by start but overlapping: the middle path
    blocks = [[(0, 1, 0, 0, 0, items[i : i + 50])] for i in range(0, 600, 50)]
    write_bbi(path, [("chr1", 10_000)], blocks)
    check_file(path, {"chr1": bbi_records(blocks, 0)}, seed=11, n=200)


def test_many_candidates_are_gathered_in_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from farm.artifacts.dataset import bigwig

    monkeypatch.setattr(bigwig, "_MAX_CANDIDATES", 7)
    items = [(i * 10, i * 10 + 10 + i % 3 * 15, float(i)) for i in range(300)]  # overlapping
    blocks = [[(0, 1, 0, 0, 0, items[i : i + 40])] for i in range(0, 300, 40)]
    path = tmp_path / "groups.bw"
    write_bbi(path, [("chr1", 3_000)], blocks)
    check_file(path, {"chr1": bbi_records(blocks, 0)}, seed=12, n=50)


# ----------------------------------------------------------------------------- errors


def assert_one_sentence(err: pytest.ExceptionInfo[InputError], path: Path) -> None:
    msg = str(err.value)
    assert str(path) in msg
    assert msg.endswith(".")
    assert ". " not in msg


def test_missing_text_bigbed_and_empty_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.bw"
    with pytest.raises(InputError) as err:
        BigWig(missing)
    assert_one_sentence(err, missing)
    assert "does not exist" in str(err.value)

    text = tmp_path / "track.bedgraph"
    text.write_text("chr1\t0\t10\t1.0\n" * 20)
    with pytest.raises(InputError) as err:
        BigWig(text)
    assert_one_sentence(err, text)
    assert "not a bigWig" in str(err.value)

    bigbed = tmp_path / "peaks.bb"
    bigbed.write_bytes(struct.pack("<I", 0x8789F2EB) + bytes(200))
    with pytest.raises(InputError) as err:
        BigWig(bigbed)
    assert_one_sentence(err, bigbed)
    assert "bigBed" in str(err.value)

    empty = tmp_path / "empty.bw"
    empty.write_bytes(b"")
    with pytest.raises(InputError) as err:
        BigWig(empty)
    assert_one_sentence(err, empty)

    with pytest.raises(InputError) as err:
        BigWig(tmp_path)
    assert_one_sentence(err, tmp_path)
    assert "not a regular file" in str(err.value)


def test_truncated_file(bedgraph_file: tuple[Path, dict[str, Records]], tmp_path: Path) -> None:
    path, _ = bedgraph_file
    raw = path.read_bytes()
    data_off, index_off = struct.unpack_from("<QQ", raw, 16)
    for cut in (30, 100, (data_off + index_off) // 2, index_off + 60):
        short = tmp_path / f"cut{cut}.bw"
        short.write_bytes(raw[:cut])
        with pytest.raises(InputError) as err, BigWig(short) as bw:  # the index: at the query
            bw.intervals(next(iter(bw.chroms)), np.array([0]), np.array([10]))
        assert_one_sentence(err, short)
        assert "truncated or corrupt" in str(err.value)


def test_corrupt_block_fails_at_query_time(
    bedgraph_file: tuple[Path, dict[str, Records]], tmp_path: Path
) -> None:
    path, _ = bedgraph_file
    with BigWig(path) as bw:
        leaf = bw._leaves[0]
        name = next(c for c, i in bw._chrom_ids.items() if i == leaf["sc"])
        start = int(leaf["ss"])
    raw = bytearray(path.read_bytes())
    off = int(leaf["off"])
    raw[off + 10 : off + 60] = bytes(range(50))
    bad = tmp_path / "bad.bw"
    bad.write_bytes(bytes(raw))
    with BigWig(bad) as bw:
        with pytest.raises(InputError) as err:
            bw.intervals(name, np.array([start]), np.array([start + 100]))
        assert_one_sentence(err, bad)
        assert f"byte {off}" in str(err.value)
        # other chroms' blocks are still readable
        other = next(c for c in bw.chroms if c != name)
        bw.intervals(other, np.array([0]), np.array([100]))


def test_bad_section_type_and_short_section(tmp_path: Path) -> None:
    for damage in ("type", "count"):
        blocks = [[(0, 1, 0, 0, 0, [(0, 5, 1.0), (5, 9, 2.0)])]]
        path = tmp_path / f"{damage}.bw"
        write_bbi(path, [("chr1", 100)], blocks, compress=False)
        raw = bytearray(path.read_bytes())
        data = struct.unpack_from("<Q", raw, 16)[0] + 8
        if damage == "type":
            raw[data + 20] = 9
        else:
            struct.pack_into("<H", raw, data + 22, 50)
        path.write_bytes(bytes(raw))
        with BigWig(path) as bw, pytest.raises(InputError) as err:
            bw.intervals("chr1", np.array([0]), np.array([100]))
        assert_one_sentence(err, path)


def test_garbage_sizes_in_trees(
    bedgraph_file: tuple[Path, dict[str, Records]], tmp_path: Path
) -> None:
    """Huge key and block sizes give an InputError (or are harmless), not a giant allocation."""
    path, recs = bedgraph_file
    raw = path.read_bytes()
    chrom_tree, _, index = struct.unpack_from("<QQQ", raw, 8)
    bad = bytearray(raw)
    struct.pack_into("<I", bad, chrom_tree + 8, 0xFFFFFFF0)  # keySize
    broken = tmp_path / "keysize.bw"
    broken.write_bytes(bytes(bad))
    with pytest.raises(InputError) as err:
        BigWig(broken)
    assert_one_sentence(err, broken)

    bad = bytearray(raw)
    struct.pack_into("<I", bad, index + 4, 0xFFFFFFFF)  # R-tree blockSize: only a read bound
    odd = tmp_path / "blocksize.bw"
    odd.write_bytes(bytes(bad))
    with BigWig(odd) as bw:
        assert_same(
            bw.intervals("chrM", np.array([0]), np.array([16_569])),
            oracle(recs["chrM"], 16_569, np.array([0]), np.array([16_569])),
        )


def test_close_and_context_manager(bedgraph_file: tuple[Path, dict[str, Records]]) -> None:
    path, _ = bedgraph_file
    bw = BigWig(path)
    bw.close()
    bw.close()  # idempotent
    with pytest.raises(ValueError):
        bw.intervals("chr1", np.array([0]), np.array([10]))
    with BigWig(path) as bw:
        assert bw.chroms["chrM"] == 16_569
    assert bw._fd is None
