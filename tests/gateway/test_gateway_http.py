"""The gateway's answers, through a real gateway process in front of a real upstream process."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway.support import DEFAULT_KEY, Deployments, Proc, auth, free_port, wait_until

BODY = {"instances": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code
    assert error["message"]
    return error


@pytest.fixture
def live(deployments: Deployments, upstream_green: Proc, gateway: Proc) -> str:
    """A live deployment on the version-2 upstream, visible to the gateway."""
    name = deployments.new_name("http")
    deployments.publish(name, upstream_green, version=2, slot="green")
    wait_until(
        lambda: (
            httpx.post(f"{gateway.url}/d/{name}/predict", json=BODY, headers=auth()).status_code
            == 200
        ),
        deadline_s=5,
        what=f"route {name} to reach the gateway",
    )
    return name


def test_prediction_is_forwarded_with_deployment_and_version_headers(
    client: httpx.Client, live: str
) -> None:
    response = client.post(f"/d/{live}/predict", json=BODY, headers=auth())

    assert response.status_code == 200
    answer = response.json()
    # Every answer carries its inference id (gateway.prediction_log), in the body and a header.
    assert answer.pop("inference_id") == response.headers["x-modelyard-inference-id"]
    assert answer == {"predictions": [6.0, 14.0, 22.0], "version": 2, "slot": "green"}
    assert response.headers["x-modelyard-version"] == "2"
    assert response.headers["x-modelyard-deployment"] == live
    assert response.headers["x-upstream-slot"] == "green"  # upstream headers pass through


def test_key_query_and_allowed_headers_reach_upstream_but_the_key_does_not(
    client: httpx.Client, live: str
) -> None:
    response = client.post(
        f"/d/{live}/echo?explain=1",
        json=BODY,
        headers={**auth(), "X-Request-ID": "req-42", "X-Other": "no"},
    )

    seen = response.json()
    assert response.status_code == 200
    assert seen["query_string"] == "explain=1"
    assert seen["headers"]["x-request-id"] == "req-42"
    assert seen["headers"]["content-type"] == "application/json"
    assert "authorization" not in seen["headers"]
    assert "x-other" not in seen["headers"]


def test_x_modelyard_key_header_is_accepted(client: httpx.Client, live: str) -> None:
    response = client.post(
        f"/d/{live}/predict", json=BODY, headers={"X-Modelyard-Key": DEFAULT_KEY}
    )
    assert response.status_code == 200


def test_any_of_several_keys_is_accepted(
    client: httpx.Client, deployments: Deployments, upstream_blue: Proc
) -> None:
    name = deployments.new_name("keys")
    deployments.publish(name, upstream_blue, keys=("old-key", "new-key"))
    wait_until(
        lambda: (
            client.post(f"/d/{name}/predict", json=BODY, headers=auth("old-key")).status_code == 200
        ),
        deadline_s=5,
        what="route to reach the gateway",
    )
    for key in ("old-key", "new-key"):
        assert client.post(f"/d/{name}/predict", json=BODY, headers=auth(key)).status_code == 200
    assert (
        client.post(f"/d/{name}/predict", json=BODY, headers=auth(DEFAULT_KEY)).status_code == 401
    )


def test_missing_key_is_401_without_identifying_headers(client: httpx.Client, live: str) -> None:
    response = client.post(f"/d/{live}/predict", json=BODY)
    error = assert_error(response, 401, "missing_key")
    assert error["message"].startswith(f"missing or invalid deployment key for {live!r}")
    assert error["details"] == {"deployment": live}
    assert response.headers["www-authenticate"] == "Bearer"
    # Only a key holder learns the deployment exists (and which version answers).
    assert "x-modelyard-deployment" not in response.headers
    assert "x-modelyard-version" not in response.headers


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Basic {DEFAULT_KEY}"},
        {"X-Modelyard-Key": DEFAULT_KEY + "x"},
    ],
)
def test_wrong_key_is_401(client: httpx.Client, live: str, headers: dict[str, str]) -> None:
    response = client.post(f"/d/{live}/predict", json=BODY, headers=headers)
    assert response.status_code == 401


def _answer(response: httpx.Response, name: str, unknown: str) -> tuple[object, ...]:
    """Everything a client sees, with the two names made equal."""
    headers = sorted(
        (k, v) for k, v in response.headers.items() if k not in ("date", "content-length")
    )
    return response.status_code, headers, response.text.replace(name, unknown)


@pytest.mark.parametrize(
    ("method", "headers", "code"),
    [
        ("POST", {}, "missing_key"),
        ("POST", {"Authorization": "Bearer wrong-key"}, "invalid_key"),
        ("POST", {"X-Modelyard-Key": "wrong-key"}, "invalid_key"),
        ("GET", {}, "missing_key"),  # the key is checked before the method
    ],
)
def test_unknown_deployment_answers_exactly_like_a_known_one_without_a_valid_key(
    client: httpx.Client, live: str, method: str, headers: dict[str, str], code: str
) -> None:
    unknown = "x" * len(live)  # same length: not even content-length may differ
    known = client.request(method, f"/d/{live}/predict", json=BODY, headers=headers)
    missing = client.request(method, f"/d/{unknown}/predict", json=BODY, headers=headers)
    error = assert_error(missing, 401, code)
    assert error["message"].startswith(f"missing or invalid deployment key for {unknown!r}")
    assert error["details"] == {"deployment": unknown}
    assert missing.headers["content-length"] == known.headers["content-length"]
    assert _answer(known, live, unknown) == _answer(missing, unknown, unknown)


def test_valid_key_of_one_deployment_on_an_unknown_name_is_401(
    client: httpx.Client, live: str
) -> None:
    assert client.post(f"/d/{live}/predict", json=BODY, headers=auth()).status_code == 200
    response = client.post("/d/no-such-deployment/predict", json=BODY, headers=auth())
    error = assert_error(response, 401, "invalid_key")
    assert error["details"] == {"deployment": "no-such-deployment"}
    assert "x-modelyard-deployment" not in response.headers


@pytest.mark.parametrize("path", ["/", "/d/only-one-segment", "/d/a/b/c", "/predict"])
def test_paths_outside_the_prediction_scheme_are_404(client: httpx.Client, path: str) -> None:
    assert_error(client.post(path, json=BODY, headers=auth()), 404, "not_found")


def test_get_on_a_prediction_path_is_405(client: httpx.Client, live: str) -> None:
    response = client.get(f"/d/{live}/predict", headers=auth())
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2, 3]", "body_not_object"),
        (b'"a string"', "body_not_object"),
        (b"", "invalid_json"),
    ],
)
def test_body_that_is_not_a_json_object_is_400(
    client: httpx.Client, live: str, content: bytes, code: str
) -> None:
    response = client.post(
        f"/d/{live}/predict",
        content=content,
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert_error(response, 400, code)


def test_body_over_the_limit_is_413_by_content_length(client: httpx.Client, live: str) -> None:
    big = b'{"instances": [' + b"[1.0]," * 20_000 + b"[1.0]]}"  # ~120 KB > 64 KiB test limit
    response = client.post(
        f"/d/{live}/predict", content=big, headers={**auth(), "Content-Type": "application/json"}
    )
    error = assert_error(response, 413, "payload_too_large")
    assert error["details"] == {"limit_bytes": 65536}


def test_body_over_the_limit_is_413_when_chunked(client: httpx.Client, live: str) -> None:
    def chunks():  # a generator body is sent chunked, without Content-Length
        yield b'{"instances": ['
        for _ in range(200):
            yield b"[1.0]," * 100
        yield b"[1.0]]}"

    response = client.post(
        f"/d/{live}/predict",
        content=chunks(),
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize("state", ["none", "draining"])
def test_deployment_without_live_slot_is_503_with_retry_after(
    client: httpx.Client, deployments: Deployments, upstream_blue: Proc, state: str
) -> None:
    name = deployments.new_name("idle")
    deployments.publish(name, upstream_blue, state=state)
    wait_until(
        lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code != 401,
        deadline_s=5,
        what="route to reach the gateway",
    )
    response = client.post(f"/d/{name}/predict", json=BODY, headers=auth())
    error = assert_error(response, 503, "deployment_unavailable")
    assert response.headers["retry-after"] == "7"
    assert error["details"] == {"deployment": name, "state": state}


def test_unreachable_upstream_is_503_with_retry_after(
    client: httpx.Client, deployments: Deployments
) -> None:
    name = deployments.new_name("down")
    # A port nobody listens on: connection refused.
    deployments.publish(name, f"http://127.0.0.1:{free_port()}", version=5)
    wait_until(
        lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code != 401,
        deadline_s=5,
        what="route to reach the gateway",
    )
    response = client.post(f"/d/{name}/predict", json=BODY, headers=auth())
    error = assert_error(response, 503, "upstream_unavailable")
    assert error["details"] == {"deployment": name, "version": 5, "slot": "blue", "replicas": 1}
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-modelyard-version"] == "5"


def test_upstream_slower_than_the_timeout_is_504(client: httpx.Client, live: str) -> None:
    response = client.post(f"/d/{live}/slow?ms=1500", json=BODY, headers=auth())
    assert_error(response, 504, "upstream_timeout")


def test_upstream_errors_pass_through_with_headers(client: httpx.Client, live: str) -> None:
    failed = client.post(f"/d/{live}/fail", json=BODY, headers=auth())
    assert failed.status_code == 500
    assert failed.json() == {"error": "model crashed", "version": 2}
    assert failed.headers["x-modelyard-version"] == "2"

    rejected = client.post(f"/d/{live}/reject", json=BODY, headers=auth())
    assert rejected.status_code == 422
    assert rejected.json() == {"error": "bad input", "version": 2}
    assert rejected.headers["x-modelyard-deployment"] == live


def test_healthz_and_readyz_answer(client: httpx.Client) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["event_loop"] == "uvloop"  # python -m gateway names it, never "auto"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_a_client_names_its_own_inference_id_and_a_bad_one_is_a_400(
    client: httpx.Client, live: str
) -> None:
    mine = "order-2026-12-02.0042"
    response = client.post(
        f"/d/{live}/predict", json=BODY, headers={**auth(), "X-Modelyard-Inference-Id": mine}
    )
    assert response.status_code == 200
    assert response.headers["x-modelyard-inference-id"] == mine
    assert response.json()["inference_id"] == mine
    for bad in ("", "-starts-with-a-dash", "x" * 97, "has space", "semi;colon"):
        response = client.post(
            f"/d/{live}/predict", json=BODY, headers={**auth(), "X-Modelyard-Inference-Id": bad}
        )
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "invalid_inference_id"
        assert "inference-id" not in {
            name.lower() for name in response.headers if "inference" in name
        }
