"""gvl-farm: build GenVarLoader artifacts once, publish them atomically, record their validity."""

from __future__ import annotations

import functools


def __getattr__(name: str) -> str:
    # Looked up on demand: importlib.metadata costs 25 ms of every `farm` command's start-up.
    if name == "__version__":
        return _version()
    raise AttributeError(name)


@functools.cache
def _version() -> str:
    """Once per process: every artifact's metadata records it, and a lookup costs 1 ms."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gvl-farm")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0"
