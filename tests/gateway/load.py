"""Driving tests/gateway/load_generator.py from a test, and reading what it recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.gateway.support import DEFAULT_KEY, REPO_ROOT

LOAD_SCRIPT = Path(__file__).with_name("load_generator.py")


@dataclass
class Load:
    """A running load generator; :meth:`records` waits for it and returns every request."""

    popen: subprocess.Popen[str]
    out: Path
    started_at: float

    def records(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        self.popen.wait(timeout=timeout)
        assert self.popen.returncode == 0, self.popen.stderr.read() if self.popen.stderr else ""
        return [json.loads(line) for line in self.out.read_text().splitlines()]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=5)


def load_start(url: str, out: Path, *args: str, key: str = DEFAULT_KEY) -> Load:
    """Start the generator (``args``: ``--rate``/``--duration`` or ``--concurrency``/...)."""
    popen = subprocess.Popen(
        [sys.executable, str(LOAD_SCRIPT), "--url", url, "--key", key, "--out", str(out), *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert popen.stdout is not None
    line = popen.stdout.readline()  # blocks until the first request goes out
    assert line.startswith("started "), f"load generator failed: {line}{popen.stderr.read()}"  # type: ignore[union-attr]
    return Load(popen=popen, out=out, started_at=float(line.split()[1]))


def failures(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["status"] != 200]


def error_window_s(records: list[dict[str, Any]]) -> float:
    """From the first failed request's start to the last failed one's end (0 without any)."""
    failed = failures(records)
    if not failed:
        return 0.0
    return max(r["done"] for r in failed) - min(r["sent"] for r in failed)
