"""The Helm chart (deploy/helm/taskflow): rendered with ``helm template``, validated against
the Kubernetes schemas, and held to the deployment policy.

``make test`` installs helm first (``make tools``: a ``go install`` into ``.tools/``); run
alone, the fixture below installs it the same way. Nothing here is skipped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from events.settings import Settings
from tests.helpers import ROOT, Env

CHART = ROOT / "deploy" / "helm" / "taskflow"
FULL = CHART / "examples" / "full.yaml"
HELM = ROOT / ".tools" / "helm"
KUBE_VERSION = "1.31.0"
SETTINGS_ENV = {"TASKFLOW_" + name.upper() for name in Settings.model_fields}
# Kinds from KEDA's CRDs: not in the Kubernetes schemas, checked by shape below.
CRD_KINDS = {"ScaledObject", "TriggerAuthentication"}


def _helm_version() -> str:
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("HELM_VERSION"):
            return line.split("=", 1)[1].strip()
    raise AssertionError("HELM_VERSION is not set in the Makefile")


@pytest.fixture(scope="session")
def helm() -> Path:
    if not HELM.exists():
        subprocess.run(["go", "install", f"helm.sh/helm/v3/cmd/helm@{_helm_version()}"],
                       check=True, env={**os.environ, "GOBIN": str(HELM.parent)}, timeout=900)
    return HELM


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    r = subprocess.run([str(helm), "template", "tf", str(CHART), "--namespace", "taskflow",
                        "--kube-version", KUBE_VERSION, *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def render_fails(helm: Path, *args: str) -> str:
    r = subprocess.run([str(helm), "template", "tf", str(CHART), "--kube-version",
                        KUBE_VERSION, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, "rendered, but should have failed"
    return r.stderr


VALUES = {"default": (), "full": ("-f", str(FULL))}


@pytest.fixture(scope="module", params=sorted(VALUES))
def docs(request: pytest.FixtureRequest, helm: Path) -> list[dict[str, Any]]:
    return render(helm, *VALUES[request.param])


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


# ------------------------------------------------------------------ schemas
def test_every_object_is_valid_against_the_kubernetes_schemas(
        docs: list[dict[str, Any]]) -> None:
    checked = 0
    for d in docs:
        if d["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
        checked += 1
    assert checked >= 12


def test_a_broken_object_fails_validation(helm: Path) -> None:
    # Guards the test above: the validator really rejects what the schema does not allow.
    dep = of_kind(render(helm), "Deployment")["tf-taskflow-api"]
    dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"x": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSION, strict=True)
    dep = of_kind(render(helm), "Deployment")["tf-taskflow-api"]
    dep["spec"]["replicaz"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSION, strict=True)


# ------------------------------------------------------------------- policy
def test_nothing_runs_as_root_or_writes_its_root_filesystem(docs: list[dict[str, Any]]) -> None:
    for where, spec in pod_specs(docs):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] != 0, where
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, where
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, (where, c["name"])
            assert sc.get("runAsUser", pod["runAsUser"]) != 0, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc.get("privileged") is not True, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])


def test_resources_everywhere(docs: list[dict[str, Any]]) -> None:
    for where, spec in pod_specs(docs):
        for c in spec["containers"]:
            res = c["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res[part]), (where, c["name"], part)


def test_probes_on_every_long_running_container(docs: list[dict[str, Any]]) -> None:
    # A Job's container is a command that ends; its guard is activeDeadlineSeconds.
    deployments = of_kind(docs, "Deployment")
    assert deployments
    for name, d in deployments.items():
        for c in d["spec"]["template"]["spec"]["containers"]:
            assert c["livenessProbe"] and c["readinessProbe"], (name, c["name"])
    for job in of_kind(docs, "Job").values():
        assert job["spec"]["activeDeadlineSeconds"] > 0


def test_no_latest_tag(docs: list[dict[str, Any]], helm: Path) -> None:
    for where, spec in pod_specs(docs):
        for c in spec["containers"]:
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag, f"{where}: {image} has no tag"
            assert tag != "latest", where
    assert "never latest" in render_fails(helm, "--set", "image.tag=latest")


# ----------------------------------------------------------- the components
def test_deployments_for_the_api_and_each_service(helm: Path) -> None:
    default = of_kind(render(helm), "Deployment")
    assert set(default) == {f"tf-taskflow-{n}" for n in
                            ("api", "worker", "projector", "scheduler", "notifier",
                             "coordinator")}
    full = of_kind(render(helm, "-f", str(FULL)), "Deployment")
    assert "tf-taskflow-coordinator" in full
    for name, d in {**default, **full}.items():
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        component = name.removeprefix("tf-taskflow-")
        assert args[0] == component  # the image's entrypoint is `taskflow`
    api = default["tf-taskflow-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["args"][:3] == ["api", "--host", "0.0.0.0"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_a_new_service_is_one_values_entry(helm: Path) -> None:
    docs = render(helm, "--set", "services.janitor.enabled=true",
                  "--set", "services.janitor.replicas=3",
                  "--set", "services.janitor.resources.requests.cpu=50m",
                  "--set", "services.janitor.resources.requests.memory=64Mi",
                  "--set", "services.janitor.resources.limits.cpu=100m",
                  "--set", "services.janitor.resources.limits.memory=128Mi")
    dep = of_kind(docs, "Deployment")["tf-taskflow-janitor"]
    assert dep["spec"]["replicas"] == 3
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["janitor"]
    assert c["resources"]["limits"]["memory"] == "128Mi"
    assert "exec" in c["readinessProbe"]
    assert "tf-taskflow-janitor" in of_kind(docs, "PodDisruptionBudget")
    off = of_kind(render(helm, "--set", "services.scheduler.enabled=false"), "Deployment")
    assert "tf-taskflow-scheduler" not in off


def test_migrate_runs_as_a_pre_install_and_pre_upgrade_hook(docs: list[dict[str, Any]]) -> None:
    job = of_kind(docs, "Job")["tf-taskflow-migrate"]
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert set(hooks) == {"pre-install", "pre-upgrade"}
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["migrate"]
    # What the hook reads must exist before it runs: made by hooks of a lower weight.
    weight = int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    cm = of_kind(docs, "ConfigMap")["tf-taskflow-config"]
    assert int(cm["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight
    for s in of_kind(docs, "Secret").values():
        if "database-url" in s["stringData"]:
            assert int(s["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight


def test_every_taskflow_variable_is_a_setting(docs: list[dict[str, Any]]) -> None:
    names = set(of_kind(docs, "ConfigMap")["tf-taskflow-config"]["data"])
    for _, spec in pod_specs(docs):
        for c in spec["containers"]:
            names |= {e["name"] for e in c.get("env", [])}
    taskflow = {n for n in names if n.startswith("TASKFLOW_")}
    assert {"TASKFLOW_KAFKA_BOOTSTRAP", "TASKFLOW_DATABASE_URL"} <= taskflow
    assert taskflow <= SETTINGS_ENV, taskflow - SETTINGS_ENV


def test_the_api_is_closed_unless_auth_is_turned_off(helm: Path) -> None:
    def auth(*args: str) -> str:
        data = of_kind(render(helm, *args), "ConfigMap")["tf-taskflow-config"]["data"]
        return str(data["TASKFLOW_AUTH"])

    assert auth() == "true"
    assert Settings(auth=auth()).auth is True
    for closed in ("true", "yes", "on"):
        assert auth("--set", f"auth={closed}") == "true", closed
    for off in ("off", "false"):
        assert auth("--set", f"auth={off}") == "off", off
        assert Settings(auth=auth("--set", f"auth={off}")).auth is False
    assert "not config.TASKFLOW_AUTH" in render_fails(
        helm, "--set", "config.TASKFLOW_AUTH=off")


def test_the_postgres_password_is_generated_never_a_fixed_default(helm: Path) -> None:
    def password(docs: list[dict[str, Any]]) -> str:
        return str(of_kind(docs, "Secret")["tf-taskflow-secrets"]["stringData"]
                   ["postgres-password"])

    one, two = password(render(helm)), password(render(helm))
    assert len(one) >= 24 and one != two
    assert one not in (CHART / "values.yaml").read_text()
    given = of_kind(render(helm, "--set", "postgres.password=s3cr/t@x"), "Secret")
    url = given["tf-taskflow-secrets"]["stringData"]["database-url"]
    assert url.startswith("postgresql+asyncpg://taskflow:s3cr%2Ft%40x@postgres:5432/taskflow")
    assert url.endswith("?ssl=require")
    mine = render(helm, "--set", "existingSecret=mine")
    assert "tf-taskflow-secrets" not in of_kind(mine, "Secret")
    dep = of_kind(mine, "Deployment")["tf-taskflow-worker"]
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "mine", "key": "database-url"} in [
        e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e]


def test_kafka_security_reaches_settings_and_keda(helm: Path) -> None:
    docs = render(helm, "-f", str(FULL))
    data = of_kind(docs, "ConfigMap")["tf-taskflow-config"]["data"]
    assert data["TASKFLOW_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert data["TASKFLOW_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert data["TASKFLOW_KAFKA_SSL_CAFILE"] == "/etc/taskflow/kafka-ca/ca.crt"
    settings = Settings(**{k.removeprefix("TASKFLOW_").lower(): v for k, v in data.items()})
    assert settings.replication_factor == 3 and settings.min_insync_replicas == 2
    auth = of_kind(docs, "TriggerAuthentication")["tf-taskflow-kafka"]
    params = {t["parameter"] for t in auth["spec"]["secretTargetRef"]}
    assert {"sasl", "username", "password", "tls", "ca"} <= params
    keda_secret = of_kind(docs, "Secret")["tf-taskflow-keda-kafka"]["stringData"]
    assert keda_secret == {"sasl": "scram_sha512", "username": "taskflow", "tls": "enable"}
    assert "SASL" in render_fails(helm, "--set", "kafka.security.protocol=SASL_SSL")


def test_keda_scales_workers_on_lag_capped_at_the_partition_count(helm: Path) -> None:
    assert not of_kind(render(helm), "ScaledObject")  # optional, off by default
    docs = render(helm, "-f", str(FULL))
    so = of_kind(docs, "ScaledObject")["tf-taskflow-worker"]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"]["name"] == "tf-taskflow-worker"
    assert so["spec"]["maxReplicaCount"] == 24  # 50 asked, 24 partitions
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == "taskflow.worker"
    assert meta["topic"] == "taskflow.task-events"
    assert int(meta["lagThreshold"]) > 0
    assert meta["allowIdleConsumers"] == "false"
    # KEDA owns the replica count: the Deployment leaves it unset.
    assert "replicas" not in of_kind(docs, "Deployment")["tf-taskflow-worker"]["spec"]
    fewer = render(helm, "-f", str(FULL), "--set", "services.worker.keda.maxReplicas=5")
    assert of_kind(fewer, "ScaledObject")["tf-taskflow-worker"]["spec"]["maxReplicaCount"] == 5


def test_the_api_scales_on_cpu(docs: list[dict[str, Any]]) -> None:
    hpa = of_kind(docs, "HorizontalPodAutoscaler")["tf-taskflow-api"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "tf-taskflow-api"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert "replicas" not in of_kind(docs, "Deployment")["tf-taskflow-api"]["spec"]


def test_disruption_budgets_and_network_policy(docs: list[dict[str, Any]]) -> None:
    pdbs = of_kind(docs, "PodDisruptionBudget")
    deps = of_kind(docs, "Deployment")
    assert set(pdbs) == set(deps)
    for name, pdb in pdbs.items():
        assert pdb["spec"]["selector"]["matchLabels"] == \
            deps[name]["spec"]["selector"]["matchLabels"]
    pols = of_kind(docs, "NetworkPolicy")
    everyone = pols["tf-taskflow"]["spec"]
    assert set(everyone["policyTypes"]) == {"Ingress", "Egress"}
    assert everyone["ingress"] == []  # nothing comes in but what the API policy lets in
    ports = {p["port"] for rule in everyone["egress"] for p in rule["ports"]}
    assert 53 in ports and 5432 in ports
    api = pols["tf-taskflow-api"]["spec"]
    assert [p["port"] for p in api["ingress"][0]["ports"]] == [8000]


def test_ingress_is_optional(helm: Path) -> None:
    assert not of_kind(render(helm), "Ingress")
    ing = of_kind(render(helm, "-f", str(FULL)), "Ingress")["tf-taskflow"]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "tf-taskflow-api"


# ------------------------------------------------ the services' heartbeat probe
def _probe(helm: Path, service: str, kind: str, ready_s: int) -> list[str]:
    docs = render(helm, "--set", f"heartbeat.readyWithinSeconds={ready_s}")
    c = of_kind(docs, "Deployment")[f"tf-taskflow-{service}"]["spec"]["template"]["spec"][
        "containers"][0]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    assert env["TASKFLOW_HEARTBEAT_FILE"].startswith("/tmp/")  # the writable emptyDir
    return [str(a) for a in c[kind]["exec"]["command"]]


@pytest.mark.parametrize("service", ["worker", "projector"])
async def test_a_consumer_that_stops_turning_is_not_ready(env: Env, helm: Path,
                                                          tmp_path: Path, service: str) -> None:
    """The chart's own readiness command, run against a real service's heartbeat file."""
    command = _probe(helm, service, "readinessProbe", ready_s=3)
    beat = tmp_path / "heartbeat"

    def probe() -> int:
        return subprocess.run(command, env={**os.environ, "TASKFLOW_HEARTBEAT_FILE": str(beat)},
                              timeout=10).returncode

    assert probe() != 0  # no file yet: not ready
    proc = env.proc(service, TASKFLOW_HEARTBEAT_FILE=str(beat))
    deadline = time.monotonic() + 60
    while probe() != 0:
        assert proc.alive(), proc.output()[-2000:]
        assert time.monotonic() < deadline, "the service never became ready"
        await asyncio.sleep(0.5)
    await asyncio.sleep(4)
    assert probe() == 0  # idle, but its loop turns: still ready
    os.kill(proc.pid, signal.SIGSTOP)  # a loop that no longer turns
    try:
        await asyncio.sleep(5)
        assert probe() != 0
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while probe() != 0:
        assert time.monotonic() < deadline, "the service did not become ready again"
        await asyncio.sleep(0.5)
