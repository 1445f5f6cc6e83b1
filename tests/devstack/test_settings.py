"""What `make run`'s settings promise: a second terminal's `manage.py` finds the running
stack through .data/stack.env (and never a dead one's), and one quiet log format."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from devstack.stackfile import PID_KEY, stack_file, stack_file_write
from tests.devstack.conftest import ROOT

SHOW = (
    "from django.conf import settings as s; "
    "d = s.DATABASES['default']; print(d['HOST'], d['NAME'], s.REDIS_URL, s.MODELYARD_LOG_FORMAT)"
)


def _local_settings(data_dir, **extra: str) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "MODELYARD_", "DATABASE_URL", "REDIS_URL"))
    }
    env.update(DJANGO_SETTINGS_MODULE="config.settings.local", MODELYARD_DATA_DIR=str(data_dir))
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {SHOW}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_local_settings_read_the_running_stack_and_let_the_environment_win(tmp_path):
    stack_file_write(
        tmp_path,
        {
            "DATABASE_URL": "postgresql://postgres@%2Ftmp%2Fsock%20dir:5432/modelyard",
            "REDIS_URL": "redis://127.0.0.1:6390/0",
        },
    )  # written by this (live) process, as `make run` writes it
    shown = _local_settings(tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == [
        "/tmp/sock",
        "dir",
        "modelyard",
        "redis://127.0.0.1:6390/0",
        "plain",
    ]
    overridden = _local_settings(tmp_path, REDIS_URL="redis://127.0.0.1:6391/3")
    assert "redis://127.0.0.1:6391/3" in overridden.stdout


def test_a_stack_file_of_a_dead_process_is_ignored(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = stack_file_write(tmp_path, {"DATABASE_URL": "postgresql://postgres@x:5432/y"})
    path.write_text(path.read_text().replace(f"{PID_KEY}={os.getpid()}", f"{PID_KEY}={dead.pid}"))
    shown = _local_settings(tmp_path)
    assert shown.returncode != 0
    assert "DATABASE_URL" in shown.stderr  # the clear "required but not set", not a stale URL
    assert stack_file(tmp_path).exists()


def test_celery_logs_through_django_logging_and_periodic_lines_are_quiet():
    from config.celery_app import app

    assert app.conf.worker_hijack_root_logger is False
    for name in ("celery.beat", "celery.worker.strategy", "celery.app.trace"):
        assert logging.getLogger(name).level == logging.WARNING, name
