"""`make run` on a fresh data folder: embedded PostgreSQL and Redis (forced, even where local
ones answer), migrations, the demo, every process; then a second terminal beside it."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import psutil

from devstack.stackfile import stack_file_read
from tests.devstack.conftest import ROOT


def _servers(data: Path) -> set[int]:
    """PostgreSQL and Redis servers of the stack whose data folder is ``data`` (by their
    command line or working folder): other engineers' servers on the machine come and go,
    and so do PostgreSQL's connection backends ("postgres: user db ..."), which are no servers."""
    found = set()
    for proc in psutil.process_iter(["name", "cmdline", "cwd"]):
        cmdline = proc.info["cmdline"] or [""]
        if proc.info["name"] not in ("redis-server", "postgres") or cmdline[0].startswith(
            "postgres:"
        ):
            continue
        if any(str(data) in place for place in [*cmdline, proc.info["cwd"] or ""]):
            found.add(proc.pid)
    return found


def test_the_stack_runs_on_embedded_servers(make_run):
    recorded = stack_file_read(make_run.data)
    # The embedded PostgreSQL listens on a socket in the data folder (the URL encodes it),
    # the embedded Redis on a port of its own: not the machine's 5432 / 6379.
    assert recorded["DATABASE_URL"].startswith(
        f"postgresql://postgres@{quote(str(make_run.data / 'postgres'), safe='')}:"
    )
    assert recorded["REDIS_URL"].startswith("redis://127.0.0.1:")
    assert not recorded["REDIS_URL"].startswith("redis://127.0.0.1:6379/")
    lines = make_run.devstack_lines()
    # The stack is shared by the devstack test files: one that ran earlier on this worker
    # may have killed a process, which the supervisor restarted after "ready" (its own test
    # checks that). Only the first start is judged here.
    first_restart = next((i for i, line in enumerate(lines) if ") exited " in line), len(lines))
    started = [i for i, line in enumerate(lines[:first_restart]) if line.startswith("started ")]
    ready = [i for i, line in enumerate(lines) if line.startswith("ready at ")]
    assert len(ready) == 1 and ready[0] > max(started), lines  # once, after every start
    assert lines[ready[0]].startswith(f"ready at {make_run.url}/")

    # One live flow through web and worker: an upload is validated by the worker.
    token = make_run.manage("adduser", "embedded-ds", "--role", "data_scientist", "--token")
    assert token.returncode == 0, token.stderr
    headers = {"Authorization": f"Token {token.stdout.strip().splitlines()[-1]}"}
    api = f"{make_run.url}/api/v1"
    with httpx.Client(timeout=30, headers=headers) as http:
        created = http.post(f"{api}/models/", json={"name": "embedded-check"})
        assert created.status_code == 201, created.text
        uploaded = http.post(
            f"{api}/models/embedded-check/versions/",
            data={"framework": "sklearn"},
            files={
                "file": ("model.joblib", (ROOT / "examples" / "model.joblib").read_bytes()),
                "reference_data": ("r.csv", (ROOT / "examples" / "reference.csv").read_bytes()),
            },
        )
        assert uploaded.status_code == 201, uploaded.text
        url = f"{api}/models/embedded-check/versions/{uploaded.json()['number']}/"
        deadline = time.monotonic() + 120
        while (state := http.get(url).json()["state"]) in ("uploaded", "validating"):
            assert time.monotonic() < deadline, state
            time.sleep(1)
        assert state == "validated", http.get(url).json()


def test_a_second_terminal_finds_the_running_stack(make_run):
    # `manage.py` with nothing but the data folder known (the default one is .data/).
    result = make_run.manage("adduser", "second-terminal", "--role", "viewer", "--token")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    models = httpx.get(
        f"{make_run.url}/api/v1/models/", headers={"Authorization": f"Token {token}"}, timeout=30
    )
    assert models.status_code == 200 and "churn" in models.text

    # `python -m devstack env` reports the running stack and starts nothing.
    before = _servers(make_run.data)
    env = subprocess.run(
        [sys.executable, "-m", "devstack", "env"],
        cwd=ROOT,
        env=make_run.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert env.returncode == 0, env.stderr
    recorded = stack_file_read(make_run.data)
    for key in ("DATABASE_URL", "REDIS_URL", "MODELYARD_PUBLIC_URL", "MODELYARD_GATEWAY_URL"):
        assert f"export {key}={shlex.quote(recorded[key])}" in env.stdout.splitlines()
    assert recorded["MODELYARD_PUBLIC_URL"] == make_run.url
    time.sleep(1)
    assert _servers(make_run.data) == before


def test_devstack_env_without_a_stack_says_so_and_starts_nothing(tmp_path, make_run):
    before = _servers(tmp_path)
    env = subprocess.run(
        [sys.executable, "-m", "devstack", "env"],
        cwd=ROOT,
        env={**make_run.env, "MODELYARD_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert env.returncode == 1 and env.stdout == ""
    assert "No running stack" in env.stderr and "make run" in env.stderr
    time.sleep(1)
    assert _servers(tmp_path) == before
