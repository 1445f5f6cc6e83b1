"""Test run: real PostgreSQL and Redis (devstack exports their URLs), fast hashing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-not-secret")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/modelyard")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")


def _xdist_worker_isolate() -> None:
    """Under pytest-xdist (`make test` runs three workers), each worker gets Redis databases and
    an artifact folder of its own, as pytest-django gives it a test database of its own:
    worker k uses database 9 + 2k and the live stack's next one (tests/conftest.py), so
    gw0 holds 9-10, gw1 11-12. Done once, in the worker: the processes a worker starts
    inherit both variables and must keep the values (MODELYARD_TEST_WORKER marks it done).
    Three workers fit below database 15 (gw2: 13-14)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker or os.environ.get("MODELYARD_TEST_WORKER") == worker:
        return
    os.environ["MODELYARD_TEST_WORKER"] = worker
    index = int(worker.removeprefix("gw") or 0)
    base, _, number = os.environ["REDIS_URL"].rpartition("/")
    os.environ["REDIS_URL"] = f"{base}/{(int(number or 0) + 2 * index) % 16}"
    if "MODELYARD_TEST_MEDIA_ROOT" in os.environ:
        media = Path(os.environ["MODELYARD_TEST_MEDIA_ROOT"]) / worker
        media.mkdir(exist_ok=True)
        os.environ["MODELYARD_TEST_MEDIA_ROOT"] = str(media)


_xdist_worker_isolate()

from .base import *  # noqa: E402, F403 -- after the worker's variables are set

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# One artifact directory per test run (inherited by the live stack's processes), so
# "nothing was stored" checks cannot see files of another run.
# Made only when none is given: setdefault(..., mkdtemp()) left an unused directory behind
# on every import that had one (each mypy run, each process of the live stack).
if "MODELYARD_TEST_MEDIA_ROOT" not in os.environ:
    os.environ["MODELYARD_TEST_MEDIA_ROOT"] = tempfile.mkdtemp(prefix="modelyard-test-artifacts-")
MEDIA_ROOT = Path(os.environ["MODELYARD_TEST_MEDIA_ROOT"])
STORAGES["default"] = {
    "BACKEND": "django.core.files.storage.FileSystemStorage",
    "OPTIONS": {"location": str(MEDIA_ROOT), "file_permissions_mode": 0o640},
}
MODELYARD_SANDBOX_TIMEOUT_SECONDS = 60
# django-axes refuses authenticate() calls without a request, which the test client's
# login() makes; tests/security turns it on where lockouts are what is tested.
AXES_ENABLED = False
# Suites try hundreds of bad tokens from 127.0.0.1 within a minute; tests/security checks
# the production rate (MODELYARD_TOKEN_AUTH_FAILURE_RATE) itself.
MODELYARD_TOKEN_AUTH_FAILURE_RATE = "100000/min"  # noqa: S105 - a rate, not a secret
