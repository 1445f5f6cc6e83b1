"""Deployment keys over the API (list, create, revoke), and the gateway honouring a revocation.

A real gateway process and a real model-server stand-in (tests/gateway/upstream_app.py) on the
test Redis; the deployment's live slot points at that server. The gateway re-reads its whole
route table only every 60 s here, so a refusal within a second can only come from the pub/sub
message the revocation publishes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from django.conf import settings

from accounts.choices import Role
from core.choices import AuditAction
from core.models import AuditEvent
from deployments import backends
from deployments.models import Deployment, DeploymentKey
from deployments.services import deployment_create, route_sync
from gateway.routes import ROUTES_KEY, deployment_key_hash, route_parse_one, route_remove
from tests.factories import (
    DeploymentFactory,
    ModelVersionFactory,
    RegisteredModelFactory,
    SlotFactory,
)
from tests.gateway.support import (
    TEST_GATEWAY_ENV,
    UPSTREAM_SCRIPT,
    Proc,
    free_port,
    start_process,
    wait_http,
)

BODY = {"instances": [[1.0, 2.0]]}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proc]]:
    logs = tmp_path_factory.mktemp("keys-api")
    redis_url = settings.REDIS_URL
    procs: list[Proc] = []
    try:
        port = free_port()
        upstream = start_process(
            "upstream", [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port)], port, logs
        )
        procs.append(upstream)
        wait_http(upstream, "/readyz")
        port = free_port()
        gateway = start_process(
            "gateway",
            [
                sys.executable,
                "-m",
                "gateway",
                "--port",
                str(port),
                "--redis-url",
                redis_url,
            ],
            port,
            logs,
            env={**TEST_GATEWAY_ENV, "MODELYARD_GATEWAY_ROUTES_REREAD_INTERVAL_S": "60"},
        )
        procs.append(gateway)
        wait_http(gateway, "/readyz")
        yield {"upstream": upstream, "gateway": gateway}
    finally:
        for proc in reversed(procs):
            proc.stop()


@pytest.fixture
def deployment(transactional_db, make_user, servers) -> Iterator[Deployment]:
    """`keys-prod`, live on its blue slot, which points at the stand-in model server."""
    backends.route_store.cache_clear()
    operator = make_user(Role.OPERATOR, "olive")
    model = RegisteredModelFactory(name="keys-model")
    version = ModelVersionFactory(model=model, number=1, created_by=operator)
    deployment = DeploymentFactory(
        name="keys-prod", model=model, environment="staging", created_by=operator, live_slot="blue"
    )
    SlotFactory(
        deployment=deployment,
        color="blue",
        version=version,
        state="ready",
        url=servers["upstream"].url,
    )
    route_sync(deployment_id=deployment.pk)
    yield deployment
    route_remove(backends.route_store(), "keys-prod")


def predict(gateway: Proc, key: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/d/keys-prod/predict",
        json=BODY,
        headers={"Authorization": f"Bearer {key}"},
        timeout=5,
    )


def wait_status(gateway: Proc, key: str, status: int, within_s: float) -> float:
    """Seconds until the gateway answers ``status`` for ``key``; fails after ``within_s``."""
    started = time.monotonic()
    while True:
        answered = predict(gateway, key).status_code
        elapsed = time.monotonic() - started
        if answered == status:
            return elapsed
        assert elapsed < within_s, f"still {answered} after {elapsed:.2f} s, wanted {status}"
        time.sleep(0.01)


def test_operator_creates_lists_and_revokes_keys_and_the_gateway_refuses_the_revoked_one(
    deployment, api_for, make_user, servers, django_assert_max_num_queries
) -> None:
    gateway = servers["gateway"]
    api = api_for(make_user(Role.OPERATOR, "olive"))
    url = "/api/v1/deployments/keys-prod/keys/"

    created = api.post(url, {"name": "mobile-app"}, format="json")
    assert created.status_code == 201, created.content
    first = created.json()
    assert first["name"] == "mobile-app" and first["active"] is True
    assert first["key"].startswith("myd_")
    second = api.post(url, {}, format="json").json()
    assert second["name"] == "default"

    # Both keys work as soon as the route is republished (pub/sub, not the 60 s re-read).
    assert wait_status(gateway, first["key"], 200, within_s=2) < 2
    assert predict(gateway, second["key"]).status_code == 200

    with django_assert_max_num_queries(6):
        listed = api.get(url)
    assert listed.status_code == 200
    items = listed.json()["results"]
    assert [i["name"] for i in items] == ["mobile-app", "default"]
    # The key itself is shown once, on create; never listed, nor its digest.
    assert all(set(i) == {"id", "name", "created_at", "revoked_at", "active"} for i in items)
    assert first["key"] not in listed.content.decode()

    revoked = api.post(f"{url}{first['id']}/revoke/", {"reason": "leaked in a log"}, format="json")
    assert revoked.status_code == 200, revoked.content
    assert revoked.json()["active"] is False and revoked.json()["revoked_at"]
    refused_after = wait_status(gateway, first["key"], 401, within_s=2)
    response = predict(gateway, first["key"])
    assert response.json()["error"]["code"] == "invalid_key"
    assert predict(gateway, second["key"]).status_code == 200  # the other key is untouched
    print(f"\nrevoked key refused by the gateway {refused_after * 1000:.0f} ms after the call")

    assert [i["active"] for i in api.get(url).json()["results"]] == [False, True]
    events = AuditEvent.objects.filter(object_type__icontains="deploymentkey").order_by("id")
    assert [(e.action, e.actor_name) for e in events] == [
        (AuditAction.DEPLOYMENT_KEY_CREATED, "olive"),
        (AuditAction.DEPLOYMENT_KEY_CREATED, "olive"),
        (AuditAction.DEPLOYMENT_KEY_REVOKED, "olive"),
    ]
    assert events.last().reason == "leaked in a log"
    assert first["key"] not in str([(e.before, e.after) for e in events])


def test_revoking_twice_is_a_conflict_and_other_keys_are_not_found(
    deployment, api_for, make_user
) -> None:
    operator = make_user(Role.OPERATOR, "olive")
    api = api_for(operator)
    url = "/api/v1/deployments/keys-prod/keys/"
    key_id = api.post(url, {"name": "ci"}, format="json").json()["id"]
    assert api.post(f"{url}{key_id}/revoke/", {}, format="json").status_code == 200
    again = api.post(f"{url}{key_id}/revoke/", {}, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "key_already_revoked"
    assert "already revoked" in again.json()["error"]["message"]
    missing = api.post(f"{url}{key_id + 1000}/revoke/", {}, format="json")
    assert missing.status_code == 404
    assert f"no key with id {key_id + 1000}" in missing.json()["error"]["message"]
    # A key of another deployment cannot be revoked through this one.
    other = deployment_create(
        name="other-prod", model=deployment.model, environment="staging", actor=operator
    )
    foreign = DeploymentKey.objects.create(deployment=other, name="x", digest="f" * 64)
    assert api.post(f"{url}{foreign.pk}/revoke/", {}, format="json").status_code == 404
    foreign.refresh_from_db()
    assert foreign.revoked_at is None
    assert (
        AuditEvent.objects.filter(action=AuditAction.DEPLOYMENT_KEY_REVOKED).count() == 1
    )  # refusals write nothing


def test_bad_key_names_are_refused_and_nothing_is_created(deployment, api_for, make_user) -> None:
    api = api_for(make_user(Role.OPERATOR, "olive"))
    url = "/api/v1/deployments/keys-prod/keys/"
    for name in ("", "   ", "x" * 101):
        response = api.post(url, {"name": name}, format="json")
        assert response.status_code == 400, (name, response.content)
        assert "name" in response.content.decode()
    assert not DeploymentKey.objects.exists()
    assert api.get("/api/v1/deployments/nope/keys/").status_code == 404


@pytest.mark.parametrize("role", [Role.VIEWER, Role.DATA_SCIENTIST, Role.REVIEWER])
def test_keys_need_the_deploy_capability(deployment, api_for, make_user, role) -> None:
    operator_api = api_for(make_user(Role.OPERATOR, "olive"))
    key_id = operator_api.post("/api/v1/deployments/keys-prod/keys/", {}, format="json").json()[
        "id"
    ]
    api = api_for(make_user(role, f"user-{role}"))
    url = "/api/v1/deployments/keys-prod/keys/"
    assert api.get(url).status_code == 403
    assert api.post(url, {}, format="json").status_code == 403
    assert api.post(f"{url}{key_id}/revoke/", {}, format="json").status_code == 403
    assert DeploymentKey.objects.get().revoked_at is None
    assert DeploymentKey.objects.count() == 1


def test_route_holds_only_active_key_hashes(deployment, api_for, make_user) -> None:
    api = api_for(make_user(Role.OPERATOR, "olive"))
    url = "/api/v1/deployments/keys-prod/keys/"
    first = api.post(url, {}, format="json").json()
    second = api.post(url, {}, format="json").json()
    api.post(f"{url}{first['id']}/revoke/", {}, format="json")
    client: redis.Redis = backends.route_store()
    route = route_parse_one("keys-prod", client.hget(ROUTES_KEY, "keys-prod"))
    assert route is not None
    assert route.key_hashes == (deployment_key_hash(second["key"]),)
