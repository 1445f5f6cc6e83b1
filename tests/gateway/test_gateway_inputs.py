"""Hostile prediction bodies: answered by the gateway itself, never by the model server, and
never counted as the version's errors."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.gateway.support import Deployments, Proc, auth, wait_until
from tests.gateway.test_gateway_metrics import buffers_of

BODY = {"instances": [[1.0, 2.0]]}


@pytest.fixture
def silent_upstream() -> Iterator[socket.socket]:
    """A listening socket nobody accepts on: any connection the gateway makes queues here."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    yield sock
    sock.close()


def _nobody_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def _route(deployments: Deployments, client: httpx.Client, upstream: str, prefix: str) -> str:
    name = deployments.new_name(prefix)
    deployments.publish(name, upstream)
    wait_until(
        # An unknown name is 401; a known one with a bad body is 400: the route has arrived.
        lambda: client.post(f"/d/{name}/predict", content=b"[", headers=auth()).status_code == 400,
        deadline_s=5,
        what="route to reach the gateway",
    )
    return name


def _error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"} and error["code"] == code, error
    return error


def test_deep_nesting_is_a_400_at_the_gateway(
    client: httpx.Client, deployments: Deployments, silent_upstream: socket.socket
) -> None:
    upstream = f"http://127.0.0.1:{silent_upstream.getsockname()[1]}"
    name = _route(deployments, client, upstream, "deep")
    for depth in (1_000, 5_000, 30_000):  # 30,000 levels: 60 kB, under the test body limit
        body = b'{"instances": ' + b"[" * depth + b"]" * depth + b"}"
        response = client.post(f"/d/{name}/predict", content=body, headers=auth())
        error = _error(response, 400, "json_too_deep")
        assert "deeper" in error["message"]
    assert _nobody_connected(silent_upstream)


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",  # no boundary: the case that crashed the model server
        "multipart/form-data; boundary=xyz",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ],
)
def test_a_body_that_is_not_json_never_reaches_the_model(
    client: httpx.Client,
    deployments: Deployments,
    silent_upstream: socket.socket,
    content_type: str,
) -> None:
    upstream = f"http://127.0.0.1:{silent_upstream.getsockname()[1]}"
    name = _route(deployments, client, upstream, "media")
    response = client.post(
        f"/d/{name}/predict",
        content=json.dumps(BODY).encode(),  # even a JSON body: the declared type is refused
        headers={**auth(), "Content-Type": content_type},
    )
    error = _error(response, 415, "unsupported_media_type")
    assert error["details"]["content_type"] == content_type
    assert _nobody_connected(silent_upstream)


def test_json_media_types_pass_and_the_model_is_told_json(
    client: httpx.Client, deployments: Deployments, upstream_blue: Proc
) -> None:
    name = deployments.new_name("json")
    deployments.publish(name, upstream_blue)
    wait_until(
        lambda: client.post(f"/d/{name}/echo", json=BODY, headers=auth()).status_code == 200,
        deadline_s=5,
        what="route to reach the gateway",
    )
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json", None):
        headers = {**auth(), **({"Content-Type": content_type} if content_type else {})}
        response = client.post(
            f"/d/{name}/echo", content=json.dumps(BODY).encode(), headers=headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["headers"]["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"instances": [{"city": "Paris\u0000"}]}, "instances[0].city"),
        ({"instances": [{"ci\u0000ty": "Paris"}]}, 'instances[0]."ci\\u0000ty"'),
        ({"instances": [["a", "b\u0000"]]}, "instances[0][1]"),
        ({"instances": [[1.0]], "note\u0000": 1}, '"note\\u0000"'),
    ],
    ids=["value", "key", "positional", "top-level key"],
)
def test_a_nul_character_is_a_400_naming_the_field(
    client: httpx.Client,
    deployments: Deployments,
    silent_upstream: socket.socket,
    body: dict,
    field: str,
) -> None:
    upstream = f"http://127.0.0.1:{silent_upstream.getsockname()[1]}"
    name = _route(deployments, client, upstream, "nul")
    response = client.post(f"/d/{name}/predict", content=json.dumps(body), headers=auth())
    error = _error(response, 400, "nul_character")
    assert error["details"] == {"field": field} and field in error["message"]
    assert _nobody_connected(silent_upstream)


def test_client_errors_are_counted_apart_from_the_versions_errors(
    client: httpx.Client,
    deployments: Deployments,
    redis_client: redis.Redis,
    upstream_blue: Proc,
) -> None:
    name = deployments.new_name("blame")
    deployments.publish(name, upstream_blue)
    wait_until(
        lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200,
        deadline_s=5,
        what="route to reach the gateway",
    )
    hostile = [
        (b'{"instances": ' + b"[" * 2000 + b"]" * 2000 + b"}", "application/json"),
        (json.dumps(BODY).encode(), "multipart/form-data"),
        (b'{"instances": [["\\u0000"]]}', "application/json"),
        (b"not json", "application/json"),
    ]
    for _ in range(10):  # a key holder trying to push the version's error rate up
        for body, content_type in hostile:
            response = client.post(
                f"/d/{name}/predict", content=body, headers={**auth(), "Content-Type": content_type}
            )
            assert 400 <= response.status_code < 500
        assert client.post(f"/d/{name}/reject", json=BODY, headers=auth()).status_code == 422
    assert client.post(f"/d/{name}/fail", json=BODY, headers=auth()).status_code == 500

    def flushed() -> bool:
        return sum(b.count for b in buffers_of(redis_client, name).values()) == 52

    wait_until(flushed, deadline_s=5, what="the gateway to flush 52 requests")
    by_status = buffers_of(redis_client, name)
    assert {status: b.count for status, b in by_status.items()} == {
        200: 1,
        400: 30,
        415: 10,
        422: 10,
        500: 1,
    }
    # Only the model server's own 500 is the version's error.
    assert {status: b.errors for status, b in by_status.items() if b.errors} == {500: 1}


def test_an_unreachable_model_server_is_the_versions_error(
    client: httpx.Client, deployments: Deployments, redis_client: redis.Redis
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    name = deployments.new_name("down")
    deployments.publish(name, f"http://127.0.0.1:{port}")
    wait_until(
        lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 503,
        deadline_s=5,
        what="route to reach the gateway",
    )
    wait_until(
        lambda: buffers_of(redis_client, name).get(503) is not None,
        deadline_s=5,
        what="the 503 to be flushed",
    )
    assert buffers_of(redis_client, name)[503].errors == buffers_of(redis_client, name)[503].count
