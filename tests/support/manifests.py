"""Reading the shipped deployments (docker/systemd, docker/k8s, docker/slurm) as their tools do,
and checking the ``farm`` command lines in them against the real CLI.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SYSTEMD = DOCKER / "systemd"
K8S = DOCKER / "k8s"
SBATCH = DOCKER / "slurm" / "gvl-farm-workers.sbatch"
FARM = Path(sys.executable).with_name("farm")  # the CLI of the environment under test
UNIT_FARM = "/opt/gvl-farm/bin/farm"  # where the units expect it (README, Deploying)
METRICS_PORT = 9808

# A stopping worker's grace ends with the hand-back (the key requeued, the staging directory
# removed); the farm's own stop waits FARM_STOP_GRACE_S + 10 s for it (farm/embedded.py), and
# every SIGKILL deadline shipped here leaves at least that much.
HAND_BACK_S = 10.0

# --- reading the manifests -------------------------------------------------------------------


def read_unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit's sections and keys; a key may repeat (Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (SYSTEMD / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file() -> dict[str, str]:
    """docker/systemd/farm.env, as systemd reads an EnvironmentFile."""
    found = {}
    for line in (SYSTEMD / "farm.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def unit_env(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    """The environment of a unit's commands: Environment=, then its EnvironmentFile over it."""
    env: dict[str, str] = {}
    for assignment in unit["Service"].get("Environment", []):
        key, _, value = assignment.partition("=")
        env[key] = value
    if unit["Service"].get("EnvironmentFile"):
        env.update(env_file())
    return env


def expand(command: str, env: dict[str, str], instance: str = "1") -> list[str]:
    """An Exec line as systemd runs it: ``${X}`` one word, ``$X`` split (dropped when empty)."""
    command = command.replace("%i", instance).replace("$$", "\0")
    command = re.sub(r"\$\{(\w+)\}", lambda m: shlex.quote(env.get(m.group(1), "")), command)
    command = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), ""), command)
    return [w.replace("\0", "$") for w in shlex.split(command)]


def farm_calls(words: list[str]) -> list[list[str]]:
    """The ``farm`` command lines in an Exec line, also inside ``sh -c '...'``."""
    if words[0] == UNIT_FARM:
        return [["farm", *words[1:]]]
    if words[:2] == ["/bin/sh", "-c"]:
        script = words[2]
        return [
            ["farm", *shlex.split(m.group(1))]
            for m in re.finditer(re.escape(UNIT_FARM) + r"((?:[ \t]+[^\s;&|]+)*)", script)
        ]
    return []


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object under docker/k8s by (kind, name), kustomizations aside."""
    found = {}
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml_docs(path):
            found[doc["kind"], doc["metadata"]["name"]] = doc
    return found


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    spec = obj.get("spec", {})
    template = spec.get("template") or spec.get("jobTargetRef", {}).get("template")
    return template["spec"] if template else None


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    spec = obj["spec"]
    template = spec.get("template") or spec["jobTargetRef"]["template"]
    return template["metadata"]["labels"]


def farm_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, object, container) for every container that runs the farm's image."""
    for (kind, name), obj in k8s_objects().items():
        pod = pod_spec(obj)
        for container in pod["containers"] if pod else []:
            if container.get("command", [""])[0] == "farm":
                yield f"{kind}/{name}", obj, container


def k8s_calls() -> Iterator[tuple[str, list[str]]]:
    for where, _, container in farm_containers():
        yield f"{where}:command", [str(w) for w in container["command"]]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            command = container.get(probe, {}).get("exec", {}).get("command")
            if command:
                yield f"{where}:{probe}", command


def systemd_calls() -> Iterator[tuple[str, list[str]]]:
    for path in sorted(SYSTEMD.glob("*.service")):
        unit = read_unit(path.name)
        for key in ("ExecStart", "ExecCondition", "ExecStopPost"):
            for line in unit["Service"].get(key, []):
                for call in farm_calls(expand(line.lstrip("+-"), unit_env(unit))):
                    yield f"{path.name}:{key}", call


def config() -> dict[str, str]:
    return k8s_objects()["ConfigMap", "gvl-farm-config"]["data"]


def seconds(value: str) -> float:
    """A systemd time span as written here: ``60``, ``60s``, ``2min``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert match, f"unexpected time span {value!r}"
    return float(match.group(1)) * (60 if match.group(2) in ("min", "m") else 1)


# --- the real CLI ----------------------------------------------------------------------------


@functools.cache
def cli() -> Any:
    """The CLI's command tree (click's, as typer builds it; typer may ship its own click)."""
    import typer.main

    from farm.cli import app

    return typer.main.get_command(app)


@functools.cache
def help_runs(*path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FARM), *path, "--help"], capture_output=True, text=True, timeout=120)


def options(command: Any) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def check_cli(argv: list[str]) -> None:
    """``argv`` names a command and options the installed ``farm`` has."""
    assert argv[0] == "farm", argv

    def missing(what: str) -> None:
        raise AssertionError(f"`{what}` (from {shlex.join(argv)}) is not a farm command")

    command = cli()
    path: list[str] = []
    words = argv[1:]
    while hasattr(command, "commands") and words and not words[0].startswith("-"):
        sub = command.commands.get(words[0])
        if sub is None:
            missing(f"farm {' '.join([*path, words[0]])}")
        assert sub is not None
        command, path, words = sub, [*path, words[0]], words[1:]
    known = options(command)
    if path == ["worker"]:
        # `farm worker` hands the options it does not know to Celery's worker.
        from celery.bin.worker import worker as celery_worker

        known |= options(celery_worker)
    for word in words:
        if word.startswith("-") and word.split("=")[0] not in known:
            missing(f"farm {' '.join(path)} {word.split('=')[0]}")
    run = help_runs(*path)
    assert run.returncode == 0, f"farm {' '.join(path)} --help: {run.stderr}"
