"""The prediction gateway (a real process): only a live, unrevoked key of the deployment
itself gets through. Keys are issued and revoked over the API, as an operator would; the
gateway learns of them through Redis like in production."""

from __future__ import annotations

import time

import httpx
import pytest

from accounts.choices import Role
from deployments.choices import SlotColor, SlotState
from deployments.models import Deployment, Slot
from deployments.services import deployment_create
from tests.registry.helpers import upload_version

pytestmark = pytest.mark.django_db
BODY = {"instances": [[1.0, 2.0]]}


@pytest.fixture
def live_deployments(registered_model, scientist, sklearn_model, make_user, start_upstream):
    """Two deployments with a live slot on a real upstream process."""
    operator = make_user(Role.OPERATOR, "olive")
    version = upload_version(registered_model, scientist, sklearn_model, validate=False)
    upstream = start_upstream(1, "blue")
    made = []
    for suffix in ("a", "b"):
        deployment = deployment_create(
            name=f"sec-gw-{suffix}-{time.monotonic_ns() % 10**8}",
            model=registered_model,
            environment="staging",
            actor=operator,
        )
        Slot.objects.filter(deployment=deployment, color=SlotColor.BLUE).update(
            version=version, state=SlotState.READY, url=upstream.url
        )
        Deployment.objects.filter(pk=deployment.pk).update(live_slot=SlotColor.BLUE)
        made.append(deployment)
    yield operator, made, upstream
    from deployments.models import DeploymentKey

    DeploymentKey.objects.filter(deployment__in=made).update(revoked_at=None)


def _issue(api, deployment, capture) -> tuple[int, str]:
    with capture(execute=True):  # the route is republished on commit
        response = api.post(f"/api/v1/deployments/{deployment.name}/keys/", {"name": "ci"})
    assert response.status_code == 201, response.content
    return response.json()["id"], response.json()["key"]


def _wait_status(http, path, headers, expected, deadline_s=10.0) -> httpx.Response:
    deadline = time.monotonic() + deadline_s
    while True:
        response = http.post(path, json=BODY, headers=headers)
        if response.status_code == expected or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_gateway_refuses_missing_unknown_foreign_and_revoked_keys(
    live_deployments, api_for, start_gateway, redis_url, django_capture_on_commit_callbacks
):
    operator, (mine, other), upstream = live_deployments
    api = api_for(operator)
    key_id, key = _issue(api, mine, django_capture_on_commit_callbacks)
    _, other_key = _issue(api, other, django_capture_on_commit_callbacks)
    gateway = start_gateway(redis_url)
    path = f"/d/{mine.name}/predict"
    with httpx.Client(base_url=gateway.url, timeout=10.0) as http:
        ok = _wait_status(http, path, {"Authorization": f"Bearer {key}"}, 200)
        assert ok.status_code == 200, ok.text  # the control case

        refused = {
            "missing": {},
            "empty": {"Authorization": "Bearer"},
            "unknown": {"Authorization": "Bearer dk_unknown_0123456789abcdef"},
            "other-deployment": {"Authorization": f"Bearer {other_key}"},
            "truncated": {"Authorization": f"Bearer {key[:-1]}"},
            "extended": {"Authorization": f"Bearer {key}x"},
            "basic": {"Authorization": f"Basic {key}"},
            "token-scheme": {"Authorization": f"Token {key}"},
            "case-changed": {"Authorization": f"Bearer {key.upper()}"},
            "api-token": {"Authorization": "Token my_000000000000.x"},
        }
        for case, headers in refused.items():
            response = http.post(path, json=BODY, headers=headers)
            assert response.status_code in (401, 403), (case, response.status_code)
            _assert_no_leak(response, upstream.url, key)

        with django_capture_on_commit_callbacks(execute=True):
            revoked = api.post(
                f"/api/v1/deployments/{mine.name}/keys/{key_id}/revoke/", {"reason": "leaked"}
            )
        assert revoked.status_code == 200, revoked.content
        after = _wait_status(http, path, {"Authorization": f"Bearer {key}"}, 401)
        assert after.status_code == 401
        _assert_no_leak(after, upstream.url, key)


def test_gateway_errors_do_not_leak_routes(
    live_deployments, start_gateway, redis_url, api_for, django_capture_on_commit_callbacks
):
    operator, (mine, _), upstream = live_deployments
    _issue(api_for(operator), mine, django_capture_on_commit_callbacks)
    gateway = start_gateway(redis_url)
    with httpx.Client(base_url=gateway.url, timeout=10.0) as http:
        for path in (
            "/",
            "/d/",
            "/d/no-such-deployment/predict",
            f"/d/{mine.name}/../../admin/",
            f"/d/{mine.name}/%2e%2e/%2e%2e/readyz",
            f"/d/{mine.name}/predict/../../../etc/passwd",
            "/routes",
            "/debug",
        ):
            response = http.post(path, json=BODY)
            assert response.status_code in (401, 403, 404, 405), (path, response.status_code)
            _assert_no_leak(response, upstream.url, "")
            assert mine.name not in response.text or path.startswith(f"/d/{mine.name}")


def test_gateway_does_not_tell_which_deployments_exist(
    live_deployments, start_gateway, redis_url, api_for, django_capture_on_commit_callbacks
):
    """Without a valid key of the deployment, a real name and a made-up one of the same length
    get the same answer: status, headers and body (the name itself aside)."""
    operator, (mine, other), upstream = live_deployments
    api = api_for(operator)
    _, key = _issue(api, mine, django_capture_on_commit_callbacks)
    _, other_key = _issue(api, other, django_capture_on_commit_callbacks)
    unknown = "z" * len(mine.name)
    gateway = start_gateway(redis_url)
    with httpx.Client(base_url=gateway.url, timeout=10.0) as http:
        ok = _wait_status(http, f"/d/{mine.name}/predict", {"Authorization": f"Bearer {key}"}, 200)
        assert ok.status_code == 200, ok.text  # the name is known to the gateway

        def seen(response: httpx.Response, name: str) -> tuple:
            headers = sorted((k, v) for k, v in response.headers.items() if k != "date")
            return response.status_code, headers, response.text.replace(name, "<name>")

        probes = {
            "missing": {},
            "wrong": {"Authorization": "Bearer dk_unknown_0123456789abcdef"},
            "other-deployment": {"Authorization": f"Bearer {other_key}"},
            "x-modelyard-key": {"X-Modelyard-Key": "nope"},
        }
        for case, headers in probes.items():
            for method in ("POST", "GET", "PUT"):  # not a 405 for the known one only
                known = http.request(method, f"/d/{mine.name}/predict", json=BODY, headers=headers)
                made_up = http.request(method, f"/d/{unknown}/predict", json=BODY, headers=headers)
                assert known.status_code == 401, (case, method, known.text)
                assert seen(known, mine.name) == seen(made_up, unknown), (case, method)
                message = made_up.json()["error"]["message"]
                assert message.startswith(f"missing or invalid deployment key for {unknown!r}")
                _assert_no_leak(known, upstream.url, key)

        # A valid key opens its own deployment only: not another, not a made-up name.
        for name in (other.name, unknown):
            response = http.post(
                f"/d/{name}/predict", json=BODY, headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 401, (name, response.text)
            assert response.json()["error"]["code"] == "invalid_key"
            assert "x-modelyard-deployment" not in response.headers
            _assert_no_leak(response, upstream.url, key)


def _assert_no_leak(response: httpx.Response, upstream_url: str, key: str) -> None:
    text = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
    port = upstream_url.rsplit(":", 1)[-1]
    assert upstream_url not in text and f":{port}" not in text
    if key:
        assert key not in text
    assert "key_hashes" not in text and "sha256" not in text.lower()
