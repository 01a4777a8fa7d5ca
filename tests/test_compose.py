"""compose.yaml and the Dockerfile describe the same system; checked without a Docker engine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from events.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TASKFLOW = Path(sys.executable).parent / "taskflow"
APP_SERVICES = ("migrate", "api", "worker", "projector", "scheduler", "notifier",
                "coordinator")
SETTINGS_ENV = {"TASKFLOW_" + name.upper() for name in Settings.model_fields}


def _load() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


COMPOSE = _load()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def env_of(service: str) -> dict[str, str]:
    """A service's environment, whether compose.yaml writes it as a mapping or a list."""
    env = SERVICES[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def command_of(service: str) -> list[str]:
    cmd = SERVICES[service]["command"]
    cmd = cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]
    # ${VAR:-default}, as compose interpolates it when VAR is unset
    return [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", c) for c in cmd]


def test_services_are_exactly_the_system() -> None:
    assert set(SERVICES) == {"secrets", "kafka", "postgres", *APP_SERVICES}


def test_images_and_builds() -> None:
    assert SERVICES["kafka"]["image"] == "apache/kafka:4.1.1"
    assert SERVICES["postgres"]["image"] == "postgres:15"
    for name in APP_SERVICES:
        assert SERVICES[name]["build"] == ".", name
    assert "8000:8000" in SERVICES["api"]["ports"]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_taskflow_variables_are_real_settings(service: str) -> None:
    for key in env_of(service):
        if key.startswith("TASKFLOW_"):
            assert key in SETTINGS_ENV, f"{service}: {key} is not a field of Settings"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_app_services_share_the_taskflow_environment(service: str) -> None:
    env = env_of(service)
    assert env["TASKFLOW_KAFKA_BOOTSTRAP"]
    assert env["TASKFLOW_DATABASE_URL"]
    shared = {str(k): str(v) for k, v in COMPOSE["x-taskflow-env"].items()}
    assert {k: v for k, v in env.items() if k.startswith("TASKFLOW_")} == shared


def interpolated(value: str, **given: str) -> str:
    """``${VAR:-default}`` as compose interpolates it, with ``given`` as the environment."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: given.get(m[1], m[2]), value)


def test_settings_accept_the_compose_environment(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("TASKFLOW_"):
            monkeypatch.delenv(key)
    (tmp_path / "pw").write_text("s3cr:t/pw\n")
    for key, value in env_of("api").items():
        monkeypatch.setenv(key, interpolated(value))
    monkeypatch.setenv("TASKFLOW_DATABASE_PASSWORD_FILE", str(tmp_path / "pw"))
    s = Settings()
    assert s.kafka_bootstrap == "kafka:9092"
    assert s.database_url.startswith("postgresql+asyncpg://")
    assert make_url(s.database_url).password == "s3cr:t/pw"  # from the file, exactly
    assert s.auth is True  # closed unless TASKFLOW_AUTH=off is given
    monkeypatch.setenv("TASKFLOW_AUTH", interpolated(env_of("api")["TASKFLOW_AUTH"],
                                                     TASKFLOW_AUTH="off"))
    assert Settings().auth is False


def test_compose_starts_closed_with_a_generated_password(tmp_path: Path) -> None:
    assert interpolated(env_of("api")["TASKFLOW_AUTH"]) == "true"
    assert "POSTGRES_PASSWORD" not in env_of("postgres")
    assert make_url(env_of("api")["TASKFLOW_DATABASE_URL"]).password is None
    assert ":taskflow@" not in (ROOT / "compose.yaml").read_text()
    # The one-shot `secrets` service, run here with sh: a random password, kept after.
    gen = SERVICES["secrets"]
    assert gen["entrypoint"] == ["sh", "-c"] and gen["restart"] == "no"
    path = env_of("postgres")["POSTGRES_PASSWORD_FILE"]
    assert path == env_of("api")["TASKFLOW_DATABASE_PASSWORD_FILE"]
    script = gen["command"][0].replace(path, str(tmp_path / "pw"))
    passwords = []
    for where in ("a", "b"):
        (tmp_path / "pw").unlink(missing_ok=True)
        subprocess.run(["sh", "-c", script], check=True, timeout=30)
        passwords.append((tmp_path / "pw").read_text())
        assert re.fullmatch(r"[0-9a-f]{48}", passwords[-1]), (where, passwords[-1])
        subprocess.run(["sh", "-c", script], check=True, timeout=30)  # kept on a restart
        assert (tmp_path / "pw").read_text() == passwords[-1]
    assert passwords[0] != passwords[1]


def test_bootstrap_is_the_advertised_kafka_listener() -> None:
    kafka = env_of("kafka")
    advertised = {a.split("://", 1)[1] for a in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert env_of("api")["TASKFLOW_KAFKA_BOOTSTRAP"] in advertised
    assert "kafka:9092" in advertised
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{kafka['KAFKA_NODE_ID']}@kafka:9093"
    # The worker's transactions need a transaction log that one broker can hold.
    assert kafka["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_database_url_matches_the_postgres_service() -> None:
    pg = env_of("postgres")
    assert pg["POSTGRES_USER"] == pg["POSTGRES_DB"] == "taskflow"
    url = make_url(env_of("api")["TASKFLOW_DATABASE_URL"])
    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port or 5432) == ("postgres", 5432)
    assert (url.username, url.database) == (pg["POSTGRES_USER"], pg["POSTGRES_DB"])
    assert pg["POSTGRES_PASSWORD_FILE"] == env_of("api")["TASKFLOW_DATABASE_PASSWORD_FILE"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in SERVICES["postgres"]["volumes"]}
    assert pg["POSTGRES_PASSWORD_FILE"].startswith(mounts["secrets"] + "/")
    for name in APP_SERVICES:
        assert "secrets:/run/taskflow-secrets:ro" in SERVICES[name]["volumes"], name


def test_startup_order() -> None:
    for name in ("kafka", "postgres"):
        assert SERVICES[name]["healthcheck"]["test"], name
    for name in (*APP_SERVICES, "postgres"):
        assert (SERVICES[name]["depends_on"]["secrets"]["condition"]
                == "service_completed_successfully"), name
    for name in APP_SERVICES:
        deps = SERVICES[name]["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy", name
        assert deps["postgres"]["condition"] == "service_healthy", name
    for name in ("api", "worker", "projector", "scheduler"):
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
    assert "migrate" not in SERVICES["migrate"]["depends_on"]


def test_dockerfile_runs_the_taskflow_cli() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    assert "FROM python:3.11-slim" in lines
    entrypoints = [ln.removeprefix("ENTRYPOINT").strip() for ln in lines
                   if ln.startswith("ENTRYPOINT")]
    assert [json.loads(e) for e in entrypoints] == [["taskflow"]]
    assert any(ln.startswith("RUN pip install .") for ln in lines)


@pytest.mark.parametrize(("service", "subcommand"), [
    ("migrate", "migrate"), ("api", "api"), ("worker", "worker"), ("projector", "projector"),
    ("scheduler", "scheduler"), ("notifier", "notifier"), ("coordinator", "coordinator"),
])
def test_commands_are_taskflow_subcommands(service: str, subcommand: str) -> None:
    cmd = command_of(service)
    assert cmd[0] == subcommand  # the image's entrypoint is `taskflow`
    # --help is eager, but the options before it are still parsed: a misspelt one fails.
    r = subprocess.run([str(TASKFLOW), *cmd, "--help"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "Usage:" in r.stdout


def test_an_unknown_subcommand_fails() -> None:
    # Guards the test above: the CLI really rejects what it does not know.
    r = subprocess.run([str(TASKFLOW), "no-such-command", "--help"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode != 0
    r = subprocess.run([str(TASKFLOW), "api", "--hots", "0.0.0.0", "--help"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode != 0
