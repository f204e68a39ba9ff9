"""A dataset build request: its inputs, the files behind its key, and the checks before a build."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from farm.artifacts.bgzf import Bgzf, bgzf_state
from farm.artifacts.dataset import regions as bed
from farm.errors import InputError

VariantKind = Literal["vcf", "pgen"]
_VCF_SUFFIXES = (".vcf.gz", ".vcf.bgz", ".bcf")


class DatasetParams(BaseModel):
    """Everything that decides a dataset's bytes; nothing about where or how it is built.

    ``samples``: GenVarLoader stores the selected samples sorted by code point (Python's
    ``sorted``), whatever order they are asked for in, so two requests that differ only in
    sample order build the same dataset and share a key (see :meth:`canonical`).
    ``strand_column`` is the 1-based BED column holding the strand (6 in standard BED, 0 for
    none): GenVarLoader reads it by name, and a BED with extra columns may hold it elsewhere.
    ``max_mem`` and ``overwrite`` of ``gvl.write`` are the farm's business, not the request's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    variants: Path
    regions: Path
    samples: tuple[str, ...] | None = None
    max_jitter: int = Field(default=0, ge=0)
    extend_to_length: bool = True
    strand_column: int = Field(default=6, ge=0)

    @field_validator("samples")
    @classmethod
    def _unique(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            if not v:
                raise ValueError("samples must name at least one sample, or be None for all")
            if len(set(v)) != len(v):
                raise ValueError("samples must not repeat a name")
        return v

    @property
    def kind(self) -> VariantKind:
        name = self.variants.name.lower()
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
            f"Variant file {self.variants} is not a VCF/BCF (.vcf.gz, .bcf) or PGEN (.pgen); "
            f"pass one of those."
        )

    def index_file(self) -> Path | None:
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
        when there is one) or ``pvar`` and ``psam`` (a PGEN's), then ``regions`` (the BED).

        These are the names the request key gives its sources, and the keys of the
        ``expected`` fingerprints a build checks its sources against.
        """
        roles = {"variants": self.variants}
        if self.kind == "pgen":
            from farm.artifacts.dataset.pgen import siblings

            roles["pvar"], roles["psam"] = siblings(self.variants)
        elif (index := self.index_file()) is not None:
            roles["index"] = index
        roles["regions"] = self.regions
        return roles

    def canonical(self) -> dict[str, Any]:
        """JSON-able request with absolute paths and samples in the order the dataset holds them."""
        return {
            "variants": str(self.variants.resolve()),
            "regions": str(self.regions.resolve()),
            "samples": sorted(self.samples) if self.samples is not None else None,
            "max_jitter": self.max_jitter,
            "extend_to_length": self.extend_to_length,
            "strand_column": self.strand_column,
        }

    def check(self) -> None:
        """Raise :class:`InputError` with one sentence for any input that cannot build.

        Cheap checks only (headers, indexes, the BED); defects found only by reading every
        record (unsorted files, multi-allelic records, corrupt blocks) surface during the build.
        """
        for p in (self.variants, self.regions):
            if not p.exists():
                raise InputError(f"Input file {p} does not exist; check the path.")
            if not p.is_file():
                raise InputError(f"Input {p} is not a file; name the file itself.")
        available = self._check_variants()
        if self.samples is not None:
            missing = [s for s in self.samples if s not in set(available)]
            if missing:
                raise InputError(
                    f"Sample(s) {', '.join(missing[:5])} are not in {self.variants}; "
                    f"request only samples the file has."
                )
        # Contigs without records are fine: their haplotypes are the reference sequence.
        bed.read_bed(self.regions, self.strand_column)

    def _check_variants(self) -> list[str]:
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
