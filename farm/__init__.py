"""gvl-farm: build GenVarLoader artifacts once, publish them atomically, record their validity."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gvl-farm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
