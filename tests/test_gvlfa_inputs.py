"""Bad input gets one clear sentence and publishes nothing; bad caches are found and rebuilt."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pysam
import pytest

from farm.artifacts import gvlfa
from farm.artifacts.base import State
from farm.errors import (
    ArtifactInvalidError,
    DestinationError,
    InputError,
    SourceChangedError,
    TooNewError,
)
from farm.publish import ASIDE_MARK, STAGING_MARK


def _assert_nothing_published(fasta: Path, dest: Path | None = None) -> None:
    dest = dest or gvlfa.default_dest(fasta)
    assert not dest.exists()
    left = [p.name for p in dest.parent.iterdir() if STAGING_MARK in p.name or ASIDE_MARK in p.name]
    assert left == []


def _bad_missing(d: Path) -> Path:
    return d / "absent.fa"


def _bad_empty(d: Path) -> Path:
    (d / "empty.fa").write_bytes(b"")
    return d / "empty.fa"


def _bad_blank(d: Path) -> Path:
    (d / "blank.fa").write_bytes(b"\n\n  \n")
    return d / "blank.fa"


def _bad_vcf(d: Path) -> Path:
    (d / "calls.vcf").write_bytes(b"##fileformat=VCFv4.2\n#CHROM\tPOS\tID\n20\t1\t.\n")
    return d / "calls.vcf"


def _bad_binary(d: Path) -> Path:
    (d / "blob.fa").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64)
    return d / "blob.fa"


def _bad_duplicate(d: Path) -> Path:
    (d / "dup.fa").write_bytes(b">chr1\nACGT\n>chr2\nAC\n>chr1 again\nGG\n")
    return d / "dup.fa"


def _bad_gt_mid_line(d: Path) -> Path:
    (d / "mid.fa").write_bytes(b">chr1\nACGT>chr2\nAC\n")
    return d / "mid.fa"


def _bad_truncated_bgzip(d: Path, real: dict[str, Path]) -> Path:
    data = real["chr20.bgz"].read_bytes()
    (d / "cut.fa.gz").write_bytes(data[: len(data) // 2])  # cut inside a block
    return d / "cut.fa.gz"


def _bad_bgzip_cut_at_block(d: Path, real: dict[str, Path]) -> Path:
    data = real["chr20.bgz"].read_bytes()
    # Drop the empty EOF block: every remaining gzip member is whole, so only the missing
    # BGZF end-of-file marker tells that data is gone.
    (d / "cut.fa.gz").write_bytes(data[:-28])
    return d / "cut.fa.gz"


BAD_INPUTS: dict[str, Callable[..., Path]] = {
    "missing": _bad_missing,
    "empty": _bad_empty,
    "blank": _bad_blank,
    "vcf": _bad_vcf,
    "binary": _bad_binary,
    "duplicate contig": _bad_duplicate,
    "'>' mid-line": _bad_gt_mid_line,
    "truncated bgzip": _bad_truncated_bgzip,
    "bgzip without EOF block": _bad_bgzip_cut_at_block,
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_is_one_sentence_naming_the_file_and_publishes_nothing(
    kind: str, tmp_path: Path, real_genomes: dict[str, Path]
) -> None:
    make = BAD_INPUTS[kind]
    fasta = make(tmp_path, real_genomes) if "bgzip" in kind else make(tmp_path)
    with pytest.raises(InputError) as info:
        gvlfa.ensure_cache(fasta)
    message = str(info.value)
    assert str(fasta) in message
    assert message.endswith(".") and "\n" not in message
    _assert_nothing_published(fasta)


def test_a_parent_that_is_a_file_is_a_destination_error(
    real_genomes: dict[str, Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_bytes(b"")
    dest = blocker / "ref.gvlfa"
    with pytest.raises(DestinationError) as info:
        gvlfa.ensure_cache(real_genomes["lambda"], dest)
    assert str(dest) in str(info.value)
    assert blocker.read_bytes() == b""


def test_permission_denied_is_a_destination_error(
    real_genomes: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, where chmod blocks nothing: inject the refusal at the mkdir seam.
    real_mkdir = os.mkdir

    def mkdir(path: str, *args: object, **kwargs: object) -> None:
        if STAGING_MARK in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "mkdir", mkdir)
    fasta = real_genomes["lambda"]
    with pytest.raises(DestinationError) as info:
        gvlfa.ensure_cache(fasta)
    assert str(gvlfa.default_dest(fasta)) in str(info.value)
    assert "permission denied" in str(info.value)
    _assert_nothing_published(fasta)


def _force_streaming(monkeypatch: pytest.MonkeyPatch) -> None:
    """No layout, from an index or a scan: the build takes the streaming reader."""
    monkeypatch.setattr(gvlfa, "read_fai", lambda _path: None)
    monkeypatch.setattr(gvlfa, "infer_layout", lambda _path: None)


def _built(fasta: Path) -> Path:
    return gvlfa.ensure_cache(fasta).dest


def _snapshot(dest: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(dest.iterdir())}


def test_a_newer_format_is_refused_and_never_downgraded(real_genomes: dict[str, Path]) -> None:
    fasta = real_genomes["lambda"]
    dest = _built(fasta)
    meta = json.loads((dest / gvlfa.METADATA_FILE).read_text())
    meta["format_version"] = "2.0.0"
    (dest / gvlfa.METADATA_FILE).write_text(json.dumps(meta))
    before = _snapshot(dest)
    assert gvlfa.classify(dest).state is State.TOO_NEW
    with pytest.raises(TooNewError) as info:
        gvlfa.ensure_cache(fasta)
    assert str(dest) in str(info.value) and "2.0.0" in str(info.value)
    with pytest.raises(TooNewError):
        gvlfa.verify(dest)
    assert _snapshot(dest) == before


def test_a_destination_holding_other_files_is_refused_untouched(
    real_genomes: dict[str, Path],
) -> None:
    fasta = real_genomes["lambda"]
    dest = gvlfa.default_dest(fasta)
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    before = _snapshot(dest)
    assert gvlfa.classify(dest).state is State.FOREIGN
    with pytest.raises(InputError) as info:
        gvlfa.ensure_cache(fasta)
    assert str(dest) in str(info.value) and "notes.txt" in str(info.value)
    assert _snapshot(dest) == before


def test_a_stale_cache_is_rebuilt(real_genomes: dict[str, Path]) -> None:
    fasta = real_genomes["lambda"]
    dest = _built(fasta)
    with open(fasta, "ab") as f:
        f.write(b">extra\nacgtn\n")
    assert gvlfa.classify(dest).state is State.STALE
    result = gvlfa.ensure_cache(fasta)
    assert result.action == "rebuilt"
    assert list(result.metadata.contigs)[-1] == "extra"
    assert (dest / gvlfa.DATA_FILE).read_bytes().endswith(b"ACGTN")
    assert gvlfa.classify(dest, deep=True).state is State.FRESH


def test_a_cache_of_the_wrong_size_is_rebuilt(real_genomes: dict[str, Path]) -> None:
    fasta = real_genomes["yeast"]
    dest = _built(fasta)
    good = (dest / gvlfa.DATA_FILE).read_bytes()
    os.truncate(dest / gvlfa.DATA_FILE, 1000)
    assert gvlfa.classify(dest).state is State.CORRUPT
    assert gvlfa.ensure_cache(fasta).action == "rebuilt"
    assert (dest / gvlfa.DATA_FILE).read_bytes() == good


def test_same_size_corruption_is_caught_only_by_a_deep_check(
    real_genomes: dict[str, Path],
) -> None:
    dest = _built(real_genomes["yeast"])
    data = dest / gvlfa.DATA_FILE
    with open(data, "r+b") as f:
        f.seek(100_000)
        old = f.read(1)
        f.seek(100_000)
        f.write(b"A" if old != b"A" else b"C")
    assert gvlfa.classify(dest).state is State.FRESH  # size and fingerprint still match
    assert gvlfa.classify(dest, deep=True).state is State.CORRUPT
    with pytest.raises(ArtifactInvalidError) as info:
        gvlfa.verify(dest)
    assert str(data) in str(info.value)


@pytest.mark.parametrize("path", ["streaming", "fixed-width"])
def test_a_source_changing_mid_build_publishes_nothing(
    real_genomes: dict[str, Path], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    fasta = real_genomes["yeast"]

    def edit() -> None:
        with open(fasta, "r+b") as f:  # same size, first MiB: only the content changes
            f.seek(200)
            f.write(b"N" * 10)

    if path == "streaming":
        _force_streaming(monkeypatch)
        real_stream = gvlfa.stream_contigs

        def stream_while_edited(p: Path, sink: Callable[[bytes], object]) -> dict[str, int]:
            return real_stream(p, lambda block: (edit(), sink(block)), block_size=64 << 10)

        monkeypatch.setattr(gvlfa, "stream_contigs", stream_while_edited)
    else:
        real_copy = gvlfa.copy_fixed_width

        def copy_while_edited(*args: object, on_chunk: Callable, **kwargs: object) -> object:
            return real_copy(*args, on_chunk=lambda k, c: (edit(), on_chunk(k, c)), **kwargs)

        monkeypatch.setattr(gvlfa, "copy_fixed_width", copy_while_edited)
    with pytest.raises(SourceChangedError) as info:
        gvlfa.ensure_cache(fasta)
    assert str(fasta) in str(info.value)
    _assert_nothing_published(fasta)


def test_a_fresh_cache_of_another_fasta_at_the_destination_is_replaced(
    real_genomes: dict[str, Path], tmp_path: Path
) -> None:
    dest = tmp_path / "shared.gvlfa"
    gvlfa.ensure_cache(real_genomes["lambda"], dest)
    result = gvlfa.ensure_cache(real_genomes["yeast"], dest)
    assert result.action == "rebuilt"
    assert list(result.metadata.contigs) == ["chrI"]
    assert gvlfa.read_metadata(dest).source.filename == real_genomes["yeast"].name


def _legacy_from_build(fasta: Path, tmp_path: Path) -> Path:
    built = gvlfa.ensure_cache(fasta, tmp_path / "scratch.gvlfa").dest
    legacy = gvlfa.legacy_path(fasta)
    shutil.copyfile(built / gvlfa.DATA_FILE, legacy)
    shutil.rmtree(built)
    return legacy


def _legacy_of(
    real_genomes: dict[str, Path], tricky_fasta: Path, tmp_path: Path, genome: str
) -> tuple[Path, Path]:
    """A genome and a legacy ``X.gvl`` of it with the right bytes (``-no-fai``: no index)."""
    name = genome.removesuffix("-no-fai")
    fasta = tricky_fasta if name == "tricky" else real_genomes[name]
    if genome.endswith("-no-fai"):
        fasta.with_name(fasta.name + ".fai").unlink()
    return fasta, _legacy_from_build(fasta, tmp_path)


@pytest.mark.parametrize("genome", ["yeast", "yeast-no-fai", "lambda.bgz", "tricky"])
def test_a_legacy_cache_is_checked_migrated_and_removed(
    real_genomes: dict[str, Path], tricky_fasta: Path, tmp_path: Path, genome: str
) -> None:
    fasta, legacy = _legacy_of(real_genomes, tricky_fasta, tmp_path, genome)
    legacy_bytes = legacy.read_bytes()
    result = gvlfa.ensure_cache(fasta)
    assert result.action == "migrated"
    assert not legacy.exists()
    assert (result.dest / gvlfa.DATA_FILE).read_bytes() == legacy_bytes
    gvlfa.verify(result.dest)


def test_a_legacy_cache_of_the_wrong_size_is_left_alone(
    real_genomes: dict[str, Path], tmp_path: Path
) -> None:
    fasta = real_genomes["yeast"]
    legacy = gvlfa.legacy_path(fasta)
    legacy.write_bytes(b"ACGT" * 10)
    result = gvlfa.ensure_cache(fasta)
    assert result.action == "built"
    assert legacy.read_bytes() == b"ACGT" * 10
    gvlfa.verify(result.dest)


def _last_byte_changed(good: bytes) -> bytes:
    return good[:-1] + (b"A" if good[-1:] != b"A" else b"C")


# Legacy files a size check passes (or, without a .fai, never makes), none the source's bytes.
LEGACY_DAMAGE = {
    "one byte in the middle": lambda good: good[:1000] + bytes([good[1000] ^ 0x02]) + good[1001:],
    "the last byte": _last_byte_changed,
    "soft-masking kept": lambda good: good[:500] + good[500:600].lower() + good[600:],
    "one byte short": lambda good: good[:-1],
    "one byte over": lambda good: good + b"N",
}


@pytest.mark.parametrize("genome", ["yeast", "yeast-no-fai"])
@pytest.mark.parametrize("damage", sorted(LEGACY_DAMAGE))
def test_a_legacy_cache_that_is_not_the_source_is_left_alone(
    real_genomes: dict[str, Path], tricky_fasta: Path, tmp_path: Path, damage: str, genome: str
) -> None:
    fasta, legacy = _legacy_of(real_genomes, tricky_fasta, tmp_path, genome)
    good = legacy.read_bytes()
    bad = LEGACY_DAMAGE[damage](good)
    assert bad != good
    legacy.write_bytes(bad)
    result = gvlfa.ensure_cache(fasta)
    assert result.action == "built"
    assert (result.dest / gvlfa.DATA_FILE).read_bytes() == good
    assert legacy.read_bytes() == bad
    gvlfa.verify(result.dest)
    assert not [p for p in fasta.parent.iterdir() if STAGING_MARK in p.name]


@pytest.mark.parametrize("index", [True, False], ids=["fixed-width", "streaming"])
def test_a_full_disk_during_a_rebuild_keeps_the_old_cache(
    real_genomes: dict[str, Path], monkeypatch: pytest.MonkeyPatch, index: bool
) -> None:
    fasta = real_genomes["yeast"]
    if not index:
        _force_streaming(monkeypatch)
    dest = _built(fasta)
    with open(fasta, "ab") as f:
        f.write(b">extra\nACGT\n")  # stale now: ensure_cache will rebuild
    if index:
        pysam.faidx(str(fasta))
    before = _snapshot(dest)

    def no_space(*_args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", no_space)
    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(DestinationError) as info:
        gvlfa.ensure_cache(fasta)
    assert str(dest) in str(info.value) and "disk is full" in str(info.value)
    assert _snapshot(dest) == before
    assert not [p for p in dest.parent.iterdir() if STAGING_MARK in p.name]
