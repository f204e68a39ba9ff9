"""The production worker app with a slow builder: a fault injected at the builder seam.

``FARM_TEST_BUILD_SECONDS`` makes every cache build sleep that long inside its staging
directory (with a partial file in it), so tests can kill a worker mid-build or outlast the
broker's visibility timeout. ``FARM_TEST_BUILD_KILLS_WORKER`` makes every build SIGKILL its own
process (a segfault or the OOM killer, as far as Celery can tell). Each build start is logged,
so tests can count builds.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from farm.artifacts import gvlfa
from workers.app import app

log = logging.getLogger("farm.test.slow")
_write_cache = gvlfa.write_cache


def _slow_write_cache(fasta: Path, out_dir: Path, dest: Path, **kwargs: Any):
    log.warning("BUILD-START %s pid=%d", dest, os.getpid())
    (out_dir / gvlfa.DATA_FILE).write_bytes(b"partial")
    if os.environ.get("FARM_TEST_BUILD_KILLS_WORKER"):
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(os.environ.get("FARM_TEST_BUILD_SECONDS", "0")))
    (out_dir / gvlfa.DATA_FILE).unlink()
    return _write_cache(fasta, out_dir, dest, **kwargs)


gvlfa.write_cache = _slow_write_cache

__all__ = ["app"]
