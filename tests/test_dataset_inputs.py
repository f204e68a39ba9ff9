"""Bad inputs fail with one sentence naming the file; nothing is published or left staged."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path

import pysam
import pytest

from farm.artifacts.dataset import DatasetParams, build_dataset
from farm.errors import InputError
from farm.publish import Owner
from tests.support.dataset_data import PGEN, SIRPB2, VCF, copy_inputs


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("chr20")
    copy_inputs(root)
    yield root


def _sites_only(d: Path) -> Path:
    dst = d / "sites_only.vcf"
    with gzip.open(d / VCF, "rt") as f, open(dst, "w") as out:
        for line in f:
            out.write(line if line.startswith("##") else "\t".join(line.split("\t")[:8]) + "\n")
    return Path(pysam.tabix_index(str(dst), preset="vcf", force=True))


def _truncated(d: Path) -> Path:
    p = d / VCF
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _write(d: Path, name: str, text: str) -> Path:
    (d / name).write_text(text)
    return d / name


def _short_pvar(d: Path) -> Path:
    pvar = d / PGEN.replace(".pgen", ".pvar")
    lines = pvar.read_text().splitlines(keepends=True)
    pvar.write_text("".join(lines[:200]))
    return d / PGEN


# name -> (make the request from the inputs dir, the file the message must name)
Case = Callable[[Path], tuple[dict[str, object], str]]
CASES: dict[str, Case] = {
    "missing variants": lambda d: ({"variants": d / "nope.vcf.gz"}, "nope.vcf.gz"),
    "missing bed": lambda d: ({"regions": d / "nope.bed"}, "nope.bed"),
    "vcf without index": lambda d: (
        {"variants": (d / f"{VCF}.tbi").unlink() or d / VCF},
        VCF,
    ),
    "not a variant file": lambda d: ({"variants": _write(d, "x.txt", "hello\n")}, "x.txt"),
    "plain-text vcf": lambda d: (
        {"variants": _write(d, "x.vcf", "##fileformat=VCFv4.2\n")},
        "x.vcf",
    ),
    "pgen without pvar": lambda d: (
        {"variants": (d / PGEN.replace(".pgen", ".pvar")).unlink() or d / PGEN},
        PGEN,
    ),
    "pgen without psam": lambda d: (
        {"variants": (d / PGEN.replace(".pgen", ".psam")).unlink() or d / PGEN},
        PGEN,
    ),
    "vcf without samples": lambda d: ({"variants": _sites_only(d)}, "sites_only.vcf.gz"),
    "unknown sample": lambda d: ({"samples": ("NA00000",)}, VCF),
    "bed end < start": lambda d: ({"regions": _write(d, "e.bed", "20\t500\t499\n")}, "e.bed"),
    "truncated bgzip": lambda d: ({"variants": _truncated(d)}, VCF),
    "not a bed": lambda d: ({"regions": _write(d, "n.bed", "just some text\n")}, "n.bed"),
    "bed strand column holds no strand": lambda d: (
        {"regions": d / SIRPB2, "strand_column": 6},
        SIRPB2,
    ),
    "pvar disagrees with pgen (found while building)": lambda d: (
        {"variants": _short_pvar(d)},
        PGEN,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_sentence(case: str, d: Path, tmp_path: Path) -> None:
    fields, named = CASES[case](d)
    request: dict[str, object] = {"variants": d / VCF, "regions": d / "tiles.bed", **fields}
    dest = tmp_path / "out" / "ds.gvl"
    with pytest.raises(InputError) as info:
        build_dataset(DatasetParams(**request), dest, owner=Owner.current("t"))  # type: ignore[arg-type]
    msg = str(info.value)
    assert named in msg
    assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence
    assert not dest.exists()
    leftovers = list(dest.parent.iterdir()) if dest.parent.exists() else []
    assert leftovers == []


def test_the_strand_column_is_found_from_the_bed(tmp_path: Path):
    from farm.artifacts.dataset.regions import detect_strand_column
    from tests.support.dataset_data import DATA, SIRPB2

    def bed(name: str, rows: list[str]) -> Path:
        path = tmp_path / name
        path.write_text("track name=x\n# a comment\n" + "".join(r + "\n" for r in rows))
        return path

    assert detect_strand_column(DATA / SIRPB2) == 7  # score in 6, strand in 7
    assert detect_strand_column(bed("bed6.bed", ["1\t0\t10\ta\t0\t+", "1\t5\t9\tb\t0\t-"])) == 6
    assert detect_strand_column(bed("bed3.bed", ["1\t0\t10", "1\t5\t9"])) == 6  # 6: none
    dots = bed("dots.bed", ["1\t0\t10\ta\t0\t.\tx", "1\t5\t9\tb\t0\t.\ty"])
    assert detect_strand_column(dots) == 6  # standard BED, every strand unknown
    wide = bed("wide.bed", ["1\t0\t10\t.\t7.5\tq\tx", "1\t5\t9\t.\t1.0\tr\ty"])
    assert detect_strand_column(wide) == 0  # no strand anywhere, and column 6 is not one
    assert detect_strand_column(tmp_path / "missing.bed") == 6  # the checks say what is wrong
