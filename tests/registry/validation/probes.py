"""Test-only payloads, run inside the validation child through a hole made in the allow-list.

The restricted unpickler refuses every global that is not on the allow-list, so a hostile
pickle never reaches the isolation behind it. To test that second line (the child's user,
network, environment and limits) as if the list had a hole, a test hands the child a copy
of modelkit whose allowlist.json also admits the functions below (``helpers.probe_modelkit``);
the copy ships this file as ``modelkit._probes``, since the child (``python -I``, the
project's packages blocked) can import nothing else of ours. Standard library only.

A probe that merely returns (a connection that worked, a process that started) returns an
object without ``predict()``, so success shows up as a different error than the one the
isolation causes.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class Findings:
    """What a probe saw, handed back as the "model"'s predictions (one JSON string a row)."""

    n_features_in_ = 1  # lets the child make its synthetic sample

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts

    def predict(self, rows: Any) -> list[str]:
        return [json.dumps(self.facts)] * len(rows)


def connect(host: str, port: int) -> str:
    socket.create_connection((host, port), timeout=5).close()
    return f"connected to {host}:{port}"


def inspect(secret_path: str) -> Findings:
    """The process's ids, environment and /proc status, and whether it can read a file."""
    try:
        read: str | None = Path(secret_path).read_text()
    except OSError as exc:
        read = None
        error = f"{type(exc).__name__}: {exc}"
    else:
        error = ""
    return Findings(
        {
            "uid": os.getuid(),
            "euid": os.geteuid(),
            "gid": os.getgid(),
            "groups": os.getgroups(),
            "environ": dict(os.environ),
            "status": Path("/proc/self/status").read_text(),
            "read": read,
            "read_error": error,
        }
    )


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def crash() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def exit_with(code: int) -> None:
    os._exit(code)


def spawn(pid_file: str, own_session: bool, then_sleep: float) -> str:
    """Start a sleeping process (in a session of its own if asked), wait until it wrote its
    pid, then sleep (0: return at once, leaving it behind).

    The process writes its pid itself, read from /proc/self: in a PID namespace of the
    child's own the number ``Popen`` sees is not the one the test can look up.
    """
    script = (
        "import os, sys, time; open(sys.argv[1] + '.tmp', 'w').write(os.readlink('/proc/self'));"
        " os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(300)"
    )
    child = subprocess.Popen(
        [sys.executable, "-I", "-c", script, pid_file],
        start_new_session=own_session,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not Path(pid_file).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(then_sleep)
    return f"started {child.pid}"


def import_module(name: str) -> Any:
    return importlib.import_module(name)


NAMES = ("connect", "inspect", "sleep", "crash", "exit_with", "spawn", "import_module")
