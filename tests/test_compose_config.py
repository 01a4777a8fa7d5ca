"""compose.yaml as Docker Compose itself reads it: ``docker compose config``, no engine.

The compose plugin is built by ``make tools`` into ``.tools/docker/cli-plugins`` (the
Docker client finds it through ``DOCKER_CONFIG``); run alone, the fixture builds it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT

DOCKER_CONFIG = ROOT / ".tools" / "docker"
PLUGIN = DOCKER_CONFIG / "cli-plugins" / "docker-compose"


@pytest.fixture(scope="module")
def docker() -> str:
    exe = shutil.which("docker")
    assert exe, "the docker client is needed (no engine): install docker-ce-cli"
    if not PLUGIN.exists():
        subprocess.run(["make", "tools"], cwd=ROOT, check=True, timeout=1200)
    return exe


def config(docker: str, **env: str) -> dict[str, Any]:
    r = subprocess.run([docker, "compose", "--project-directory", str(ROOT), "config",
                        "--format", "json"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env={**os.environ, "DOCKER_CONFIG": str(DOCKER_CONFIG),
                                        **env})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert isinstance(doc, dict)
    return doc


def test_compose_accepts_the_file(docker: str) -> None:
    doc = config(docker)
    assert {"kafka", "postgres", "migrate", "api", "worker", "projector"} <= set(doc["services"])
    api = doc["services"]["api"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert [p["published"] for p in api["ports"]] == ["8000"]


def test_the_api_scales_with_workers(docker: str) -> None:
    cmd = config(docker)["services"]["api"]["command"]
    assert cmd[cmd.index("--workers") + 1] == "2"
    cmd = config(docker, API_WORKERS="4")["services"]["api"]["command"]
    assert cmd[cmd.index("--workers") + 1] == "4"


def test_a_broken_file_is_refused(docker: str, tmp_path: Path) -> None:
    # Guards the tests above: compose really checks what it reads.
    (tmp_path / "compose.yaml").write_text(
        (ROOT / "compose.yaml").read_text().replace("condition: service_healthy",
                                                    "condition: service_happy", 1))
    r = subprocess.run([docker, "compose", "--project-directory", str(tmp_path), "config"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "DOCKER_CONFIG": str(DOCKER_CONFIG)})
    assert r.returncode != 0
    assert "depends_on.kafka.condition" in r.stderr
