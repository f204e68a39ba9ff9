"""Tracks as gvl.write writes them: per-sample bigWigs (``intervals/``), annotation bigWigs and
tables (``annot_intervals/``), with variants and without (tracks-only). Real chr20 genotypes,
bigWigs made here; gvl.write builds the reference dataset from the very same files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from farm.artifacts.dataset import DatasetParams, build_dataset, validate_dataset
from farm.errors import InputError
from farm.kinds import DatasetRequest
from farm.publish import Owner
from farm.requests import request_key
from tests.support.dataset_data import copy_inputs

gvl = pytest.importorskip("genvarloader")
pyBigWig = pytest.importorskip("pyBigWig")

SAMPLES = ("NA12878", "NA06994", "NA20832", "NA07000", "NA12003", "NA20502")
CONTIG_LENGTH = 2_000_000


def make_bigwig(path: Path, seed: int, *, chrom: str = "20", step: int = 40) -> Path:
    """Signal over the genotyped stretch of chr20: runs of random length and value, with gaps
    and zeros, as coverage tracks have them."""
    rng = np.random.default_rng(seed)
    starts, ends, values = [], [], []
    pos = 990_000
    while pos < 2_000_000:
        length = int(rng.integers(1, step * 2))
        if rng.random() > 0.2:  # a gap otherwise
            starts.append(pos)
            ends.append(min(pos + length, CONTIG_LENGTH))
            values.append(0.0 if rng.random() < 0.1 else float(rng.gamma(2.0, 3.0)))
        pos += length
    bw = pyBigWig.open(str(path), "w")
    bw.addHeader([(chrom, CONTIG_LENGTH)], maxZooms=0)
    bw.addEntries([chrom] * len(starts), starts, ends=ends, values=values)
    bw.close()
    return path


def make_table(path: Path, seed: int) -> Path:
    """An annotation table (BED5): scored intervals, some overlapping, distinct starts."""
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(np.arange(995_000, 1_999_000), 3_000, replace=False))
    lines = [
        f"20\t{s}\t{s + int(rng.integers(0, 400))}\tf{i}\t{rng.normal():.4f}"
        for i, s in enumerate(starts)
    ]
    path.write_text("\n".join(rng.permutation(lines)) + "\n")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("chr20")
    found: dict[str, object] = dict(copy_inputs(d))
    found["signal"] = {s: make_bigwig(d / f"{s}.bw", i) for i, s in enumerate(SAMPLES)}
    found["cons"] = make_bigwig(d / "cons.bigWig", 99, chrom="chr20", step=200)
    found["peaks"] = make_table(d / "peaks.bed", 7)
    yield found


CASES = {
    "variants and tracks": {"variants": True, "max_jitter": 0},
    "variants and tracks, jitter": {"variants": True, "max_jitter": 25},
    "tracks only": {"variants": False, "max_jitter": 10},
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, inputs, tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    case = CASES[request.param]
    out = tmp_path_factory.mktemp("tracks")
    # The sample-sorted VCF: genvarloader 0.43.1 mislays look-ahead calls on unsorted ones,
    # and the windows the tracks cover follow the variants' deletions.
    variants = inputs["vcf_sorted"] if case["variants"] else None
    signal: dict[str, Path] = inputs["signal"]  # type: ignore[assignment]
    gvl.write(
        out / "gvl.ds",
        inputs["tiles"],
        variants,
        tracks=gvl.BigWigs("signal", {s: str(p) for s, p in signal.items()}),
        annot_tracks={"cons": str(inputs["cons"]), "peaks": str(inputs["peaks"])},
        max_jitter=case["max_jitter"],
    )
    params = DatasetParams(
        variants=variants,
        regions=inputs["tiles"],
        max_jitter=case["max_jitter"],
        tracks={"signal": signal},
        annot_tracks={"cons": inputs["cons"], "peaks": inputs["peaks"]},
    )
    build_dataset(params, out / "farm.ds", owner=Owner.current("test"))
    yield out / "farm.ds", out / "gvl.ds"


@pytest.mark.parametrize(
    "track", ["intervals/signal", "annot_intervals/cons", "annot_intervals/peaks"]
)
def test_track_files_equal_gvl_write_byte_for_byte(pair, track: str) -> None:
    farm_ds, gvl_ds = pair
    for name in ("offsets.npy", "starts.npy", "ends.npy", "values.npy"):
        ours, theirs = (farm_ds / track / name).read_bytes(), (gvl_ds / track / name).read_bytes()
        assert len(ours) == len(theirs) and ours == theirs, f"{track}/{name}"


def test_track_values_read_through_genvarloader_equal(pair) -> None:
    farm_ds, gvl_ds = pair
    a, b = gvl.Dataset.open(farm_ds), gvl.Dataset.open(gvl_ds)
    assert a.samples == b.samples == sorted(SAMPLES)
    assert sorted(a.available_tracks) == sorted(b.available_tracks)
    for track in ("signal", "cons", "peaks"):
        ta = a.with_seqs(None).with_tracks(track)[:, :]
        tb = b.with_seqs(None).with_tracks(track)[:, :]
        np.testing.assert_array_equal(np.asarray(ta.data), np.asarray(tb.data), err_msg=track)
        np.testing.assert_array_equal(np.asarray(ta.offsets), np.asarray(tb.offsets))


def test_tracks_only_dataset_has_no_genotypes(pair) -> None:
    farm_ds, gvl_ds = pair
    assert (farm_ds / "genotypes").exists() == (gvl_ds / "genotypes").exists()
    np.testing.assert_array_equal(np.load(farm_ds / "regions.npy"), np.load(gvl_ds / "regions.npy"))
    validate_dataset(farm_ds, deep=True)


def test_every_track_file_enters_the_key(inputs, tmp_path: Path) -> None:
    signal: dict[str, Path] = inputs["signal"]  # type: ignore[assignment]
    request = DatasetRequest(
        variants=inputs["vcf"],
        regions=inputs["tiles"],
        dest=tmp_path / "ds",
        tracks={"signal": signal},
        annot_tracks={"cons": inputs["cons"]},
    ).absolute()
    key, sources = request_key(request)
    assert {f"track:signal:{s}" for s in SAMPLES} | {"annot:cons"} <= set(sources)
    changed = tmp_path / "changed.bw"
    make_bigwig(changed, 1234)
    other = request.model_copy(update={"tracks": {"signal": {**signal, SAMPLES[0]: changed}}})
    assert request_key(other)[0] != key
    renamed = request.model_copy(update={"annot_tracks": {"conservation": inputs["cons"]}})
    assert request_key(renamed)[0] != key


def test_a_bigwig_without_a_bed_contig_is_one_sentence(inputs, tmp_path: Path) -> None:
    other = make_bigwig(tmp_path / "chr1.bw", 5, chrom="1")
    signal: dict[str, Path] = dict(inputs["signal"])  # type: ignore[arg-type]
    signal[SAMPLES[2]] = other
    params = DatasetParams(regions=inputs["tiles"], tracks={"signal": signal})
    with pytest.raises(InputError) as info:
        build_dataset(params, tmp_path / "ds", owner=Owner.current("t"))
    assert "chr1.bw" in str(info.value) and "contig 20" in str(info.value)
    assert not (tmp_path / "ds").exists()


def test_samples_are_those_of_every_source(inputs, tmp_path: Path) -> None:
    signal: dict[str, Path] = inputs["signal"]  # type: ignore[assignment]
    only_some = {s: signal[s] for s in SAMPLES[:3]}
    params = DatasetParams(
        variants=inputs["vcf"], regions=inputs["tiles"], tracks={"signal": only_some}
    )
    meta = build_dataset(params, tmp_path / "ds", owner=Owner.current("t"))[1]
    assert meta is not None and meta["samples"] == sorted(SAMPLES[:3])
    asked = params.model_copy(update={"samples": (SAMPLES[0], SAMPLES[4])})
    with pytest.raises(InputError, match=SAMPLES[4]):
        build_dataset(asked, tmp_path / "ds2", owner=Owner.current("t"))


def make_long_table(path: Path, samples: tuple[str, ...], seed: int) -> Path:
    """A long-form interval table (sample_id, chrom, start, end, value): distinct starts per
    sample (genvarloader's order of tied starts is not defined), some overlapping, some on a
    contig the regions do not touch."""
    rng = np.random.default_rng(seed)
    lines = ["sample_id\tchrom\tstart\tend\tvalue"]
    for sample in samples:
        starts = rng.choice(np.arange(990_000, 2_000_000, 3), 4_000, replace=False)
        for s in starts:
            lines.append(f"{sample}\t20\t{s}\t{s + int(rng.integers(0, 300))}\t{rng.normal():.5f}")
        lines.append(f"{sample}\t21\t100\t200\t1.5")
    path.write_text("\n".join([lines[0], *rng.permutation(lines[1:])]) + "\n")
    return path


@pytest.mark.parametrize("form", ["one long-form tsv", "a parquet file per sample"])
def test_table_tracks_equal_gvl_write_byte_for_byte(inputs, tmp_path: Path, form: str) -> None:
    import pyarrow.csv as csv
    import pyarrow.parquet as pq

    long_form = make_long_table(tmp_path / "signal.tsv", SAMPLES[:4], 11)
    if form == "one long-form tsv":
        ours: dict[str, Path] | Path = long_form
        theirs = gvl.Table.from_path("signal", str(long_form))
    else:
        table = csv.read_csv(long_form, parse_options=csv.ParseOptions(delimiter="\t"))
        ours = {}
        for sample in SAMPLES[:4]:
            rows = table.filter(table.column("sample_id").to_numpy(zero_copy_only=False) == sample)
            ours[sample] = tmp_path / f"{sample}.parquet"
            pq.write_table(rows.drop_columns(["sample_id"]), ours[sample])
        theirs = gvl.Table.from_path("signal", {s: str(p) for s, p in ours.items()})
    variants = inputs["vcf_sorted"]
    gvl.write(tmp_path / "gvl.ds", inputs["tiles"], variants, tracks=theirs, max_jitter=5)
    params = DatasetParams(
        variants=variants, regions=inputs["tiles"], tracks={"signal": ours}, max_jitter=5
    )
    build_dataset(params, tmp_path / "farm.ds", owner=Owner.current("t"))
    for name in ("offsets.npy", "starts.npy", "ends.npy", "values.npy"):
        ours_bytes = (tmp_path / "farm.ds" / "intervals" / "signal" / name).read_bytes()
        theirs_bytes = (tmp_path / "gvl.ds" / "intervals" / "signal" / name).read_bytes()
        assert len(ours_bytes) > 8 and ours_bytes == theirs_bytes, name


def test_a_track_dataset_is_reindexed_to_its_key(inputs, tmp_path: Path, registry) -> None:
    from farm import kinds, maintenance

    signal: dict[str, Path] = inputs["signal"]  # type: ignore[assignment]
    request = DatasetRequest(
        regions=inputs["tiles"],
        dest=tmp_path / "out" / "tracks.gvl",
        tracks={"signal": signal, "table": make_long_table(tmp_path / "t.tsv", SAMPLES, 3)},
        annot_tracks={"peaks": inputs["peaks"]},
    ).absolute()
    key, _ = request_key(request)
    assert kinds.ensure(request, Owner.current("t")).action == "built"
    [found] = maintenance.reindex(registry, tmp_path / "out", allowed=[tmp_path])
    assert found.key == key and found.status == "valid"
    [verdict] = maintenance.verify(registry, [key])
    assert verdict.status == "valid"


@pytest.mark.parametrize("name", ["../escape", "", ".hidden", "a/b", "x" * 200])
def test_a_track_name_must_be_a_plain_directory_name(inputs, tmp_path: Path, name: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="track name"):
        DatasetRequest(
            regions=inputs["tiles"], dest=tmp_path / "ds", annot_tracks={name: inputs["cons"]}
        )


def test_a_manifest_line_with_tracks_parses_to_the_request(inputs) -> None:
    from farm.kinds import parse_request

    signal: dict[str, Path] = inputs["signal"]  # type: ignore[assignment]
    line = {
        "kind": "dataset",
        "variants": str(inputs["vcf"]),
        "regions": str(inputs["tiles"]),
        "dest": "x.gvl",
        "samples": list(SAMPLES[:2]),
        "tracks": {"signal": {s: str(p) for s, p in signal.items()}, "atac": "atac.parquet"},
        "annot_tracks": {"cons": str(inputs["cons"])},
    }
    request = parse_request(line)
    assert isinstance(request, DatasetRequest)
    assert request.tracks == {"signal": signal, "atac": Path("atac.parquet")}
    assert request.annot_tracks == {"cons": inputs["cons"]}


def test_a_long_form_table_without_sample_id_is_refused_before_the_build(
    inputs, tmp_path: Path
) -> None:
    table = tmp_path / "no_samples.tsv"
    table.write_text("chrom\tstart\tend\tvalue\n20\t1000100\t1000200\t1.5\n")
    params = DatasetParams(regions=inputs["tiles"], tracks={"signal": table})
    with pytest.raises(InputError, match="no column sample_id"):
        params.check()
