"""The compose file, as both Compose implementations read it.

`docker compose` (v2, a CLI plugin) and `docker-compose` (v1, standalone) each load and validate
the file with `config`, which needs no Docker engine. An implementation that is not installed
is skipped, unless FARM_TEST_REQUIRE_COMPOSE names it (CI installs `docker-compose` and names
it, so a broken file cannot pass there by being skipped).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker" / "compose.yaml"

IMPLEMENTATIONS = {
    "docker-compose": ["docker-compose"],
    "docker compose": ["docker", "compose"],
}


def _installed(argv: list[str]) -> bool:
    if shutil.which(argv[0]) is None:
        return False
    probe = subprocess.run([*argv, "version"], capture_output=True, timeout=60)
    return probe.returncode == 0


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def compose(request: pytest.FixtureRequest) -> list[str]:
    argv = IMPLEMENTATIONS[request.param]
    if not _installed(argv):
        required = os.environ.get("FARM_TEST_REQUIRE_COMPOSE", "").split(",")
        if request.param in required:
            pytest.fail(f"{request.param} is required (FARM_TEST_REQUIRE_COMPOSE) but missing")
        pytest.skip(f"{request.param} is not installed")
    return argv


def _config(compose: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "COMPOSE_"))}
    environ.update(env)
    # cwd outside the repository: no stray .env file can fill in a variable for the test.
    return subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=120,
    )


def test_config_resolves_the_shared_directory_for_workers_and_flower(
    compose: list[str], tmp_path: Path
) -> None:
    shared = "/srv/genomics"
    result = _config(compose, tmp_path, FARM_DATA=shared, FARM_REDIS_PORT="6380")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"redis", "worker", "flower"}

    for name in ("worker", "flower"):
        environment = services[name]["environment"]
        assert environment["FARM_REDIS_URL"] == "redis://redis:6379/0"
        assert environment["FARM_ALLOWED_ROOTS"] == shared
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"

    # Workers see artifacts at the paths clients wrote in their requests.
    [mount] = services["worker"]["volumes"]
    source = mount["source"] if isinstance(mount, dict) else mount.split(":")[0]
    target = mount["target"] if isinstance(mount, dict) else mount.split(":")[1]
    assert source == target == shared

    # Redis keeps its queue across restarts, and nothing is published beyond loopback.
    assert "--appendonly" in services["redis"]["command"]
    for name in ("redis", "flower"):
        for port in services[name]["ports"]:
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1"
    redis_port = services["redis"]["ports"][0]
    published = (
        str(redis_port["published"]) if isinstance(redis_port, dict) else redis_port.split(":")[1]
    )
    assert published == "6380"


def test_config_without_the_shared_directory_names_the_variable(
    compose: list[str], tmp_path: Path
) -> None:
    result = _config(compose, tmp_path)
    assert result.returncode != 0
    assert "set FARM_DATA to the shared data directory" in result.stderr
