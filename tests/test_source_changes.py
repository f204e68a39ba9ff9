"""A source that changes under a build is never published as valid, even when the change
keeps the size, the mtime (set back) and the fingerprint (past the first MiB): the build
stamps each source's inode and ctime too. A source that is not the content the request was
keyed with (``expected``) fails the build before anything is written.

Edits are injected from inside the real builders by wrapping a function they call, so they
land deterministically after the source was read.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from farm import fingerprint as fingerprint_module
from farm.artifacts import gvlfa
from farm.artifacts.base import State
from farm.artifacts.dataset import (
    DatasetParams,
    build_dataset,
    classify_dataset,
    validate_dataset,
    writer,
)
from farm.errors import SourceChangedError
from farm.fingerprint import (
    FINGERPRINT_WINDOW,
    SETTLE_NS,
    Fingerprint,
    SourceStamp,
    fingerprint,
)
from farm.progress import Progress
from farm.publish import ASIDE_MARK, STAGING_MARK, Outcome, Owner
from tests.support.dataset_data import PGEN, VCF, copy_inputs

PAST_FIRST_MIB = FINGERPRINT_WINDOW + FINGERPRINT_WINDOW // 4


# --- changing a file behind the builder's back, the way that fooled the old checks -----------


def _signs(path: Path) -> tuple[int, int, Fingerprint]:
    """What the old checks compared: size, mtime and the fingerprint."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns, fingerprint(path)


def _edit_in_place(path: Path, offset: int) -> None:
    """Change one sequence letter at ``offset`` or just after, then set the times back."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        chunk = f.read(64)
        i = next(k for k, b in enumerate(chunk) if b not in b"\r\n\t")
        old = chunk[i : i + 1]
        f.seek(offset + i)
        f.write({b"A": b"C", b"+": b"-", b"-": b"+"}.get(old, b"A"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replace_by_rename(path: Path, offset: int | None = None) -> None:
    """Put another file at ``path`` by rename: same size and times; edited at ``offset``."""
    st = path.stat()
    tmp = path.with_name(path.name + ".new")
    shutil.copyfile(path, tmp)
    if offset is not None:
        _edit_in_place(tmp, offset)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)


def _nothing_left(dest: Path) -> None:
    marks = (STAGING_MARK, ASIDE_MARK)
    assert [p.name for p in dest.parent.iterdir() if any(m in p.name for m in marks)] == []


def _snapshot(dest: Path) -> dict[str, tuple[int, bytes]]:
    return {
        p.relative_to(dest).as_posix(): (p.stat().st_ino, p.read_bytes())
        for p in sorted(dest.rglob("*"))
        if p.is_file()
    }


# --- caches --------------------------------------------------------------------------------


@pytest.fixture
def chr20(real_genomes: dict[str, Path]) -> Path:
    fasta = real_genomes["chr20"]  # plain, 2 MB: edits past the first MiB are real sequence
    assert fasta.stat().st_size > PAST_FIRST_MIB + FINGERPRINT_WINDOW // 2
    return fasta


def _during_cache_build(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[], None], after: Callable[[], None]
) -> None:
    """Run ``before`` once the source is stamped and ``after`` once it has been read."""
    real = gvlfa._write_sequence

    def write_sequence(fasta: Path, fd: int, progress: Progress) -> tuple[dict[str, int], str]:
        before()
        result = real(fasta, fd, progress)
        after()
        return result

    monkeypatch.setattr(gvlfa, "_write_sequence", write_sequence)


def test_two_same_size_edits_with_mtime_set_back_fail_the_cache_build(
    chr20: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The colleague's case: one edit before the builder reads, one after, both past the
    first MiB, mtime restored each time. The build read the in-between version, which is
    neither the file it was asked for nor the file that is there now."""
    signs = _signs(chr20)
    _during_cache_build(
        monkeypatch,
        lambda: _edit_in_place(chr20, PAST_FIRST_MIB),
        lambda: _edit_in_place(chr20, PAST_FIRST_MIB + 4096),
    )
    with pytest.raises(SourceChangedError) as info:
        gvlfa.ensure_cache(chr20)
    assert _signs(chr20) == signs  # invisible to size, mtime and fingerprint
    assert str(chr20) in str(info.value) and "while its cache was being built" in str(info.value)
    assert not gvlfa.default_dest(chr20).exists()
    _nothing_left(gvlfa.default_dest(chr20))


def test_a_cache_source_replaced_by_rename_with_size_and_mtime_kept_fails_the_build(
    chr20: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signs = _signs(chr20)
    _during_cache_build(
        monkeypatch, lambda: None, lambda: _replace_by_rename(chr20, PAST_FIRST_MIB)
    )
    with pytest.raises(SourceChangedError) as info:
        gvlfa.ensure_cache(chr20)
    assert _signs(chr20) == signs
    assert str(chr20) in str(info.value)
    assert not gvlfa.default_dest(chr20).exists()
    _nothing_left(gvlfa.default_dest(chr20))


def test_a_change_during_the_legacy_migration_publishes_nothing(
    chr20: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = gvlfa.ensure_cache(chr20, tmp_path / "scratch.gvlfa").dest
    legacy = gvlfa.legacy_path(chr20)
    shutil.copyfile(built / gvlfa.DATA_FILE, legacy)
    legacy_bytes = legacy.read_bytes()
    real = gvlfa._fai_lengths

    def lengths_then_edit(fasta: Path) -> dict[str, int] | None:
        found = real(fasta)
        _edit_in_place(fasta, PAST_FIRST_MIB)
        return found

    monkeypatch.setattr(gvlfa, "_fai_lengths", lengths_then_edit)
    with pytest.raises(SourceChangedError) as info:
        gvlfa.ensure_cache(chr20)
    assert str(chr20) in str(info.value)
    assert legacy.read_bytes() == legacy_bytes  # left for a later migration
    assert not gvlfa.default_dest(chr20).exists()
    _nothing_left(gvlfa.default_dest(chr20))


def test_a_cache_source_that_is_not_the_expected_one_fails_before_writing(
    chr20: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed = fingerprint(chr20)  # the request is keyed; then the file changes
    _edit_in_place(chr20, 100)
    dest = gvlfa.default_dest(chr20)
    started: list[Path] = []
    real = gvlfa._write_sequence
    monkeypatch.setattr(
        gvlfa,
        "_write_sequence",
        lambda p, fd, progress: (started.append(p), real(p, fd, progress))[1],
    )
    with pytest.raises(SourceChangedError) as info:
        gvlfa.ensure_cache(chr20, expected=keyed)
    assert str(chr20) in str(info.value) and "changed after" in str(info.value)
    assert started == []  # refused before reading a byte of sequence
    assert not dest.exists()
    _nothing_left(dest)

    # A fresh cache of the current file is not reused for a request keyed on the old one.
    assert gvlfa.ensure_cache(chr20).action == "built"
    before = _snapshot(dest)
    with pytest.raises(SourceChangedError):
        gvlfa.ensure_cache(chr20, expected=keyed)
    with pytest.raises(SourceChangedError):
        gvlfa.ensure_cache(chr20, expected=keyed, force=True)
    assert _snapshot(dest) == before
    _nothing_left(dest)
    # With the current fingerprint it is.
    assert gvlfa.ensure_cache(chr20, expected=fingerprint(chr20)).action == "reused"


def test_the_expected_fingerprint_is_the_one_recorded(chr20: Path) -> None:
    keyed = fingerprint(chr20)
    result = gvlfa.ensure_cache(chr20, expected=keyed)
    assert result.action == "built" and result.metadata.fingerprint == keyed
    assert gvlfa.classify(result.dest, deep=True).state is State.FRESH


def test_a_legacy_cache_is_not_migrated_for_an_unexpected_source(chr20: Path) -> None:
    legacy = gvlfa.legacy_path(chr20)
    legacy.write_bytes(b"N" * sum(gvlfa.stream_contigs(chr20, lambda _b: None).values()))
    keyed = fingerprint(chr20)
    _edit_in_place(chr20, 100)  # inside the first MiB: a new fingerprint
    with pytest.raises(SourceChangedError):
        gvlfa.ensure_cache(chr20, expected=keyed)
    assert legacy.exists()
    assert not gvlfa.default_dest(chr20).exists()


# --- the stamp itself ----------------------------------------------------------------------


def test_the_stamp_sees_what_size_mtime_and_fingerprint_miss(chr20: Path) -> None:
    stamp = SourceStamp.take(chr20)
    assert stamp.unchanged()
    _edit_in_place(chr20, PAST_FIRST_MIB)
    assert not stamp.unchanged()

    stamp = SourceStamp.take(chr20)
    _replace_by_rename(chr20)  # identical bytes, another inode: cannot be told from an edit
    assert not stamp.unchanged()

    stamp = SourceStamp.take(chr20)
    chr20.unlink()
    assert not stamp.unchanged()


def test_the_stamp_waits_for_a_just_written_file_to_settle(tmp_path: Path) -> None:
    """A just-written file is stamped only once its ctime is older than a clock tick, so a
    later change in the same tick cannot keep the stamped ctime (pre-6.13 kernels)."""
    path = tmp_path / "new.fa"
    path.write_bytes(b">c\nACGT\n")
    stamp = SourceStamp.take(path)
    assert os.stat(path).st_ctime_ns == stamp.ctime_ns
    assert stamp.ctime_ns + SETTLE_NS <= time.time_ns()


def test_a_file_that_keeps_changing_is_not_stamped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "growing.fa"
    path.write_bytes(b">c\nACGT\n")
    real_sleep = time.sleep

    def sleep_while_written(seconds: float) -> None:
        real_sleep(seconds)
        with open(path, "ab") as f:  # a writer that never stops for a whole clock tick
            f.write(b"ACGT\n")

    monkeypatch.setattr(fingerprint_module.time, "sleep", sleep_while_written)
    with pytest.raises(SourceChangedError) as info:
        SourceStamp.take(path)
    assert str(path) in str(info.value) and "being written" in str(info.value)


# --- datasets ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("chr20")
    copy_inputs(root)
    # A BED over 2 MiB: a long header, then the tiles, so its rows lie past the first MiB.
    with open(root / "big.bed", "w") as f:
        f.writelines(f"# header line {i:06d} {'x' * 80}\n" for i in range(24_000))
        f.write((root / "tiles.bed").read_text())
    yield root


def _during_dataset_build(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """Run ``change`` once the builder has read the BED (every source is stamped by then)."""
    real = writer.read_bed

    def read_bed(path: Path, strand_column: int = 6) -> Any:
        regions = real(path, strand_column)
        change()
        return regions

    monkeypatch.setattr(writer, "read_bed", read_bed)


def test_a_same_size_bed_edit_past_the_first_mib_fails_the_dataset_build(
    d: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bed = d / "big.bed"
    assert bed.stat().st_size > 2 * FINGERPRINT_WINDOW
    signs = _signs(bed)
    last_row = bed.stat().st_size - 2  # the strand of the last tile
    _during_dataset_build(monkeypatch, lambda: _edit_in_place(bed, last_row))
    dest = tmp_path / "out" / "ds.gvl"
    with pytest.raises(SourceChangedError) as info:
        build_dataset(DatasetParams(variants=d / VCF, regions=bed), dest, owner=Owner.current("t"))
    assert _signs(bed) == signs  # invisible to size, mtime and fingerprint
    assert str(bed) in str(info.value) and "while it was being built" in str(info.value)
    assert not dest.exists()
    _nothing_left(dest)


SOURCES = {  # variant file, role replaced
    "vcf-variants": (VCF, "variants"),
    "vcf-index": (VCF, "index"),
    "vcf-regions": (VCF, "regions"),
    "pgen-variants": (PGEN, "variants"),
    "pgen-pvar": (PGEN, "pvar"),
    "pgen-psam": (PGEN, "psam"),
    "pgen-regions": (PGEN, "regions"),
}


@pytest.mark.parametrize("case", list(SOURCES))
def test_every_dataset_source_replaced_by_rename_fails_the_build(
    case: str, d: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Identical bytes, size and mtime under another inode: the builder cannot know what it
    read, so the build is discarded rather than published."""
    variants, role = SOURCES[case]
    params = DatasetParams(variants=d / variants, regions=d / "tiles.bed")
    target = params.source_roles()[role]
    signs = _signs(target)
    _during_dataset_build(monkeypatch, lambda: _replace_by_rename(target))
    dest = tmp_path / "out" / "ds.gvl"
    with pytest.raises(SourceChangedError) as info:
        build_dataset(params, dest, owner=Owner.current("t"))
    assert _signs(target) == signs
    assert str(target) in str(info.value)
    assert not dest.exists()
    _nothing_left(dest)


def test_roles_are_the_sources(d: Path) -> None:
    vcf = DatasetParams(variants=d / VCF, regions=d / "tiles.bed")
    assert list(vcf.source_roles()) == ["variants", "index", "regions"]
    pgen = DatasetParams(variants=d / PGEN, regions=d / "tiles.bed")
    assert list(pgen.source_roles()) == ["variants", "pvar", "psam", "regions"]
    assert pgen.source_files() == list(pgen.source_roles().values())


def _keyed(params: DatasetParams) -> dict[str, Fingerprint]:
    return {role: fingerprint(p) for role, p in params.source_roles().items()}


def test_a_dataset_source_that_is_not_the_expected_one_fails_before_writing(
    d: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = DatasetParams(variants=d / VCF, regions=d / "tiles.bed")
    keyed = _keyed(params)
    with open(params.regions, "a") as f:  # changed between keying and the build
        f.write("20\t1999000\t1999500\tlate\t0\t+\n")
    read: list[Path] = []
    real = writer.read_bed
    monkeypatch.setattr(writer, "read_bed", lambda p, s=6: (read.append(p), real(p, s))[1])
    dest = tmp_path / "out" / "ds.gvl"
    with pytest.raises(SourceChangedError) as info:
        build_dataset(params, dest, owner=Owner.current("t"), expected=keyed)
    assert str(params.regions) in str(info.value) and "changed after" in str(info.value)
    assert read == []  # refused before the builder read anything
    assert not dest.exists()
    _nothing_left(dest)

    # Roles must be the sources' own: a missing or an extra one is another request.
    current = _keyed(params)
    for wrong in (
        {k: v for k, v in current.items() if k != "index"},
        {**current, "pvar": current["index"]},
    ):
        with pytest.raises(SourceChangedError):
            build_dataset(params, dest, owner=Owner.current("t"), expected=wrong)
    assert not dest.exists()
    outcome, _ = build_dataset(params, dest, owner=Owner.current("t"), expected=current)
    assert outcome is Outcome.PUBLISHED


def test_the_expected_fingerprints_are_the_ones_recorded(d: Path, tmp_path: Path) -> None:
    params = DatasetParams(variants=d / PGEN, regions=d / "tiles.bed")
    keyed = _keyed(params)
    dest = tmp_path / "ds.gvl"
    outcome, _ = build_dataset(params, dest, owner=Owner.current("t"), expected=keyed)
    assert outcome is Outcome.PUBLISHED
    validate_dataset(dest, deep=True)
    assert classify_dataset(dest).state is State.FRESH
    recorded = json.loads((dest / writer.FARM_RECORD).read_text())["sources"]
    by_role = {
        r: Fingerprint.model_validate(recorded[str(p)]) for r, p in params.source_roles().items()
    }
    assert by_role == keyed
