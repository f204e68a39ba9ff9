"""The dataset artifact: GenVarLoader's ``gvl.write`` directory, built and published by the farm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farm.artifacts.dataset.params import DatasetParams
from farm.artifacts.dataset.validate import classify_dataset, validate_dataset
from farm.artifacts.dataset.writer import FORMAT_VERSION, write_dataset
from farm.fingerprint import Fingerprint
from farm.progress import NO_PROGRESS, Progress
from farm.publish import Outcome, Owner, build_and_publish

__all__ = [
    "FORMAT_VERSION",
    "DatasetParams",
    "build_dataset",
    "classify_dataset",
    "validate_dataset",
    "write_dataset",
]


def build_dataset(
    params: DatasetParams,
    dest: Path,
    *,
    owner: Owner,
    replace: bool = False,
    expected: dict[str, Fingerprint] | None = None,
    root: Path | None = None,
    progress: Progress = NO_PROGRESS,
) -> tuple[Outcome, dict[str, Any] | None]:
    """Check the inputs, build into a staging directory, and publish it at ``dest`` atomically.

    Checking first means a bad request fails in milliseconds with nothing staged; a defect
    only a full read finds fails the build, and :func:`build_and_publish` removes the staging.
    ``replace`` swaps out whatever is at ``dest`` atomically, without reading it: a forced
    rebuild of a dataset that looks fresh but is corrupt inside is this. ``expected``: the
    sources' fingerprints by role, as :func:`write_dataset` takes them. ``root``: see
    :func:`farm.publish.build_and_publish`.
    """
    params.check()
    return build_and_publish(
        dest,
        lambda d: write_dataset(
            params,
            d,
            expected=expected,
            progress=progress,
            dest=dest,
            fence_token=owner.fence.token() if owner.fence is not None else None,
        ),
        owner=owner,
        replace=replace,
        root=root,
    )
