"""One version: pyproject.toml's, as the package, the CLI and the OpenAPI document say it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from api.app import create_app
from events import __version__
from events.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_cli_and_openapi_carry_pyprojects_version() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == declared
    out = subprocess.run([sys.executable, "-m", "cli.main", "--version"], cwd=ROOT,
                         capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
    assert out.stdout.strip() == f"taskflow {declared}"
    assert create_app(Settings()).openapi()["info"]["version"] == declared


def test_the_changelog_has_a_section_for_that_version() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"## [{declared}]" in (ROOT / "CHANGELOG.md").read_text()
