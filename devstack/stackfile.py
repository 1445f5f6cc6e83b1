"""`.data/stack.env`: where a running `make run` says which servers it started.

`make run` writes it once its servers answer and removes it when it stops; a second terminal
finds the stack through it (config/settings/local.py for `manage.py`, `python -m devstack
env` for a shell). It is a shell file (``set -a; . .data/stack.env``). A file left behind by a
stack that was killed names a dead process and is ignored, never trusted.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from pathlib import Path

PID_KEY = "MODELYARD_STACK_PID"


def stack_file(data_dir: Path) -> Path:
    return Path(data_dir) / "stack.env"


def stack_file_write(data_dir: Path, env: dict[str, str]) -> Path:
    path = stack_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{key}={shlex.quote(value)}" for key, value in {**env, PID_KEY: str(os.getpid())}.items()
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        "# written by `make run` (python -m devstack run); removed when it stops\n"
        + "\n".join(lines)
        + "\n"
    )
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


def stack_file_remove(data_dir: Path) -> None:
    path = stack_file(data_dir)
    with contextlib.suppress(FileNotFoundError):
        if stack_file_read(data_dir, alive_only=False).get(PID_KEY) == str(os.getpid()):
            path.unlink()


def stack_file_read(data_dir: Path, *, alive_only: bool = True) -> dict[str, str]:
    """The running stack's variables; {} when there is none (or its process is gone)."""
    path = stack_file(data_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, raw = line.partition("=")
            parts = shlex.split(raw)
            values[key.strip()] = parts[0] if parts else ""
    if alive_only and not _alive(values.get(PID_KEY, "")):
        return {}
    return values


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stack_env_apply(data_dir: Path) -> None:
    """Set the running stack's variables in os.environ where they are not set already."""
    for key, value in stack_file_read(data_dir).items():
        if key != PID_KEY:
            os.environ.setdefault(key, value)
