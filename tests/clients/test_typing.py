"""The client ships py.typed: mypy --strict (config in clients/python/pyproject.toml) finds
nothing in it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.clients.test_packaging import CLIENT


def test_the_client_passes_mypy_strict():
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            "pyproject.toml",
            "--cache-dir",
            os.devnull,
        ],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Every module was checked (a config whose `files` matched nothing would pass too).
    modules = sorted(p.name for p in (CLIENT / "src" / "modelyard_client").glob("*.py"))
    assert f"no issues found in {len(modules)} source files" in checked.stdout, checked.stdout
