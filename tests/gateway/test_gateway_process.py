"""The gateway as a process: settings, graceful shutdown, several workers."""

from __future__ import annotations

import gc
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest
import redis

from gateway.__main__ import _inherited_socket, _redact
from gateway.app import GatewaySettings
from gateway.metric_buffers import metrics_buffer_read
from gateway.routes import route_remove
from gateway.sampling import samples_key
from gateway.server import GC_YOUNG_THRESHOLD, gc_settle
from gateway.settings import INHERITED_FD_ENV
from tests.gateway.support import Deployments, Proc, auth, wait_until

BODY = {"instances": [[1.0, 2.0], [3.0, 4.0]]}


def stopped_cleanly(gateway: Proc) -> None:
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete, so the process ends
    # "killed by SIGTERM" after a clean shutdown.
    assert gateway.stop() in (0, -signal.SIGTERM), gateway.log()
    assert "Application shutdown complete" in gateway.log()
    assert "Traceback" not in gateway.log()


def test_a_gateway_process_keeps_the_collector_off_what_it_loaded() -> None:
    threshold = gc.get_threshold()
    try:
        gc_settle()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_settings_come_from_the_environment() -> None:
    settings = GatewaySettings.from_env(
        {
            "REDIS_URL": "redis://example:6379/2",
            "MODELYARD_GATEWAY_SAMPLE_RATE": "0.25",
            "MODELYARD_GATEWAY_MAX_BODY_BYTES": "1024",
        }
    )
    assert settings.redis_url == "redis://example:6379/2"
    assert settings.sample_rate == 0.25
    assert settings.max_body_bytes == 1024
    assert GatewaySettings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MODELYARD_GATEWAY_MAX_BODY_BYTES": "lots"}, "MODELYARD_GATEWAY_MAX_BODY_BYTES must be"),
        ({"MODELYARD_GATEWAY_SAMPLE_RATE": "1.5"}, "sample_rate must be in"),
        ({"MODELYARD_GATEWAY_RETRY_AFTER_S": "-1"}, "retry_after_s must be >= 0"),
    ],
)
def test_bad_settings_stop_start_up_naming_the_variable(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        GatewaySettings.from_env(environ)


def test_redis_password_is_not_logged() -> None:
    assert _redact("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert _redact("redis://user:s3cret@cache:6379/0") == "redis://user:***@cache:6379/0"
    assert _redact("redis://cache:6379/0") == "redis://cache:6379/0"


def test_announced_removal_answers_401_at_once(
    client: httpx.Client, deployments: Deployments, upstream_blue: Proc, redis_client: redis.Redis
) -> None:
    name = deployments.new_name("removed")
    deployments.publish(name, upstream_blue)
    wait_until(
        lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200,
        deadline_s=5,
        what="route to reach the gateway",
    )
    route_remove(redis_client, name)
    wait_until(
        # Unknown names answer 401 like a bad key, so nobody can probe which exist.
        lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 401,
        deadline_s=2,
        what="removal to reach the gateway",
    )


def test_sigterm_flushes_metrics_and_samples_before_exit(
    start_gateway: Callable[..., Proc],
    redis_url: str,
    redis_client: redis.Redis,
    deployments: Deployments,
    upstream_blue: Proc,
) -> None:
    name = deployments.new_name("shutdown")
    deployments.publish(name, upstream_blue, version=3)
    # Periodic flushes far away: only the shutdown flush can put these requests in Redis.
    gateway = start_gateway(
        redis_url,
        env={
            "MODELYARD_GATEWAY_METRICS_FLUSH_INTERVAL_S": "600",
            "MODELYARD_GATEWAY_SAMPLE_FLUSH_INTERVAL_S": "600",
        },
    )
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(5):
            assert client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200

    stopped_cleanly(gateway)

    keys = [k.decode() for k in redis_client.scan_iter(f"modelyard:metrics:*:{name}:3:200")]
    buffers = [metrics_buffer_read(redis_client, key) for key in keys]
    assert sum(b.count for b in buffers if b) == 5
    assert sum(b.rows for b in buffers if b) == 10
    assert redis_client.xlen(samples_key(name)) == 5


def test_several_workers_serve_and_stop_cleanly(
    start_gateway: Callable[..., Proc],
    redis_url: str,
    deployments: Deployments,
    upstream_green: Proc,
) -> None:
    name = deployments.new_name("workers")
    deployments.publish(name, upstream_green, version=2, slot="green")
    gateway = start_gateway(redis_url, extra_args=("--workers", "2"))
    with httpx.Client(base_url=gateway.url) as client:
        wait_until(
            lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200,
            deadline_s=10,
            what="both workers to load routes",
        )
        answers = [client.post(f"/d/{name}/predict", json=BODY, headers=auth()) for _ in range(20)]
    assert {r.headers["x-modelyard-version"] for r in answers} == {"2"}
    stopped_cleanly(gateway)


def test_a_request_sent_while_the_gateway_is_down_waits_for_the_next_one_on_its_socket(
    start_gateway: Callable[..., Proc],
    redis_url: str,
    deployments: Deployments,
    upstream_green: Proc,
) -> None:
    """`make run` holds the gateway's listening socket across restarts: a client that
    connects while a killed gateway restarts is queued in the backlog and answered by the
    next process, not refused."""
    name = deployments.new_name("inherited")
    deployments.publish(name, upstream_green, version=2, slot="green")
    with socket.create_server(("127.0.0.1", 0), backlog=128) as listening:
        first = start_gateway(redis_url, listening=listening)
        first.popen.send_signal(signal.SIGKILL)
        first.popen.wait(10)
        answers: list[httpx.Response | Exception] = []

        def ask() -> None:
            try:
                answers.append(
                    httpx.post(
                        f"{first.url}/d/{name}/predict", json=BODY, headers=auth(), timeout=30
                    )
                )
            except httpx.HTTPError as exc:
                answers.append(exc)

        asked = threading.Thread(target=ask)
        asked.start()
        time.sleep(0.5)
        assert not answers  # connected, waiting: nobody is accepting yet
        second = start_gateway(redis_url, listening=listening, ready=None)
        asked.join(30)
        assert [getattr(a, "status_code", a) for a in answers] == [200], second.log()
        assert "(inherited socket)" in second.log()
        stopped_cleanly(second)


def test_an_inherited_fd_that_is_no_listening_socket_stops_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(INHERITED_FD_ENV, "not-a-number")
    with pytest.raises(SystemExit, match=f"{INHERITED_FD_ENV}='not-a-number' is not an open"):
        _inherited_socket()
    with socket.socket() as unbound:
        monkeypatch.setenv(INHERITED_FD_ENV, str(os.dup(unbound.fileno())))
        with pytest.raises(SystemExit, match="is not a listening stream socket"):
            _inherited_socket()
