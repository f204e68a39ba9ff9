"""Headerless array files, checksummed as they are written (no second read)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from farm.fingerprint import format_checksum, new_checksum


class RawWriter:
    """Append-only raw array file; ``close`` returns the checksum of what was written."""

    def __init__(self, path: Path) -> None:
        self._f: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._h = new_checksum()
        self.n_bytes = 0

    def write(self, arr: np.ndarray) -> None:
        buf = memoryview(np.ascontiguousarray(arr)).cast("B")
        self._f.write(buf)
        self._h.update(buf)
        self.n_bytes += len(buf)

    def close(self) -> str:
        self._f.close()
        return format_checksum(self._h)
