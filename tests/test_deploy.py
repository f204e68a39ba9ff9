"""The shipped deployments (docker/systemd, docker/k8s) say what they must.

Each manifest is read as its tool reads it and checked against the farm itself, not against a
copy of its names: every ``farm`` command line and probe runs through the real CLI's parser and
``--help``, every ``FARM_*`` name is a field of :class:`farm.config.Settings`, the metric KEDA
scales on is one a real ``farm metrics`` prints against a real Redis, and the Redis unit's
command starts a real Redis whose records survive a restart. ``systemd-analyze verify`` and
``kubectl kustomize`` run where they are installed. The Slurm script: test_deploy_slurm.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from farm.config import Settings
from tests.support.manifests import (
    DOCKER,
    FARM,
    HAND_BACK_S,
    K8S,
    METRICS_PORT,
    SBATCH,
    SYSTEMD,
    UNIT_FARM,
    check_cli,
    config,
    env_file,
    expand,
    farm_containers,
    k8s_calls,
    k8s_objects,
    pod_labels,
    pod_spec,
    read_unit,
    seconds,
    systemd_calls,
    unit_env,
    yaml_docs,
)
from tests.support.processes import farm_env


def _call_params() -> list[Any]:
    params = {}
    for where, argv in [*systemd_calls(), *k8s_calls()]:
        params[where, tuple(argv)] = pytest.param(argv, id=where)
    return list(params.values())


@pytest.mark.parametrize("argv", _call_params())
def test_every_farm_command_of_the_manifests_exists(argv: list[str]) -> None:
    check_cli(argv)


def test_the_cli_check_refuses_what_the_cli_lacks() -> None:
    check_cli(["farm", "worker", "--concurrency", "2", "--autoscale", "4,1"])
    check_cli(["farm", "server", "run", "--dir", "/data"])
    for argv in (
        ["farm", "wroker"],
        ["farm", "worker", "--concurency", "2"],
        ["farm", "server", "run", "--data-dir", "/data"],
    ):
        with pytest.raises(AssertionError, match="is not a farm command"):
            check_cli(argv)


# --- settings ----------------------------------------------------------------------------------


def _farm_names() -> dict[str, str]:
    """Every FARM_* name the deployments set or document, and where."""
    found: dict[str, str] = {}
    texts = [SYSTEMD / "farm.env", *sorted(SYSTEMD.glob("*.service")), SBATCH]
    for path in texts:
        for name in re.findall(r"\b(FARM_[A-Z0-9_]+)", path.read_text()):
            found.setdefault(name, path.name)
    for name in config():
        found.setdefault(name, "config.yaml")
    for where, _, container in farm_containers():
        for var in container.get("env", []):
            found.setdefault(var["name"], where)
    return found


@pytest.mark.parametrize("name", sorted(_farm_names()))
def test_every_farm_variable_is_a_setting(name: str) -> None:
    field = name.lower().removeprefix("farm_")
    assert field in Settings.model_fields, f"{name} ({_farm_names()[name]}) is not a Settings field"


def test_the_settings_shipped_are_valid_together() -> None:
    """The values, not only the names: Settings accepts each deployment's as a whole."""
    known = {k: v for k, v in config().items() if k.lower()[5:] in Settings.model_fields}
    Settings.from_env(known)
    Settings.from_env(env_file())
    for stop_grace in (config()["FARM_STOP_GRACE_S"], env_file()["FARM_STOP_GRACE_S"]):
        assert float(stop_grace) > 0


# --- VM: systemd -------------------------------------------------------------------------------


def test_worker_unit_heals_and_stops_gracefully() -> None:
    unit = read_unit("gvl-farm-worker@.service")
    service = unit["Service"]
    assert service["Restart"] == ["always"]
    assert service["KillSignal"] == ["SIGTERM"]
    # SIGTERM to the worker's main process, as docker and Kubernetes send it; SIGKILL to all
    # that is left at the deadline.
    assert service["KillMode"] == ["mixed"]
    assert service["EnvironmentFile"] == ["/etc/gvl-farm/farm.env"]
    stop_grace = float(env_file()["FARM_STOP_GRACE_S"])
    assert seconds(service["TimeoutStopSec"][0]) >= stop_grace + HAND_BACK_S
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]

    # One state directory per instance (where `farm health` looks), which the env file must
    # not override for all of them.
    env = unit_env(unit)
    assert env["FARM_STATE_DIR"] == "/var/lib/gvl-farm/worker-%i"
    assert "FARM_STATE_DIR" not in env_file()
    assert service["StateDirectory"] == ["gvl-farm/worker-%i"]
    [argv] = [c for _, c in systemd_calls() if c[1] == "worker"]
    assert argv[argv.index("--concurrency") + 1] == env_file()["WORKER_CONCURRENCY"]


def test_health_timer_checks_the_worker_instance_it_names() -> None:
    health = read_unit("gvl-farm-health@.service")
    timer = read_unit("gvl-farm-health@.timer")
    assert timer["Timer"]["OnUnitInactiveSec"]
    assert (
        unit_env(health)["FARM_STATE_DIR"]
        == unit_env(read_unit("gvl-farm-worker@.service"))["FARM_STATE_DIR"]
    )
    [check] = health["Service"]["ExecStart"]
    assert f"{UNIT_FARM} health" in check
    [restart] = health["Service"]["ExecStopPost"]
    assert restart.startswith("+") and "restart gvl-farm-worker@%i.service" in restart


def _stand_in(path: Path, script: str) -> Path:
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(("failures", "restarted"), [(0, False), (2, False), (3, True)])
def test_health_check_restarts_a_worker_only_after_three_failures_in_a_row(
    tmp_path: Path, failures: int, restarted: bool
) -> None:
    """The health unit's own command lines, run by sh as systemd would, with a stand-in `farm
    health` that fails ``failures`` times and a stand-in systemctl; only the pause is shorter."""
    health = read_unit("gvl-farm-health@.service")["Service"]
    tries = tmp_path / "tries"
    farm = _stand_in(
        tmp_path / "farm",
        f'echo "$*" >> {tries}; [ "$(wc -l < {tries})" -gt {failures} ]',
    )
    systemctl = _stand_in(tmp_path / "systemctl", f'echo "$*" > {tmp_path / "systemctl-argv"}')

    def run(line: str, **env: str) -> subprocess.CompletedProcess[str]:
        line = line.lstrip("+").replace(UNIT_FARM, str(farm))
        line = line.replace("/bin/systemctl", str(systemctl)).replace("sleep 10", "sleep 0.01")
        argv = expand(line, {})
        env = {"PATH": os.environ["PATH"], **env}
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)

    [check] = health["ExecStart"]
    result = run(check)
    assert tries.read_text().splitlines() == ["health"] * min(failures + 1, 3)
    assert result.returncode == (1 if restarted else 0)
    # systemd then runs ExecStopPost with the outcome in SERVICE_RESULT.
    [after] = health["ExecStopPost"]
    outcome = "exit-code" if result.returncode else "success"
    assert run(after, SERVICE_RESULT=outcome).returncode == 0
    called = tmp_path / "systemctl-argv"
    if restarted:
        assert called.read_text().split() == ["--no-block", "restart", "gvl-farm-worker@1.service"]
    else:
        assert not called.exists()


def test_metrics_unit_listens_where_the_env_file_says() -> None:
    unit = read_unit("gvl-farm-metrics.service")
    assert unit["Service"]["Restart"] == ["always"]
    [argv] = [c for w, c in systemd_calls() if w.startswith("gvl-farm-metrics")]
    listen = argv[argv.index("--listen") + 1]
    assert listen == f"127.0.0.1:{METRICS_PORT}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _redis_running(argv: list[str], log: Path, port: int) -> Iterator[redis.Redis]:
    """Run ``argv`` (a Redis on ``port``) until the block ends, then SIGTERM it, as systemd."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "Redis did not start"
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text()


def test_redis_unit_runs_a_redis_whose_records_survive_a_restart(tmp_path: Path) -> None:
    """The unit's own command line, run: only the binary, port and directory are the test's."""
    unit = read_unit("gvl-farm-redis.service")
    assert unit["Service"]["Restart"] == ["always"]
    assert unit["Service"]["StateDirectory"] == ["gvl-farm/redis"]
    [line] = unit["Service"]["ExecStart"]
    argv = expand(line, unit_env(unit))
    assert argv[:3] == [UNIT_FARM, "server", "run"]
    assert argv[argv.index("--dir") + 1] == "/var/lib/gvl-farm/redis"
    assert argv[argv.index("--bind") + 1] == "127.0.0.1"  # loopback unless told otherwise
    port = _free_port()
    argv[0] = str(FARM)
    argv[argv.index("--dir") + 1] = str(tmp_path)
    argv[argv.index("--port") + 1] = str(port)
    log = tmp_path / "redis.log"
    with _redis_running(argv, log, port) as client:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("dir") == {"dir": str(tmp_path)}
        client.set("farm:record", "valid")
    assert any(tmp_path.rglob("*.aof")), "no append-only file written"
    with _redis_running(argv, log, port) as client:
        assert client.get("farm:record") == "valid"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser: unknown keys, bad values, and commands that do not exist."""
    for path in [*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.timer")]:
        text = path.read_text().replace(UNIT_FARM, str(FARM))
        (tmp_path / path.name).write_text(text)
    names = [
        "gvl-farm-redis.service",
        "gvl-farm-metrics.service",
        "gvl-farm-worker@1.service",
        "gvl-farm-health@1.service",
        "gvl-farm-health@1.timer",
    ]
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


# --- Kubernetes --------------------------------------------------------------------------------


def test_every_manifest_parses_and_the_kustomizations_list_them_all() -> None:
    listed: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        [doc] = yaml_docs(kustomization)
        for resource in doc["resources"]:
            target = (kustomization.parent / resource).resolve()
            assert target.exists(), f"{kustomization}: {resource} does not exist"
            listed.add(target / "kustomization.yaml" if target.is_dir() else target)
    for path in K8S.rglob("*.yaml"):
        docs = yaml_docs(path)
        assert docs, f"{path} is empty"
        if path.name != "kustomization.yaml":
            assert path.resolve() in listed, f"{path} is in no kustomization"
            for doc in docs:
                assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path


def test_worker_pods_probe_the_farm_and_outlast_the_stop_grace() -> None:
    objects = k8s_objects()
    stop_grace = float(config()["FARM_STOP_GRACE_S"])
    for key in (("Deployment", "gvl-farm-worker"), ("ScaledJob", "gvl-farm-worker")):
        pod = pod_spec(objects[key])
        assert pod
        assert pod["terminationGracePeriodSeconds"] >= stop_grace + HAND_BACK_S, key
        [container] = pod["containers"]
        assert container["command"][:2] == ["farm", "worker"]
        assert container["livenessProbe"]["exec"]["command"] == ["farm", "health"]
        assert container["startupProbe"]["exec"]["command"] == ["farm", "health"]
        assert container["envFrom"] == [{"configMapRef": {"name": "gvl-farm-config"}}]
        # `farm health` reads the heartbeat the worker keeps under its state directory.
        [state] = [e["value"] for e in container["env"] if e["name"] == "FARM_STATE_DIR"]
        assert state in {m["mountPath"] for m in container["volumeMounts"]}
    worker = pod_spec(objects["Deployment", "gvl-farm-worker"])
    assert worker
    readiness = worker["containers"][0]["readinessProbe"]["exec"]["command"]
    assert readiness == ["farm", "health", "--ready"]
    # KEDA owns the replica count; a `replicas` here would undo it on every apply.
    assert "replicas" not in objects["Deployment", "gvl-farm-worker"]["spec"]


def test_workers_share_one_filesystem_at_the_allowed_root() -> None:
    objects = k8s_objects()
    claim = objects["PersistentVolumeClaim", "gvl-farm-data"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    root = config()["FARM_ALLOWED_ROOTS"]
    assert ":" not in root
    for where, obj, container in farm_containers():
        if container["command"][1] != "worker":
            continue
        pod = pod_spec(obj)
        assert pod
        volumes = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = {m["mountPath"]: volumes.get(m["name"]) for m in container["volumeMounts"]}
        assert mounts.get(root) == "gvl-farm-data", where


def test_redis_keeps_an_append_only_file_on_its_own_volume() -> None:
    objects = k8s_objects()
    redis_set = objects["StatefulSet", "gvl-farm-redis"]
    assert redis_set["spec"]["replicas"] == 1
    [container] = redis_set["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    [claim] = redis_set["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == args[args.index("--dir") + 1]
    # The farm's URL names this Service and its port.
    service = objects["Service", "gvl-farm-redis"]
    [port] = service["spec"]["ports"]
    assert config()["FARM_REDIS_URL"] == f"redis://gvl-farm-redis:{port['port']}/0"
    assert service["spec"]["selector"] == redis_set["spec"]["selector"]["matchLabels"]
    # The same Redis the compose file runs.
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert container["image"] == compose["services"]["redis"]["image"]


def test_only_the_farm_reaches_redis() -> None:
    """The NetworkPolicy admits pods labelled part-of gvl-farm: every farm pod carries it."""
    objects = k8s_objects()
    policy = objects["NetworkPolicy", "gvl-farm-redis"]
    [rule] = policy["spec"]["ingress"]
    [source] = rule["from"]
    admitted = source["podSelector"]["matchLabels"]
    for _, obj, _ in farm_containers():
        labels = pod_labels(obj)
        assert admitted.items() <= labels.items(), obj["metadata"]["name"]


def test_images_are_one_farm_image_named_in_the_kustomizations() -> None:
    images = {c["image"] for _, _, c in farm_containers()}
    assert images == {"gvl-farm"}
    for kustomization in (K8S / "kustomization.yaml", K8S / "scaledjob" / "kustomization.yaml"):
        [doc] = yaml_docs(kustomization)
        assert [i["name"] for i in doc["images"]] == ["gvl-farm"]


def test_metrics_exporter_serves_on_one_port_everywhere() -> None:
    objects = k8s_objects()
    [container] = pod_spec(objects["Deployment", "gvl-farm-metrics"])["containers"]
    command = container["command"]
    assert command[:3] == ["farm", "metrics", "--listen"]
    assert command[3] == f"0.0.0.0:{METRICS_PORT}"
    assert [p["containerPort"] for p in container["ports"]] == [METRICS_PORT]
    service = objects["Service", "gvl-farm-metrics"]
    assert [p["port"] for p in service["spec"]["ports"]] == [METRICS_PORT]
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)


def _query_metrics(trigger: dict[str, Any]) -> set[str]:
    assert trigger["type"] == "prometheus"
    return set(re.findall(r"\bgvlfarm_\w+", trigger["metadata"]["query"]))


def test_keda_scales_the_workers_on_keys_in_flight_down_to_zero() -> None:
    objects = k8s_objects()
    scaled = objects["ScaledObject", "gvl-farm-worker"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "gvl-farm-worker"
    assert ("Deployment", "gvl-farm-worker") in objects
    assert scaled["minReplicaCount"] == 0
    assert scaled["cooldownPeriod"] >= 60
    assert scaled["maxReplicaCount"] >= 1
    [trigger] = scaled["triggers"]
    assert _query_metrics(trigger) == {"gvlfarm_keys"}
    # An empty answer (the exporter down) is an error that keeps the fallback, not zero work.
    assert trigger["metadata"]["ignoreNullValues"] == "false"
    assert scaled["fallback"]["replicas"] >= 1
    # One pod per `--concurrency` keys in flight.
    command = pod_spec(objects["Deployment", "gvl-farm-worker"])["containers"][0]["command"]
    assert trigger["metadata"]["threshold"] == command[command.index("--concurrency") + 1]

    job = objects["ScaledJob", "gvl-farm-worker"]["spec"]
    [trigger] = job["triggers"]
    assert _query_metrics(trigger) == {"gvlfarm_keys"}
    assert trigger["metadata"]["threshold"] == "1"
    command = pod_spec(objects["ScaledJob", "gvl-farm-worker"])["containers"][0]["command"]
    assert command[command.index("--max-builds") + 1] == "1"
    assert command[command.index("--concurrency") + 1] == "1"
    assert pod_spec(objects["ScaledJob", "gvl-farm-worker"])["restartPolicy"] == "Never"


def _samples(text: str) -> dict[str, float]:
    """Prometheus text format: ``name{labels}`` -> value."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            found[series] = float(value)
    return found


def test_the_metric_keda_reads_is_one_farm_metrics_prints(
    registry: Any, redis_url: str, genomes: Path, tmp_path: Path
) -> None:
    """A real `farm metrics` against a real Redis with one key queued (no worker runs)."""
    env = farm_env(redis_url, tmp_path)
    fasta = genomes / "yeast_S288C_chrI_SGD2005.fa"
    submit = [str(FARM), "submit", "cache", str(fasta), "--dest", str(tmp_path / "y.gvlfa")]
    subprocess.run(submit, env=env, check=True, capture_output=True, timeout=120)
    scrape = subprocess.run(
        [str(FARM), "metrics"], env=env, capture_output=True, text=True, timeout=120
    )
    assert scrape.returncode == 0, scrape.stderr
    samples = _samples(scrape.stdout)
    names = {series.partition("{")[0] for series in samples}
    for key in (("ScaledObject", "gvl-farm-worker"), ("ScaledJob", "gvl-farm-worker")):
        [trigger] = k8s_objects()[key]["spec"]["triggers"]
        assert _query_metrics(trigger) <= names
    # sum(gvlfarm_keys): what KEDA reads is the demand, one key queued.
    in_flight = {s: v for s, v in samples.items() if s.partition("{")[0] == "gvlfarm_keys"}
    assert {'gvlfarm_keys{status="queued"}', 'gvlfarm_keys{status="building"}'} <= set(in_flight)
    assert sum(in_flight.values()) == 1


def _kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    argv = [kubectl, "kustomize", str(path)] if kubectl else ["kustomize", "build", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.skipif(
    not (shutil.which("kubectl") or shutil.which("kustomize")), reason="no kubectl or kustomize"
)
@pytest.mark.parametrize(
    ("overlay", "workers"),
    [(".", {"Deployment", "ScaledObject"}), ("scaledjob", {"ScaledJob"})],
)
def test_kustomize_builds_each_variant(overlay: str, workers: set[str]) -> None:
    docs = _kustomize(K8S / overlay)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {(kind, "gvl-farm-worker") for kind in workers} <= kinds
    assert {k for k, n in kinds if n == "gvl-farm-worker"} == workers
    assert ("StatefulSet", "gvl-farm-redis") in kinds
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "gvl-farm", doc["metadata"]["name"]
        pod = pod_spec(doc)
        for container in pod["containers"] if pod else []:
            if container.get("command", [""])[0] == "farm":
                assert container["image"] == "gvl-farm:latest"
                assert pod_labels(doc)["app.kubernetes.io/part-of"] == "gvl-farm"
