"""A SparseVar (.svar) variant source: the farm's genotypes/ against gvl.write's, byte for byte.

The SparseVar is made by genoray's own converter from the project's chr20 VCF; each case runs
``gvl.write`` and :func:`write_svar_genotypes` on the same BED (grid tiles, plus tiles that end
just past a deletion so windows get extended, in shuffled order with both strands) and
compares ``genotypes/``, the extended ends, the ``svar_link``, and the haplotypes
``genvarloader.Dataset.open`` reconstructs from both datasets.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

gvl = pytest.importorskip("genvarloader")
genoray = pytest.importorskip("genoray")
pl = pytest.importorskip("polars")

from farm.artifacts.dataset.regions import read_bed  # noqa: E402
from farm.artifacts.dataset.svar import (  # noqa: E402
    check_svar,
    svar_ploidy,
    svar_samples,
    write_svar_genotypes,
)
from farm.errors import InputError  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "grch37_chr20"
VCF_NAME = "1kgp_203samples_unphased.chr20_1000001-2000000.vcf.gz"
REF_NAME = "GRCh37_chr20_0-2Mb_Nmasked_first1Mb.fa.gz"
GENO_FILES = ("offsets.npy", "svar_meta.json")


def _copy_with_indexes(src: Path, dest_dir: Path, suffixes: tuple[str, ...]) -> Path:
    dest = dest_dir / src.name
    shutil.copyfile(src, dest)
    for s in suffixes:
        shutil.copyfile(f"{src}{s}", f"{dest}{s}")
    return dest


def _write_bed(path: Path, rows: list[tuple[str, int, int]]) -> None:
    rng = np.random.default_rng(7)
    order = rng.permutation(len(rows))  # the farm and gvl sort it
    lines = []
    for k, i in enumerate(order):
        c, s, e = rows[i]
        lines.append(f"{c}\t{s}\t{e}\tr{i}\t0\t{'+-'[k % 2]}\n")
    path.write_text("".join(lines))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("svar")
    # genoray writes its index beside the VCF, genvarloader its .gvlfa beside the reference.
    vcf = _copy_with_indexes(DATA / VCF_NAME, d, (".tbi",))
    ref = _copy_with_indexes(DATA / REF_NAME, d, (".fai", ".gzi"))
    svar = d / "chr20.svar"
    genoray.SparseVar.from_vcf(svar, genoray.VCF(vcf), "1g", n_jobs=1)
    samples = genoray.SparseVar(svar).available_samples
    # genoray keeps the caller's sample order: a SparseVar whose samples are not sorted.
    rev = d / "reversed.svar"
    genoray.SparseVar.from_vcf(rev, genoray.VCF(vcf), "1g", n_jobs=1, samples=samples[::-1])

    sv = genoray.SparseVar(svar)
    carried = np.isin(sv.index["index"].to_numpy(), np.unique(sv.genos.data))
    is_del = pl.Series(carried) & (pl.col("ILEN").list.first() < -1)
    dels = sv.index.filter(is_del)["POS"].to_numpy()
    picks = dels[np.linspace(0, len(dels) - 1, 50).astype(int)]
    grid = [("20", 1_000_000 + 20_000 * i, 1_001_000 + 20_000 * i) for i in range(50)]
    # Windows ending on a carried deletion's first deleted base (with no jitter or with 50):
    # its haplotypes fall short, so the windows get extended.
    near = [
        ("20", int(p) - 999 - 50 * (k % 2), int(p) + 1 - 50 * (k % 2)) for k, p in enumerate(picks)
    ]
    # Windows holding no variant at all, and windows starting 1 bp into others (genoray's
    # kernel orders windows by first variant, and these tie). Not exact repeats: gvl's sort
    # leaves repeats in no promised order, so their strands may swap.
    pos = sv.index["POS"].to_numpy()
    gaps = np.flatnonzero(np.diff(pos) > 1500)[:3]
    empty = [("20", int(pos[g]) + 100, int(pos[g]) + 1100) for g in gaps]
    empty.append(("20", int(pos.max()) + 5, 1_999_990))  # past the contig's last variant
    assert len(empty) == 4
    bed = d / "tiles.bed"
    _write_bed(bed, [*grid, *near, *empty, *((c, a + 1, b) for c, a, b in near[:3])])
    missing = d / "with_absent_contig.bed"
    _write_bed(missing, [*grid[:10], ("21", 5_000, 6_000), ("21", 9_000, 10_000)])
    return SimpleNamespace(d=d, svar=svar, rev=rev, ref=ref, bed=bed, missing=missing)


def _farm_build(
    work: SimpleNamespace,
    svar: Path,
    bed: Path,
    name: str,
    jitter: int,
    extend: bool,
    samples: list[str],
) -> tuple[Path, np.ndarray, dict, dict]:
    """The genotypes the farm writes, built in a sibling staging directory then renamed."""
    regions = read_bed(bed)
    table = regions.sorted_table(jitter)
    dest = work.d / name
    staging = work.d / f"{name}.farmtmp.abc"
    staging.mkdir()
    link, sums = write_svar_genotypes(svar, regions.contigs, table, samples, staging, extend=extend)
    staging.rename(dest)
    return dest, table, link, sums


def _haplotypes(path: Path, ref: Path):
    ds = gvl.Dataset.open(path, ref).with_seqs("haplotypes")
    return ds[:, :]


@pytest.mark.parametrize("subset", [False, True], ids=["all", "five"])
@pytest.mark.parametrize("extend", [True, False], ids=["extend", "no-extend"])
@pytest.mark.parametrize("jitter", [0, 50])
def test_matches_gvl_write(work: SimpleNamespace, jitter: int, extend: bool, subset: bool) -> None:
    everyone = sorted(svar_samples(work.svar))
    samples = [everyone[i] for i in (3, 50, 100, 150, 202)] if subset else everyone
    tag = f"j{jitter}_{'e' if extend else 'n'}_{'five' if subset else 'all'}"
    theirs = work.d / f"gvl_{tag}.gvl"
    gvl.write(
        theirs,
        work.bed,
        variants=work.svar,
        samples=list(samples) if subset else None,
        max_jitter=jitter,
        extend_to_length=extend,
    )
    ours, table, link, sums = _farm_build(
        work, work.svar, work.bed, f"farm_{tag}.gvl", jitter, extend, samples
    )

    for f in GENO_FILES:
        assert (ours / "genotypes" / f).read_bytes() == (theirs / "genotypes" / f).read_bytes(), f
    assert sorted(p.name for p in (theirs / "genotypes").iterdir()) == sorted(GENO_FILES)
    assert set(sums) == {f"genotypes/{f}" for f in GENO_FILES}
    regions = np.load(theirs / "regions.npy")
    np.testing.assert_array_equal(table, regions)
    if extend and not subset:
        assert (table[:, 2] > regions[:, 1] + 1000 + 2 * jitter).sum() >= 10  # ends did move
    meta = json.loads((theirs / "metadata.json").read_text())
    assert link == meta["svar_link"]
    assert meta["ploidy"] == svar_ploidy(work.svar)
    assert meta["variants_fingerprint"] is None

    # Finish the farm's dataset only as far as Dataset.open needs, and read both back.
    np.save(ours / "regions.npy", table.astype(np.int32))
    shutil.copyfile(theirs / "input_regions.arrow", ours / "input_regions.arrow")
    (ours / "metadata.json").write_text(json.dumps(meta | {"svar_link": link}))
    a, b = _haplotypes(theirs, work.ref), _haplotypes(ours, work.ref)
    assert a.shape == b.shape == (len(table), len(samples), 2, None)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.to_packed().data, b.to_packed().data)


def test_unsorted_svar_samples(work: SimpleNamespace) -> None:
    samples = sorted(svar_samples(work.rev))
    assert svar_samples(work.rev) != samples
    theirs = work.d / "gvl_rev.gvl"
    gvl.write(theirs, work.bed, variants=work.rev, max_jitter=10)
    ours, table, link, _ = _farm_build(work, work.rev, work.bed, "farm_rev.gvl", 10, True, samples)
    for f in GENO_FILES:
        assert (ours / "genotypes" / f).read_bytes() == (theirs / "genotypes" / f).read_bytes(), f
    np.testing.assert_array_equal(table, np.load(theirs / "regions.npy"))
    assert link == json.loads((theirs / "metadata.json").read_text())["svar_link"]


def test_contig_absent_from_svar(work: SimpleNamespace) -> None:
    samples = sorted(svar_samples(work.svar))[:4]
    theirs = work.d / "gvl_absent.gvl"
    gvl.write(theirs, work.missing, variants=work.svar, samples=list(samples))
    ours, table, _, _ = _farm_build(
        work, work.svar, work.missing, "farm_absent_e.gvl", 0, True, samples
    )
    for f in GENO_FILES:
        assert (ours / "genotypes" / f).read_bytes() == (theirs / "genotypes" / f).read_bytes(), f
    np.testing.assert_array_equal(table, np.load(theirs / "regions.npy"))

    # Without extension gvl.write fails on such a contig; the farm writes the same empty
    # (reference) windows there as with extension.
    with pytest.raises(ValueError):
        gvl.write(
            work.d / "gvl_absent_n.gvl",
            work.missing,
            variants=work.svar,
            samples=list(samples),
            extend_to_length=False,
        )
    ours_n, table_n, _, _ = _farm_build(
        work, work.svar, work.missing, "farm_absent_n.gvl", 0, False, samples
    )
    off = np.fromfile(ours_n / "genotypes" / "offsets.npy", np.int64).reshape(2, 12, 4, 2)
    absent = table_n[:, 0] == 1
    assert absent.sum() == 2 and (off[:, absent] == 0).all()
    np.testing.assert_array_equal(table_n[absent], table[absent])


def _message_ok(e: pytest.ExceptionInfo[InputError], where: Path) -> None:
    msg = str(e.value)
    assert str(where) in msg and msg.endswith(".") and ". " not in msg, msg


def test_rejects_unsupported_variants(work: SimpleNamespace) -> None:
    bad = work.d / "bad.svar"
    shutil.copytree(work.svar, bad)
    df = pl.read_ipc(bad / "index.arrow")
    alts = df["ALT"].to_list()
    alts[0], alts[1], alts[2] = "T,G", "<DEL>", "G[20:5000["
    df.with_columns(pl.Series("ALT", alts, dtype=df["ALT"].dtype)).write_ipc(bad / "index.arrow")
    with pytest.raises(InputError) as e:
        check_svar(bad)
    _message_ok(e, bad)
    assert "1 multi-allelic, 1 symbolic, 1 breakend" in str(e.value)
    regions = read_bed(work.bed)
    out = work.d / "never.gvl"
    out.mkdir()
    with pytest.raises(InputError):
        write_svar_genotypes(
            bad, regions.contigs, regions.sorted_table(0), ["NA06989"], out, extend=True
        )
    assert not (out / "genotypes").exists()
    with pytest.raises(ValueError, match="unsupported variants"):  # gvl.write too
        gvl.write(work.d / "gvl_bad.gvl", work.bed, variants=bad)


def test_rejects_what_is_not_a_sparsevar(work: SimpleNamespace) -> None:
    check_svar(work.svar)
    cases: list[Path] = [work.bed, work.d / "nowhere.svar"]
    misnamed = work.d / "chr20_copy"
    shutil.copytree(work.svar, misnamed)
    cases.append(misnamed)
    for name, damage in [
        ("no_index", lambda p: (p / "index.arrow").unlink()),
        ("truncated", lambda p: (p / "variant_idxs.npy").write_bytes(b"\0" * 40)),
        ("short_offsets", lambda p: (p / "offsets.npy").write_bytes(b"\0" * 16)),
        ("bad_meta", lambda p: (p / "metadata.json").write_text('{"samples": 3}')),
        ("not_arrow", lambda p: (p / "index.arrow").write_text("CHROM\tPOS\n")),
    ]:
        p = work.d / f"{name}.svar"
        shutil.copytree(work.svar, p)
        damage(p)
        cases.append(p)
    for p in cases:
        with pytest.raises(InputError) as e:
            check_svar(p)
        _message_ok(e, p)


def test_samples_not_in_svar(work: SimpleNamespace) -> None:
    regions = read_bed(work.bed)
    out = work.d / "nosample.gvl"
    out.mkdir()
    with pytest.raises(InputError) as e:
        write_svar_genotypes(
            work.svar,
            regions.contigs,
            regions.sorted_table(0),
            ["NA06989", "HG_NOBODY"],
            out,
            extend=True,
        )
    _message_ok(e, work.svar)


def test_a_whole_dataset_from_a_svar_through_the_builder(work: SimpleNamespace) -> None:
    """The whole build (request, key sources, publish, farm.json) on a .svar source opens in
    genvarloader with the haplotypes of gvl.write's dataset, and verifies deeply."""
    from farm.artifacts.dataset import DatasetParams, build_dataset, validate_dataset
    from farm.publish import Owner

    theirs = work.d / "gvl_whole.gvl"
    gvl.write(theirs, work.bed, variants=work.svar, max_jitter=10)
    params = DatasetParams(variants=work.svar, regions=work.bed, max_jitter=10)
    assert {f"svar:{n}" for n in ("metadata.json", "index.arrow")} <= set(params.source_roles())
    ours = work.d / "farm_whole.gvl"
    build_dataset(params, ours, owner=Owner.current("t"))
    validate_dataset(ours, deep=True)
    meta_ours = json.loads((ours / "metadata.json").read_text())
    meta_theirs = json.loads((theirs / "metadata.json").read_text())
    for field in ("samples", "contigs", "n_regions", "ploidy", "svar_link", "variants_fingerprint"):
        assert meta_ours[field] == meta_theirs[field], field
    for name in GENO_FILES:
        assert (ours / "genotypes" / name).read_bytes() == (
            theirs / "genotypes" / name
        ).read_bytes()
    np.testing.assert_array_equal(np.load(ours / "regions.npy"), np.load(theirs / "regions.npy"))
    a, b = _haplotypes(ours, work.ref), _haplotypes(theirs, work.ref)
    np.testing.assert_array_equal(np.asarray(a.lengths), np.asarray(b.lengths))
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
