"""The parallel fixed-width path writes exactly what the streaming reader writes, or steps aside."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pysam
import pytest

from farm.artifacts import fasta as fa
from farm.artifacts import gvlfa
from farm.artifacts.bgzf import Blocks
from farm.fingerprint import ChunkedCrc, chunk_crc_checksum


def _streamed(path: Path) -> tuple[dict[str, int], bytes]:
    parts: list[bytes] = []
    contigs = fa.stream_contigs(path, parts.append)
    return contigs, b"".join(parts)


def _fixed_width(
    path: Path,
    out: Path,
    *,
    chunk_size: int,
    threads: int = 2,
    records: list[fa.FaiRecord] | None = None,
) -> dict[str, int]:
    records = records or fa.read_fai(path)
    assert records is not None
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        return fa.copy_fixed_width(
            path, records, fd, chunk_size=chunk_size, on_chunk=lambda _k, _c: None, threads=threads
        )
    finally:
        os.close(fd)


def _no_streaming(*_args: object, **_kwargs: object) -> dict[str, int]:
    raise AssertionError("the fixed-width path should have been taken")


def _index(path: Path) -> Path:
    pysam.faidx(str(path))  # htslib's own index, as a user would have it
    return path


@pytest.fixture
def layouts(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Fixed-width FASTAs with what makes chunk arithmetic hard: contigs shorter than a line,
    an empty contig, line ends that are CRLF, lengths that are exact multiples of a line."""
    d = tmp_path / "layouts"
    d.mkdir()
    specs = {
        "lf": (b"\n", {"a": 1, "b": 59, "c": 60, "d": 61, "e": 0, "f": 1234, "g": 120}),
        "crlf": (b"\r\n", {"chr1": 500, "chr2": 7, "chr3": 1000}),
    }
    paths = {}
    for name, (newline, contigs) in specs.items():
        body = []
        for i, (contig, length) in enumerate(contigs.items()):
            seq = (b"ACGTNacgtnRYKMswbdhv" * (length // 20 + 1))[i : i + length]
            body.append(b">" + contig.encode() + b" desc" + newline)
            body.extend(seq[j : j + 60] + newline for j in range(0, length, 60))
        path = d / f"{name}.fa"
        path.write_bytes(b"".join(body))
        paths[name] = _index(path)
    yield paths


@pytest.mark.parametrize("chunk_size", [1, 7, 60, 61, 1000, 1 << 20])
@pytest.mark.parametrize("layout", ["lf", "crlf"])
def test_fixed_width_equals_streaming_at_any_chunk_size(
    layouts: dict[str, Path], tmp_path: Path, layout: str, chunk_size: int
) -> None:
    path = layouts[layout]
    out = tmp_path / "seq.bin"
    contigs = _fixed_width(path, out, chunk_size=chunk_size)
    expected_contigs, expected = _streamed(path)
    assert list(contigs.items()) == list(expected_contigs.items())
    assert out.read_bytes() == expected


@pytest.mark.parametrize(
    "key", ["lambda", "yeast", "chr20", "lambda.bgz", "yeast.bgz", "chr20.bgz"]
)
def test_real_genomes_take_the_fast_path_and_match_streaming(
    real_genomes: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    path = real_genomes[key]
    if fa.read_fai(path) is None:
        _index(path)
    expected_contigs, expected = _streamed(path)

    monkeypatch.setattr(gvlfa, "stream_contigs", _no_streaming)
    out = tmp_path / "out"
    out.mkdir()
    meta = gvlfa.write_cache(path, out, out)
    assert list(meta.contigs.items()) == list(expected_contigs.items())
    assert (out / gvlfa.DATA_FILE).read_bytes() == expected
    running = ChunkedCrc()
    running.update(expected)
    assert meta.sequence_checksum == running.hexdigest() == chunk_crc_checksum(out / "sequence.bin")


def _ragged_line(path: Path) -> None:
    data = path.read_bytes()
    i = data.index(b"\n", data.index(b"\n") + 1)  # end of the first sequence line
    path.write_bytes(data[: i - 3] + data[i:] + b"ACG\n")  # same size, one short line


def _space_in_line(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[data.index(b"\n") + 5] = ord(" ")
    path.write_bytes(bytes(data))


def _renamed_header(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b">", b">x", 1)[:-1])


def _gt_mid_line(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[data.index(b"\n") + 5] = ord(">")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("layout_from", ["stale index", "scan"])
@pytest.mark.parametrize(
    "damage",
    [_ragged_line, _space_in_line, _renamed_header, _gt_mid_line],
    ids=lambda f: f.__name__,
)
def test_the_fast_path_never_disagrees_with_streaming(
    real_genomes: dict[str, Path], tmp_path: Path, damage, layout_from: str
) -> None:
    path = real_genomes["lambda"]
    fai = path.with_name(path.name + ".fai")
    damage(path)
    if layout_from == "stale index":
        os.utime(fai)  # the stale index now looks trustworthy: only the layout check can tell
        records = fa.read_fai(path)
    else:
        fai.unlink()
        records = fa.infer_layout(path)
    try:
        expected_contigs, expected = _streamed(path)
    except fa.InputError:
        expected_contigs, expected = {}, None
    if records is not None:
        try:
            contigs = _fixed_width(path, tmp_path / "seq.bin", chunk_size=1000, records=records)
        except fa.NotFixedWidth:
            pass  # it stepped aside: fine
        else:
            assert layout_from == "scan"  # a stale index is always caught
            assert (contigs, (tmp_path / "seq.bin").read_bytes()) == (expected_contigs, expected)
    if expected is None:
        with pytest.raises(fa.InputError):
            gvlfa.ensure_cache(path)
        return
    result = gvlfa.ensure_cache(path)
    assert list(result.metadata.contigs.items()) == list(expected_contigs.items())
    assert (result.dest / gvlfa.DATA_FILE).read_bytes() == expected
    gvlfa.verify(result.dest)


@pytest.mark.parametrize("key", ["lf", "crlf", "lambda", "yeast", "chr20", "tricky"])
def test_the_scanned_layout_is_htslibs_index(
    key: str, layouts: dict[str, Path], real_genomes: dict[str, Path], tricky_fasta: Path
) -> None:
    path = {**layouts, **real_genomes, "tricky": tricky_fasta}[key]
    if fa.read_fai(path) is None:
        _index(path)
    assert fa.infer_layout(path) == fa.read_fai(path)


def test_without_an_index_the_fast_path_is_still_taken(
    real_genomes: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = real_genomes["chr20"]
    path.with_name(path.name + ".fai").unlink(missing_ok=True)
    expected_contigs, expected = _streamed(path)
    monkeypatch.setattr(gvlfa, "stream_contigs", _no_streaming)
    result = gvlfa.ensure_cache(path)
    assert not path.with_name(path.name + ".fai").exists()  # nothing written beside the source
    assert result.metadata.contigs == expected_contigs
    assert (result.dest / gvlfa.DATA_FILE).read_bytes() == expected


def test_an_index_older_than_the_fasta_is_not_trusted(real_genomes: dict[str, Path]) -> None:
    path = real_genomes["yeast"]
    fai = path.with_name(path.name + ".fai")
    os.utime(fai, (0, 0))
    assert fa.read_fai(path) is None
    assert fa.read_fai(real_genomes["lambda.bgz"]) is not None  # BGZF: the same index rules


def _bgzipped(real_genomes: dict[str, Path], tmp_path: Path) -> Path:
    """The chr20 genome recompressed in small BGZF blocks (many blocks per chunk), indexed
    by htslib (.fai and .gzi)."""
    path = tmp_path / "chr20.fa.gz"
    pysam.tabix_compress(str(real_genomes["chr20"]), str(path))
    return _index(path)


def test_a_bgzipped_genome_is_inflated_by_the_chunks_from_its_gzi(
    real_genomes: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _bgzipped(real_genomes, tmp_path)
    assert Blocks(path, use_gzi=True).from_gzi
    expected_contigs, expected = _streamed(path)
    monkeypatch.setattr(gvlfa, "stream_contigs", _no_streaming)
    for chunk_size in (1000, 1 << 16, 1 << 20):
        out = tmp_path / f"seq{chunk_size}.bin"
        contigs = _fixed_width(path, out, chunk_size=chunk_size)
        assert (contigs, out.read_bytes()) == (expected_contigs, expected)


@pytest.mark.parametrize("damage", ["shifted", "truncated", "inflated sizes"])
def test_a_gzi_that_lies_is_caught_and_the_genome_streamed(
    real_genomes: dict[str, Path], tmp_path: Path, damage: str
) -> None:
    path = _bgzipped(real_genomes, tmp_path)
    gzi = path.with_name(path.name + ".gzi")
    _count, *entries = struct.unpack(f"<{len(gzi.read_bytes()) // 8}Q", gzi.read_bytes())
    pairs = [entries[i : i + 2] for i in range(0, len(entries), 2)]
    if damage == "shifted":
        pairs[5][0] += 1
    elif damage == "truncated":
        pairs = pairs[:-3]
    else:
        for p in pairs[10:]:
            p[1] += 60
    gzi.write_bytes(
        struct.pack(f"<{1 + 2 * len(pairs)}Q", len(pairs), *(x for p in pairs for x in p))
    )
    expected_contigs, expected = _streamed(path)
    with pytest.raises(fa.NotFixedWidth):
        _fixed_width(path, tmp_path / "seq.bin", chunk_size=1 << 16)
    result = gvlfa.ensure_cache(path)  # the streaming reader takes over: same bytes
    assert result.metadata.contigs == expected_contigs
    assert (result.dest / gvlfa.DATA_FILE).read_bytes() == expected


@pytest.mark.parametrize("direct", ["written direct", "no O_DIRECT here", "O_DIRECT refused"])
def test_chunks_written_past_the_page_cache_are_the_same_bytes(
    real_genomes: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: str
) -> None:
    path = real_genomes["chr20"]
    if fa.read_fai(path) is None:
        _index(path)
    _, expected = _streamed(path)
    opened: list[int] = []
    real_direct, real_pwrite = fa._direct_fd, os.pwrite

    def direct_fd(out_fd: int) -> int | None:
        fd = None if direct == "no O_DIRECT here" else real_direct(out_fd)
        opened.extend([] if fd is None else [fd])
        return fd

    def pwrite(fd: int, data, at: int) -> int:
        if fd in opened and direct == "O_DIRECT refused":
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, at)

    monkeypatch.setattr(fa, "_direct_fd", direct_fd)
    monkeypatch.setattr(os, "pwrite", pwrite)
    out = tmp_path / "seq.bin"
    _fixed_width(path, out, chunk_size=1 << 16)
    assert out.read_bytes() == expected
    assert bool(opened) == (direct != "no O_DIRECT here")  # this filesystem takes O_DIRECT
