"""Each fault scenario gets its own cluster (Redis and workers), stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.close()


@pytest.fixture
def volatile_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Redis with no persistence at all: a restart loses every record and message."""
    c = Cluster(tmp_path, aof=False)
    yield c
    c.close()
