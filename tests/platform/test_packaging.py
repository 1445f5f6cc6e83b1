"""The production packaging stays consistent with the code (no engine needed)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_every_process_with_healthy_dependencies():
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "worker", "beat", "gateway"} <= set(services)
    for name in ("postgres", "redis", "web", "worker", "beat", "gateway"):
        assert "healthcheck" in services[name], name
    # Data that must survive a container: the database, Redis' append-only file, /data.
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    for name in ("migrate", "web", "worker", "beat"):
        assert "artifacts:/data" in services[name]["volumes"], name
    assert set(compose["volumes"]) == {"pgdata", "redisdata", "artifacts"}
    # Local slots listen on the worker's loopback: the gateway shares its network.
    assert services["gateway"]["network_mode"] == "service:worker"
    assert any(str(port).endswith(":8001") for port in services["worker"]["ports"])
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
    env = {
        **os.environ,
        "POSTGRES_PASSWORD": "a-password-the-operator-chose",
        "MODELYARD_SECRET_KEY_FILE": "platform/secrets/django_secret_key.example",
    }
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yaml", "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_compose_refuses_to_start_without_a_database_password():
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    env["MODELYARD_SECRET_KEY_FILE"] = "platform/secrets/django_secret_key.example"
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yaml", "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


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


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuations joined."""
    text = (ROOT / "platform" / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            logical.append(current)
            current = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def test_dockerfile_is_multi_stage_and_runs_unprivileged_with_a_healthcheck():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    build_name = stages[0][0][1].split(" AS ")[-1].strip()
    final = stages[-1]
    copies = [args for instruction, args in final if instruction == "COPY"]
    assert any(args.startswith(f"--from={build_name} ") for args in copies)
    users = [args for instruction, args in final if instruction == "USER"]
    assert users, "the runtime stage must switch to an unprivileged user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000
    # Nothing after USER needs root: the last RUN comes before it.
    instructions = [instruction for instruction, _ in final]
    assert max(i for i, name in enumerate(instructions) if name == "RUN") < instructions.index(
        "USER"
    )
    # Static files are collected into the image, where MODELYARD_STATIC_ROOT points.
    env = " ".join(args for instruction, args in final if instruction == "ENV")
    assert "MODELYARD_STATIC_ROOT=/app/static" in env
    assert any("collectstatic" in args for instruction, args in final if instruction == "RUN")
    healthchecks = [args for instruction, args in final if instruction == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "healthcheck" in healthchecks[0]
    entrypoint = [args for instruction, args in final if instruction == "ENTRYPOINT"]
    assert entrypoint == ['["/app/platform/entrypoint.sh"]']


def test_dockerfile_copies_every_package_and_only_files_that_exist():
    import tomllib

    final = dockerfile_stages()[-1]
    sources = []
    for instruction, args in final:
        if instruction == "COPY" and not args.startswith("--from"):
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += parts[:-1]
    for source in sources:
        assert (ROOT / source).exists(), source
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        pattern.rstrip("*")
        for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= set(sources), f"not copied into the image: {packages - set(sources)}"


# --------------------------------------------------------------------------- entrypoint

ENTRYPOINT = ROOT / "platform" / "entrypoint.sh"


def test_entrypoint_knows_every_process_of_procfile_compose_and_kubernetes():
    assert ENTRYPOINT.stat().st_mode & 0o111, "entrypoint.sh must be executable"
    assert subprocess.run(["sh", "-n", str(ENTRYPOINT)]).returncode == 0
    commands = set(re.findall(r"^    ([a-z-]+)\)$", ENTRYPOINT.read_text(), re.M))
    assert {
        "web",
        "worker",
        "beat",
        "gateway",
        "migrate",
        "wait-for-migrations",
        "manage",
        "healthcheck",
    } <= commands
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]
    for name in ("migrate", "web", "worker", "beat", "gateway"):
        assert compose[name]["command"][0] in commands, name
    for path in (ROOT / "platform" / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] in ("Deployment", "Job"):
                spec = doc["spec"]["template"]["spec"]
                for container in spec["containers"] + spec.get("initContainers", []):
                    assert container["args"][0] in commands, (path.name, container["name"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("process", ["web", "gateway"])
def test_entrypoint_starts_the_process_and_its_healthcheck_sees_it(process, tmp_path):
    """What the container does: the entrypoint execs the server; Docker's HEALTHCHECK
    (``entrypoint.sh healthcheck``, a separate process) finds out which one runs and asks it."""
    from django.conf import settings

    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "REDIS_URL": settings.REDIS_URL,
        "PORT": str(port),
        "TMPDIR": str(tmp_path),
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": "1",
    }
    healthcheck = [str(ENTRYPOINT), "healthcheck"]
    server = subprocess.Popen(
        [str(ENTRYPOINT), process],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            result = subprocess.run(healthcheck, env=env, capture_output=True, timeout=30)
            if result.returncode == 0 and (tmp_path / "modelyard-process").is_file():
                break
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, result.stderr.decode()[-2000:]
            time.sleep(0.5)
        assert (tmp_path / "modelyard-process").read_text().strip() == process
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    # With the server gone, the same check fails: it really asked the server.
    assert subprocess.run(healthcheck, env=env, capture_output=True, timeout=30).returncode != 0
