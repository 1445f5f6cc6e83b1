"""`make run` itself (``python -m devstack run``) on a data folder and ports of its own.

Nothing of the test's own database or Redis is passed down: the stack starts an embedded
PostgreSQL and Redis from the pip packages even where local ones answer, as on a fresh
machine, migrates, seeds the demo and starts every Procfile process.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from devstack.services import free_port

ROOT = Path(__file__).resolve().parents[2]
DEVSTACK_LINE = re.compile(r"^\d\d:\d\d:\d\d devstack \| (.*)$")


class MakeRun:
    def __init__(self, data: Path, logs: Path) -> None:
        self.data, self.logs = data, logs
        self.web_port, self.gateway_port = free_port(), free_port()
        self.pause_dir = logs / "pause"
        self.pause_dir.mkdir(exist_ok=True)
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.gateway = f"http://127.0.0.1:{self.gateway_port}"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DJANGO_", "MODELYARD_", "DATABASE_URL", "REDIS_URL"))
        }
        self.env.update(
            MODELYARD_DATA_DIR=str(data),
            MODELYARD_WEB_PORT=str(self.web_port),
            MODELYARD_GATEWAY_PORT=str(self.gateway_port),
            BENTOML_DO_NOT_TRACK="True",
            # The worker's test-only pause hook (deployments.services._steps.pause_for_tests):
            # inert until a test creates an arm file there.
            MODELYARD_TEST_PAUSE_DIR=str(self.pause_dir),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        )
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.logs / f"make-run-{self.starts}.log"

    def start(self, timeout: float = 300) -> None:
        self.starts += 1
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "devstack", "run"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not any(line.startswith("ready at ") for line in self.devstack_lines()):
            assert self.proc.poll() is None, self.log.read_text()[-4000:]
            assert time.monotonic() < deadline, self.log.read_text()[-4000:]
            time.sleep(0.5)
        assert httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200

    def devstack_lines(self) -> list[str]:
        text = self.log.read_text() if self.log.exists() else ""
        return [m.group(1) for m in map(DEVSTACK_LINE.match, text.splitlines()) if m]

    def interrupt(self, timeout: float = 120) -> int:
        """Ctrl-C, as a terminal sends it (SIGINT to devstack's process group)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout)

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        """`manage.py` in a second terminal: only the data folder is known there."""
        env = {k: v for k, v in self.env.items() if not k.startswith("MODELYARD_WEB")}
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def processes(self) -> list[psutil.Process]:
        """Every process still running that belongs to this stack (by its data folder)."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
                environ = proc.info["environ"] or {}
            except psutil.Error:
                continue
            # Slot servers start from a minimal environment (no MODELYARD_*), but their
            # BENTOML_HOME is their own folder under the stack's data folder.
            ours = (
                str(self.data) in cmdline
                or environ.get("MODELYARD_DATA_DIR") == str(self.data)
                or environ.get("BENTOML_HOME", "").startswith(f"{self.data}{os.sep}")
            )
            with contextlib.suppress(psutil.Error):
                if ours and proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        return found

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.interrupt()
        for proc in self.processes():
            proc.kill()


@pytest.fixture(scope="session")
def make_run(tmp_path_factory):
    stack = MakeRun(tmp_path_factory.mktemp("make-run"), tmp_path_factory.mktemp("make-run-logs"))
    stack.start()
    try:
        yield stack
    finally:
        stack.kill()
