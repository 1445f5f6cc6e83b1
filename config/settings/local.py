"""Developer machine: the servers `make run` started, wherever `manage.py` runs.

`make run` exports DATABASE_URL/REDIS_URL to its own processes and records them in
`.data/stack.env` (devstack/stackfile.py); a `manage.py` command in a second terminal reads
that file for every variable not set in its environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from devstack.stackfile import stack_env_apply

stack_env_apply(
    Path(os.environ.get("MODELYARD_DATA_DIR", Path(__file__).resolve().parents[2] / ".data"))
)
os.environ.setdefault("DJANGO_SECRET_KEY", "local-development-only-not-secret")
os.environ.setdefault("DJANGO_DEBUG", "true")
# One log format for every process under `make run`: plain lines for a terminal.
os.environ.setdefault("MODELYARD_LOG_FORMAT", "plain")

from .base import *  # noqa: E402, F403
