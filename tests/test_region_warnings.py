"""Regions on a contig the variants lack, or past a contig's end, build as gvl.write builds them,
and the submitter is told once, in a sentence naming the regions (real chr20 inputs)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pysam
import pytest

from farm.artifacts.dataset import DatasetParams
from farm.client import Farm
from farm.errors import InputWarning
from farm.kinds import DatasetRequest
from tests.support.dataset_data import PGEN, SIRPB2_STRAND_COLUMN, VCF, copy_inputs
from tests.support.processes import farm_env
from tests.test_cli import farm

gvl = pytest.importorskip("genvarloader")

END = 2_000_000  # contig 20's length in the VCF's and the .pvar's ##contig lines
INSIDE = [("20", 1_000_700, 1_001_500), ("20", 1_500_000, 1_500_400)]
ABSENT = [("chrUn_x", 100, 200), ("21", 300, 450), ("chrUn_x", 900, 950)]
PAST = [("20", END - 10, END + 10), ("20", END + 500, END + 520)]


def _bed(path: Path, rows: list[tuple[str, int, int]]) -> Path:
    path.write_text("".join(f"{c}\t{s}\t{e}\tr{i}\t0\t+\n" for i, (c, s, e) in enumerate(rows)))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    d = tmp_path_factory.mktemp("chr20")
    found = copy_inputs(d)
    found["outside"] = _bed(d / "outside.bed", INSIDE + ABSENT + PAST)
    found["absent"] = _bed(d / "absent.bed", INSIDE + ABSENT[:1])
    # A reference with every contig the BED names, and 20 exactly as long as the header says.
    with pysam.FastaFile(str(found["fasta"])) as ref:
        seq20 = ref.fetch("20")
    assert len(seq20) == END
    rng = np.random.default_rng(7)
    extra = {name: "".join(rng.choice(list("ACGT"), 2_000)) for name in ("21", "chrUn_x")}
    fasta = d / "ref_all.fa"
    fasta.write_text(f">20\n{seq20}\n" + "".join(f">{n}\n{s}\n" for n, s in extra.items()))
    pysam.faidx(str(fasta))
    found["fasta_all"] = fasta
    yield found


@pytest.mark.parametrize("variants", [VCF, PGEN])
def test_the_check_names_the_regions_outside_the_variants_contigs(
    inputs: dict[str, Path], variants: str
) -> None:
    source, bed = inputs["vcf"].parent / variants, inputs["outside"]
    absent, past = DatasetParams(variants=source, regions=bed).check()
    assert absent.startswith(
        f"3 regions of {bed} name contigs absent from {source} (21, chrUn_x): "
    )
    assert absent.endswith(f"drop them from {bed} if yours does not.")
    assert past.startswith(
        f"2 regions of {bed} run past the end of their contig in {source} "
        f"(20:{END - 10}-{END + 10}, 20:{END + 500}-{END + 520}; 20 is 2,000,000 bp): "
    )
    assert past.endswith(f"trim them in {bed} if that is not what you want.")
    for sentence in (absent, past):
        assert "\n" not in sentence and sentence.count(". ") == 0


def test_nothing_is_said_of_regions_inside_the_variants_contigs(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    sirpb2 = DatasetParams(
        variants=inputs["vcf"], regions=inputs["sirpb2"], strand_column=SIRPB2_STRAND_COLUMN
    )
    assert sirpb2.check() == []
    # "chr20" is contig 20 to the farm and to GenVarLoader alike; the last base is inside.
    prefixed = _bed(tmp_path / "chr.bed", [("chr20", END - 100, END)])
    assert DatasetParams(variants=inputs["vcf"], regions=prefixed).check() == []
    # Jitter widens the window stored, so it can carry a region past the end.
    jittered = DatasetParams(variants=inputs["pgen"], regions=prefixed, max_jitter=5).check()
    assert len(jittered) == 1 and "1 region of" in jittered[0]
    assert f"runs past the end of its contig in {inputs['pgen']} with max_jitter 5" in jittered[0]


def test_the_api_warns_once_per_sentence_and_submits(
    inputs: dict[str, Path], tmp_path: Path, farm_settings, registry
) -> None:
    request = DatasetRequest(
        variants=inputs["vcf"], regions=inputs["outside"], dest=tmp_path / "ds.gvl"
    )
    with Farm.connect(farm_settings) as api, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        submission = api.submit(request)
    said = [str(w.message) for w in caught if w.category is InputWarning]
    assert len(said) == 2 and "absent from" in said[0] and "past the end" in said[1]
    assert submission.enqueued and registry.get(submission.key) is not None


def test_the_cli_says_it_once_per_request_builds_it_and_genvarloader_opens_it(
    inputs: dict[str, Path], redis_url: str, tmp_path: Path, registry
) -> None:
    env = farm_env(redis_url, tmp_path)
    dest = tmp_path / "ds.gvl"
    built = farm(
        env, "build", "dataset", "--inline", "--variants", str(inputs["vcf"]),
        "--regions", str(inputs["outside"]), "--dest", str(dest),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == str(dest)
    lines = built.stderr.splitlines()
    said = [line for line in lines if "absent from" in line or "past the end" in line]
    assert len(said) == 2 and all(line.startswith("warning: ") for line in said), built.stderr
    assert "absent from" in said[0] and "past the end" in said[1]
    assert "Traceback" not in built.stderr

    # Built as gvl.write builds it: every region kept, and it opens with a reference that has
    # every contig, but not with one that lacks them, as the warning says.
    theirs = tmp_path / "gvl.ds"
    gvl.write(theirs, inputs["outside"], inputs["vcf_sorted"])
    np.testing.assert_array_equal(np.load(dest / "regions.npy"), np.load(theirs / "regions.npy"))
    ds = gvl.Dataset.open(dest, inputs["fasta_all"]).with_seqs("haplotypes")
    assert ds.n_regions == len(INSIDE + ABSENT + PAST)
    with pytest.raises(ValueError, match="not present in reference"):
        gvl.Dataset.open(dest, inputs["fasta"])

    # A manifest: two requests with the same regions are told once, another one on its own.
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"kind": "dataset", "variants": str(inputs["pgen"]), "regions": str(bed), "dest": str(d)}
        for bed, d in (
            (inputs["absent"], tmp_path / "a1.gvl"),
            (inputs["absent"], tmp_path / "a2.gvl"),
            (inputs["outside"], tmp_path / "o.gvl"),
        )
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    submitted = farm(env, "submit", "--manifest", str(manifest))
    assert submitted.returncode == 0, submitted.stderr
    assert len(submitted.stdout.split()) == 3
    lines = submitted.stderr.splitlines()
    assert sum("absent from" in line for line in lines) == 2, submitted.stderr
    assert sum(f"of {inputs['absent']} names a contig absent" in line for line in lines) == 1
    assert sum(f"of {inputs['outside']} name contigs absent" in line for line in lines) == 1
    assert sum("past the end" in line for line in lines) == 1
