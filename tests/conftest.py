from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.core.files.storage import default_storage
from rest_framework.test import APIClient

from accounts.choices import Role
from accounts.services import token_create
from tests.factories import RegisteredModelFactory, UserFactory
from tests.models import train_sklearn_joblib

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def sklearn_model():
    return train_sklearn_joblib(seed=0)


@pytest.fixture
def make_user(db):
    def make(role: str = Role.VIEWER, username: str | None = None):
        kwargs = {"role": role}
        if username:
            kwargs["username"] = username
        return UserFactory(**kwargs)

    return make


@pytest.fixture
def scientist(make_user):
    return make_user(Role.DATA_SCIENTIST, "dana")


@pytest.fixture
def reviewer(make_user):
    return make_user(Role.REVIEWER, "rory")


@pytest.fixture
def operator(make_user):
    return make_user(Role.OPERATOR, "olive")


@pytest.fixture
def api_for():
    """An APIClient authenticated with a fresh token of the given user."""

    def client(user, **token_kwargs):
        issued = token_create(
            user=user, name=f"t-{user.username}-{time.monotonic_ns()}", **token_kwargs
        )
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {issued.key}")
        return api

    return client


@pytest.fixture
def registered_model(scientist):
    return RegisteredModelFactory(name="churn", owner=scientist)


def stored_files() -> set[str]:
    """Every file currently in artifact storage (to prove a rejected upload wrote nothing)."""
    root = Path(default_storage.location)
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def storage_snapshot():
    before = stored_files()
    return lambda: stored_files() - before


# --- a running stack: real web server + real Celery worker on the test database ---------


def _wait_http(url: str, deadline: float, proc: subprocess.Popen, log: Path) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in time:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def bento_dirs(tmp_path_factory):
    """A BentoML store and runtime state of this test session (never reused across runs:
    the test database numbers versions from 1 again, and a Bento is tied to its artifact)."""
    root = tmp_path_factory.mktemp("bentoml")
    dirs = {"home": root / "home", "state": root / "runtime"}
    for path in dirs.values():
        path.mkdir()
    yield dirs
    from deployments.runtime.local import LocalProcessBackend

    backend = LocalProcessBackend(home=dirs["home"], state_dir=dirs["state"])
    for slot in backend.slots():  # servers the worker started run in their own sessions
        backend.slot_stop(slot_key=slot.slot_key)


@pytest.fixture
def live_stack(transactional_db, tmp_path, bento_dirs, settings):
    """gunicorn (web), a Celery worker and the gateway as real subprocesses, pointed at the
    test database, a private Redis database and this session's BentoML store.

    Tests using it see committed data only (transactional_db), exactly like a client would.
    """
    from django.db import connection

    from deployments import backends
    from devstack.services import children_stop, free_port

    db = connection.settings_dict
    host = db["HOST"] or "127.0.0.1"
    if host.startswith("/"):
        from urllib.parse import quote

        host = quote(host, safe="")
    database_url = f"postgresql://{db['USER']}@{host}:{db['PORT'] or 5432}/{db['NAME']}"
    port = free_port()
    # A Redis database of its own: no other worker sees its tasks, no stale message reaches it.
    redis_url = settings.REDIS_URL.rsplit("/", 1)[0] + "/10"
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "MODELYARD_DATA_DIR": str(settings.DATA_DIR),
        "MODELYARD_BENTOML_HOME": str(bento_dirs["home"]),
        "MODELYARD_RUNTIME_STATE_DIR": str(bento_dirs["state"]),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    gateway_port = free_port()
    env["MODELYARD_GATEWAY_URL"] = f"http://127.0.0.1:{gateway_port}"
    # The test process calls services too (rollback, reconcile): same engines as the stack.
    settings.REDIS_URL = redis_url
    settings.MODELYARD_BENTOML_HOME = str(bento_dirs["home"])
    settings.MODELYARD_RUNTIME_STATE_DIR = str(bento_dirs["state"])
    settings.MODELYARD_GATEWAY_URL = env["MODELYARD_GATEWAY_URL"]
    backends.runtime_backend.cache_clear()
    backends.route_store.cache_clear()
    web_log, worker_log = tmp_path / "web.log", tmp_path / "worker.log"
    gateway_log = tmp_path / "gateway.log"
    procs = []
    try:
        with (
            web_log.open("w") as web_out,
            worker_log.open("w") as worker_out,
            gateway_log.open("w") as gateway_out,
        ):
            web = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "config.wsgi:application",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    "2",
                    "--timeout",
                    "120",
                ],
                cwd=ROOT,
                env=env,
                stdout=web_out,
                stderr=subprocess.STDOUT,
            )
            procs.append(web)
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "worker",
                    "--pool",
                    "prefork",
                    "--concurrency",
                    "2",
                    "--queues",
                    "default,builds,rollouts,batch,monitoring",
                    "--loglevel",
                    "INFO",
                    "--without-heartbeat",
                    "--without-gossip",
                    "--without-mingle",
                ],
                cwd=ROOT,
                env=env,
                stdout=worker_out,
                stderr=subprocess.STDOUT,
            )
            procs.append(worker)
            gateway = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(gateway_port),
                    "--redis-url",
                    redis_url,
                ],
                cwd=ROOT,
                env=env,
                stdout=gateway_out,
                stderr=subprocess.STDOUT,
            )
            procs.append(gateway)
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/healthz", time.monotonic() + 60, web, web_log)
        gateway_url = env["MODELYARD_GATEWAY_URL"]
        _wait_http(f"{gateway_url}/healthz", time.monotonic() + 30, gateway, gateway_log)
        yield {
            "url": base,
            "gateway": gateway_url,
            "web_log": web_log,
            "worker_log": worker_log,
            "gateway_log": gateway_log,
        }
    finally:
        children_stop([p.pid for p in procs])
        backends.runtime_backend.cache_clear()
        backends.route_store.cache_clear()
