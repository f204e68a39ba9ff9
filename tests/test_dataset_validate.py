"""Validation catches missing files, wrong shapes, truncation and (deep) same-size corruption."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from farm.artifacts.base import State
from farm.artifacts.dataset import DatasetParams, build_dataset, classify_dataset, validate_dataset
from farm.errors import ArtifactInvalidError, TooNewError
from farm.publish import Outcome, Owner
from tests.support.dataset_data import PGEN, SIRPB2, SIRPB2_STRAND_COLUMN, copy_inputs

FILES = [
    "metadata.json",
    "input_regions.arrow",
    "regions.npy",
    "genotypes/variants.arrow",
    "genotypes/variant_idxs.npy",
    "genotypes/offsets.npy",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("val")
    copy_inputs(root / "in")
    params = DatasetParams(
        variants=root / "in" / PGEN,
        regions=root / "in" / SIRPB2,
        strand_column=SIRPB2_STRAND_COLUMN,
    )
    outcome, _ = build_dataset(params, root / "ds.gvl", owner=Owner.current("t"))
    assert outcome is Outcome.PUBLISHED
    yield root / "ds.gvl", root / "in"


@pytest.fixture
def ds(built: tuple[Path, Path], tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "ds.gvl"
    shutil.copytree(built[0], copy)
    yield copy


def test_fresh_and_valid(ds: Path) -> None:
    validate_dataset(ds, deep=True)
    assert classify_dataset(ds).state is State.FRESH


def test_missing_and_foreign(tmp_path: Path) -> None:
    assert classify_dataset(tmp_path / "none").state is State.MISSING
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    assert classify_dataset(tmp_path / "junk").state is State.FOREIGN
    with pytest.raises(ArtifactInvalidError, match=r"metadata\.json"):
        validate_dataset(tmp_path / "junk")


def test_second_build_loses_to_the_published_one(built: tuple[Path, Path]) -> None:
    dest, inputs = built
    params = DatasetParams(
        variants=inputs / PGEN, regions=inputs / SIRPB2, strand_column=SIRPB2_STRAND_COLUMN
    )
    outcome, meta = build_dataset(params, dest, owner=Owner.current("t2"))
    assert outcome is Outcome.LOST and meta is None
    assert [p.name for p in dest.parent.iterdir() if ".farm" in p.name] == []


def test_changed_source_is_stale_and_gone_source_unvalidated(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    _, inputs = built
    copy_in = tmp_path / "in"
    shutil.copytree(inputs, copy_in)
    params = DatasetParams(
        variants=copy_in / PGEN, regions=copy_in / SIRPB2, strand_column=SIRPB2_STRAND_COLUMN
    )
    build_dataset(params, tmp_path / "ds.gvl", owner=Owner.current("t"))
    with open(copy_in / SIRPB2, "a") as f:
        f.write("20\t1471920\t1472000\texon\tSIRPB2\t1\t-\t1\tX\n")
    assert classify_dataset(tmp_path / "ds.gvl").state is State.STALE
    (copy_in / SIRPB2).unlink()
    assert classify_dataset(tmp_path / "ds.gvl").state is State.UNVALIDATED


@pytest.mark.parametrize("rel", ["metadata.json", "input_regions.arrow", "regions.npy"])
def test_missing_required_file(ds: Path, rel: str) -> None:
    (ds / rel).unlink()
    with pytest.raises(ArtifactInvalidError, match=rel.replace(".", r"\.")):
        validate_dataset(ds)
    assert classify_dataset(ds).state in (State.CORRUPT, State.FOREIGN)


def test_wrong_regions_shape(ds: Path) -> None:
    np.save(ds / "regions.npy", np.load(ds / "regions.npy")[:, :3])
    with pytest.raises(ArtifactInvalidError, match="shape"):
        validate_dataset(ds)
    assert classify_dataset(ds).state is State.CORRUPT


def test_truncated_offsets(ds: Path) -> None:
    p = ds / "genotypes" / "offsets.npy"
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(ArtifactInvalidError, match=r"offsets\.npy"):
        validate_dataset(ds)
    assert classify_dataset(ds).state is State.CORRUPT


def test_format_gate(ds: Path) -> None:
    meta = json.loads((ds / "metadata.json").read_text())
    (ds / "metadata.json").write_text(json.dumps({**meta, "format_version": "3.0.0"}))
    with pytest.raises(TooNewError, match="upgrade"):
        validate_dataset(ds)
    assert classify_dataset(ds).state is State.TOO_NEW
    (ds / "metadata.json").write_text(json.dumps({**meta, "format_version": "1.0.0"}))
    with pytest.raises(ArtifactInvalidError, match=r"genvarloader\.migrate"):
        validate_dataset(ds)


@pytest.mark.parametrize("rel", FILES)
def test_deep_catches_same_size_corruption(ds: Path, rel: str) -> None:
    p = ds / rel
    data = bytearray(p.read_bytes())
    i = len(data) // 2
    data[i] = data[i] ^ 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactInvalidError, match=rel.replace(".", r"\.")):
        validate_dataset(ds, deep=True)
