"""The production packaging stays consistent with the code (no engine needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_every_process_with_healthy_dependencies():
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "worker", "beat", "gateway"} <= set(services)
    for name in ("postgres", "redis", "web", "worker", "gateway"):
        assert "healthcheck" in services[name], name
    for name in ("web", "worker", "beat", "gateway"):
        env = services[name]["environment"]
        assert env["DJANGO_SETTINGS_MODULE"] == "config.settings.production"
        assert "DJANGO_SECRET_KEY_FILE" in env  # secrets from files, never inline
    # Migrations run once, after the databases are healthy; the app processes wait for them.
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("web", "worker", "beat"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_compose_file_validates_with_docker_compose():
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yaml", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_procfile_starts_every_process_and_platform_holds_no_python():
    procfile = (ROOT / "platform" / "Procfile").read_text()
    assert {
        line.split(":")[0] for line in procfile.splitlines() if line and not line.startswith("#")
    } == {
        "web",
        "worker",
        "beat",
        "gateway",
    }
    assert not list((ROOT / "platform").rglob("*.py"))
