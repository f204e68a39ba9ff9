"""A dataset build request: its inputs, the files behind its key, and the checks before a build."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from farm.artifacts.bgzf import Bgzf, bgzf_state
from farm.artifacts.dataset import regions as bed
from farm.errors import InputError

VariantKind = Literal["vcf", "pgen", "svar"]
_VCF_SUFFIXES = (".vcf.gz", ".vcf.bgz", ".bcf")


class DatasetParams(BaseModel):
    """Everything that decides a dataset's bytes; nothing about where or how it is built.

    ``samples``: GenVarLoader stores the selected samples sorted by code point (Python's
    ``sorted``), whatever order they are asked for in, so two requests that differ only in
    sample order build the same dataset and share a key (see :meth:`canonical`).
    ``strand_column`` is the 1-based BED column holding the strand (6 in standard BED, 0 for
    none): GenVarLoader reads it by name, and a BED with extra columns may hold it elsewhere.
    ``tracks``: per-sample interval tracks, name -> sample -> bigWig (``gvl.BigWigs``) or
    interval table, or name -> one long-form table with a ``sample_id`` column (``gvl.Table``);
    ``annot_tracks``: sample-independent tracks, name -> bigWig or BED-like table (score in
    column 5). ``variants`` may be None for a tracks-only dataset.
    ``max_mem`` and ``overwrite`` of ``gvl.write`` are the farm's business, not the request's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    variants: Path | None = None
    regions: Path
    samples: tuple[str, ...] | None = None
    max_jitter: int = Field(default=0, ge=0)
    extend_to_length: bool = True
    strand_column: int = Field(default=6, ge=0)
    tracks: dict[str, dict[str, Path] | Path] | None = None
    annot_tracks: dict[str, Path] | None = None

    @field_validator("samples")
    @classmethod
    def _unique(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            if not v:
                raise ValueError("samples must name at least one sample, or be None for all")
            if len(set(v)) != len(v):
                raise ValueError("samples must not repeat a name")
        return v

    @model_validator(mode="after")
    def _sources(self) -> DatasetParams:
        check_sources(self.variants, self.tracks, self.annot_tracks)
        return self

    @property
    def kind(self) -> VariantKind | None:
        if self.variants is None:
            return None
        name = self.variants.name.lower()
        if name.endswith(".svar"):
            return "svar"
        if name.endswith(".svar2"):
            raise InputError(
                f"Variant source {self.variants} is a SparseVar2 (.svar2), which the farm does "
                "not build from yet; pass the VCF, PGEN or .svar it was made from."
            )
        if name.endswith(".pgen"):
            return "pgen"
        if name.endswith(_VCF_SUFFIXES):
            return "vcf"
        if name.endswith(".vcf"):
            raise InputError(
                f"Variant file {self.variants} is plain-text VCF; compress and index it "
                f"(bgzip {self.variants.name} && tabix -p vcf {self.variants.name}.gz)."
            )
        raise InputError(
            f"Variant file {self.variants} is not a VCF/BCF (.vcf.gz, .bcf), PGEN (.pgen) or "
            f"SparseVar directory (.svar); pass one of those."
        )

    def index_file(self) -> Path | None:
        if self.variants is None:
            return None
        for suffix in (".tbi", ".csi"):
            p = self.variants.with_name(self.variants.name + suffix)
            if p.is_file():
                return p
        return None

    def source_files(self) -> list[Path]:
        """Every file whose content decides the dataset: its fingerprints key the build."""
        return list(self.source_roles().values())

    def source_roles(self) -> dict[str, Path]:
        """The source files by role: ``variants``, then ``index`` (a VCF/BCF's .tbi or .csi,
        when there is one) or ``pvar`` and ``psam`` (a PGEN's), then ``regions`` (the BED),
        then ``track:NAME:SAMPLE`` and ``annot:NAME`` for the tracks' files.

        These are the names the request key gives its sources, and the keys of the
        ``expected`` fingerprints a build checks its sources against.
        """
        roles: dict[str, Path] = {}
        if self.variants is not None:
            if self.kind == "svar":
                from farm.artifacts.dataset.svar import SOURCE_FILES

                # The files of the store the build reads; it stays linked from the dataset.
                roles |= {f"svar:{name}": self.variants / name for name in SOURCE_FILES}
            else:
                roles["variants"] = self.variants
            if self.kind == "pgen":
                from farm.artifacts.dataset.pgen import siblings

                roles["pvar"], roles["psam"] = siblings(self.variants)
            elif self.kind == "vcf" and (index := self.index_file()) is not None:
                roles["index"] = index
        roles["regions"] = self.regions
        for name, source in sorted((self.tracks or {}).items()):
            if isinstance(source, Path):
                roles[f"track:{name}"] = source
                continue
            for sample, path in sorted(source.items()):
                roles[f"track:{name}:{sample}"] = path
        for name, path in sorted((self.annot_tracks or {}).items()):
            roles[f"annot:{name}"] = path
        return roles

    def canonical(self) -> dict[str, Any]:
        """JSON-able request with absolute paths and samples in the order the dataset holds them.
        Tracks appear only when given, so datasets built before tracks keep their record."""
        out: dict[str, Any] = {
            "variants": str(self.variants.resolve()) if self.variants is not None else None,
            "regions": str(self.regions.resolve()),
            "samples": sorted(self.samples) if self.samples is not None else None,
            "max_jitter": self.max_jitter,
            "extend_to_length": self.extend_to_length,
            "strand_column": self.strand_column,
        }
        if self.tracks:
            out["tracks"] = {
                name: (
                    str(source.resolve())
                    if isinstance(source, Path)
                    else {s: str(p.resolve()) for s, p in sorted(source.items())}
                )
                for name, source in sorted(self.tracks.items())
            }
        if self.annot_tracks:
            out["annot_tracks"] = {
                name: str(p.resolve()) for name, p in sorted(self.annot_tracks.items())
            }
        return out

    def check(self) -> list[str]:
        """Raise :class:`InputError` with one sentence for any input that cannot build;
        return a sentence for each thing that builds, as gvl.write builds it, but not as its
        submitter may expect (regions outside the variants' contigs).

        Cheap checks only (headers, indexes, the BED, the tracks' contigs); defects found only
        by reading every record (unsorted files, multi-allelic records, corrupt blocks) surface
        during the build.
        """
        for p in (self.variants, self.regions):
            if p is None:
                continue
            if not p.exists():
                raise InputError(f"Input file {p} does not exist; check the path.")
            if not p.is_file() and not (p is self.variants and self.kind == "svar"):
                raise InputError(f"Input {p} is not a file; name the file itself.")
        # Contigs without variant records are fine: their haplotypes are the reference.
        regions = bed.read_bed(self.regions, self.strand_column)
        self.dataset_samples(regions.contigs)
        return self.region_warnings(regions)

    def region_warnings(self, regions: bed.Regions) -> list[str]:
        """Regions on contigs the variant source does not name, or past a contig's end where
        it gives the length (:func:`regions.outside_warnings`); none when it cannot tell."""
        known = self.variant_contigs()
        if self.variants is None or known is None:
            return []
        absent = {c for c in regions.contigs if match_contig(c, known) is None}
        lengths = {}
        for contig in regions.contigs:
            found = match_contig(contig, known)
            if found is not None and known[found] is not None:
                lengths[contig] = known[found]
        return bed.outside_warnings(
            regions, self.regions, self.variants, absent, lengths, self.max_jitter
        )

    def variant_contigs(self) -> dict[str, int | None] | None:
        """The contigs the variant source names, with their lengths where it gives them: a
        VCF/BCF's header and index, a .pvar's ``##contig`` lines, a SparseVar's metadata.
        None when that cannot be told without reading every record (a .pvar without them)."""
        if self.variants is None:
            return None
        if self.kind == "svar":
            from farm.artifacts.dataset.svar import svar_contigs

            return dict.fromkeys(svar_contigs(self.variants))
        if self.kind == "pgen":
            from farm.artifacts.dataset.pgen import siblings

            return _pvar_contigs(siblings(self.variants)[0]) or None
        return _vcf_contigs(self.variants)

    def dataset_samples(self, contigs: list[str]) -> list[str]:
        """The dataset's samples, sorted: those asked for (default: every sample the variant
        file and each per-sample track have), each checked to be in all of them. Opening the
        tracks checks they cover the BED's ``contigs``."""
        from farm.artifacts.dataset.tracks import check_track_source

        available: set[str] | None = None
        where: list[str] = []
        if self.variants is not None:
            available = set(self._check_variants())
            where.append(str(self.variants))
        for name, source in sorted((self.tracks or {}).items()):
            held = set(check_track_source(name, source, contigs))
            available = held if available is None else available & held
            where.append(f"track {name!r}")
        for name, path in sorted((self.annot_tracks or {}).items()):
            check_track_source(name, {"": path}, contigs, annotation=True)
        assert available is not None  # the model requires variants or tracks
        if self.samples is not None:
            missing = [s for s in self.samples if s not in available]
            if missing:
                raise InputError(
                    f"Sample(s) {', '.join(missing[:5])} are not in every one of "
                    f"{', '.join(where)}; request only samples all of them have."
                )
            return sorted(self.samples)
        if not available:
            raise InputError(
                f"No sample is in every one of {', '.join(where)}; name the samples alike "
                "in the variant file and the tracks."
            )
        return sorted(available)

    def _check_variants(self) -> list[str]:
        assert self.variants is not None
        if self.kind == "svar":
            from farm.artifacts.dataset.svar import check_svar, svar_samples

            check_svar(self.variants)
            return svar_samples(self.variants)
        if self.kind == "pgen":
            from farm.artifacts.dataset.pgen import read_psam, siblings

            for sib in siblings(self.variants):
                if not sib.is_file():
                    raise InputError(
                        f"PGEN file {self.variants} has no {sib.name} beside it; put the "
                        f".pvar and .psam written with it in the same directory."
                    )
            samples = read_psam(siblings(self.variants)[1])
        else:
            if self.index_file() is None:
                raise InputError(
                    f"Variant file {self.variants} has no index (.tbi or .csi) beside it; "
                    f"create one with tabix -p vcf or bcftools index."
                )
            _check_bgzf(self.variants)
            samples = _vcf_samples(self.variants)
        if not samples:
            raise InputError(
                f"Variant file {self.variants} has no samples (no genotype columns); "
                f"a dataset needs genotypes."
            )
        return samples


_TRACK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")


def check_sources(
    variants: Path | None,
    tracks: dict[str, dict[str, Path] | Path] | None,
    annot_tracks: dict[str, Path] | None,
) -> None:
    """What a dataset's sources must be, as a request and as build parameters: samples come
    from variants or per-sample tracks; tracks have plain, distinct names and samples."""
    for name in (tracks or {}).keys() | (annot_tracks or {}).keys():
        check_track_name(name)
    if variants is None and not tracks:
        raise ValueError(
            "a dataset needs variants or per-sample tracks (its samples come from them)"
        )
    if both := sorted((tracks or {}).keys() & (annot_tracks or {}).keys()):
        raise ValueError(f"track {both[0]!r} is named twice; give each track its own name")
    for name, source in (tracks or {}).items():
        if not source:
            raise ValueError(f"track {name!r} names no sample; map samples to bigWig files")


def check_track_name(name: str) -> None:
    """A track's name is a directory name in the dataset: letters, digits, ``_.+-``."""
    if not _TRACK_NAME.fullmatch(name):
        raise ValueError(
            f"track name {name[:60]!r} is not a plain name (letters, digits and _.+-, up to "
            "128, not starting with . + or -)"
        )


def contig_aliases(name: str) -> tuple[str, str]:
    """A contig's name as given and with its "chr" prefix added or removed."""
    return name, name[3:] if name.startswith("chr") else f"chr{name}"


def match_contig(name: str, available: list[str] | set[str]) -> str | None:
    """The variant file's name for a BED contig, allowing a "chr" prefix on either side."""
    return next((alias for alias in contig_aliases(name) if alias in available), None)


def _check_bgzf(path: Path) -> None:
    state = bgzf_state(path)
    if state is Bgzf.NOT_BGZF:
        raise InputError(
            f"Variant file {path} is not BGZF-compressed (plain gzip or not compressed); "
            f"recompress it with bgzip and index it again."
        )
    if state is Bgzf.TRUNCATED:
        raise InputError(
            f"Variant file {path} is truncated (its BGZF end-of-file block is missing); "
            f"copy or export it again."
        )


def _vcf_samples(path: Path) -> list[str]:
    from farm.artifacts.dataset.vcf import _open

    vcf = _open(path)
    try:
        return list(vcf.samples)
    finally:
        vcf.close()


_CONTIG_LINE = re.compile(r"##contig=<(.*)>")


def _header_contig(line: str) -> tuple[str, int | None] | None:
    """``##contig=<ID=20,length=2000000,...>`` as its name and length."""
    found = _CONTIG_LINE.match(line.strip())
    if found is None:
        return None
    fields = dict(f.split("=", 1) for f in found.group(1).split(",") if "=" in f)
    length = fields.get("length", "")
    return (fields["ID"], int(length) if length.isdigit() else None) if "ID" in fields else None


def _pvar_contigs(pvar: Path) -> dict[str, int | None]:
    """The ``##contig`` lines of a .pvar's header (read up to its ``#CHROM`` line)."""
    out: dict[str, int | None] = {}
    with open(pvar, errors="replace") as f:
        for line in f:
            if not line.startswith("##"):
                break
            if (contig := _header_contig(line)) is not None:
                out[contig[0]] = contig[1]
    return out


def _vcf_contigs(path: Path) -> dict[str, int | None] | None:
    """A VCF/BCF's header contigs with their lengths, plus those its index lists."""
    import pysam

    try:
        with pysam.VariantFile(str(path)) as vcf:
            out = {c.name: c.length for c in vcf.header.contigs.values()}
            for name in vcf.index or ():
                out.setdefault(name, None)
    except (OSError, ValueError):
        return None  # the build says what is wrong with it
    return out
