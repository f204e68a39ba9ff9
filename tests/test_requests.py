"""Idempotency keys and submission-time validation (our own logic: no broker needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.errors import DestinationError, InputError
from farm.kinds import CacheRequest, parse_request
from farm.requests import derive_key, prepare, request_key

LAMBDA = "lambda_NC_001416.1.fa"


def test_same_request_same_key_from_relative_and_absolute_paths(genomes: Path, monkeypatch):
    absolute = prepare(CacheRequest(fasta=genomes / LAMBDA), [genomes])
    monkeypatch.chdir(genomes)
    relative = prepare(CacheRequest(fasta=Path(LAMBDA)), [genomes])
    assert request_key(absolute)[0] == request_key(relative)[0]
    assert relative.destination() == genomes / f"{LAMBDA}.gvlfa"


def test_key_is_a_pure_function_of_its_documented_inputs(genomes: Path):
    request = prepare(CacheRequest(fasta=genomes / LAMBDA), [genomes])
    key, sources = request_key(request)
    assert len(key) == 64
    # Recomputed from a JSON round trip (what a worker on another machine receives):
    again = parse_request(request.model_dump(mode="json"))
    assert derive_key(again, sources) == key
    # Another destination is another artifact; the same bytes elsewhere are the same input.
    other_dest = request.model_copy(update={"dest": genomes / "elsewhere.gvlfa"})
    assert derive_key(other_dest, sources) != key
    copy = genomes / "copy.fa"
    copy.write_bytes((genomes / LAMBDA).read_bytes())
    moved = CacheRequest(fasta=copy, dest=request.destination())
    assert request_key(moved)[0] == key


def test_changed_source_gives_a_new_key(genomes: Path):
    request = prepare(CacheRequest(fasta=genomes / LAMBDA), [genomes])
    before, _ = request_key(request)
    with open(genomes / LAMBDA, "ab") as f:
        f.write(b"ACGT\n")
    assert request_key(request)[0] != before


def test_missing_source_is_refused_with_its_name(genomes: Path):
    with pytest.raises(InputError, match=r"nope\.fa does not exist"):
        prepare(CacheRequest(fasta=genomes / "nope.fa"), [genomes])


def test_destination_outside_allowed_roots_is_refused(genomes: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(DestinationError, match="outside the allowed roots"):
        prepare(CacheRequest(fasta=genomes / LAMBDA, dest=tmp_path / "x.gvlfa"), [elsewhere])


def test_symlinked_destination_cannot_escape_the_roots(genomes: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, genomes / "link")
    with pytest.raises(DestinationError):
        prepare(CacheRequest(fasta=genomes / LAMBDA, dest=genomes / "link" / "x.gvlfa"), [genomes])


def test_unknown_fields_and_kinds_are_refused():
    with pytest.raises(ValueError, match="fasta"):
        parse_request('{"kind": "cache"}')
    with pytest.raises(ValueError):
        parse_request('{"kind": "cache", "fasta": "a.fa", "colour": "red"}')
