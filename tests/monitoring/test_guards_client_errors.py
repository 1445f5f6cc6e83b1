"""A key holder can neither trip nor mask the error-rate guard: through the real gateway, the
real roll-up and the real guard check, only the version's own failures count."""

from __future__ import annotations

import json
import time

import httpx
from django.utils import timezone

from deployments.models import Deployment, Rollout
from monitoring.selectors import traffic_by_version
from monitoring.services import guards_check, metrics_rollup
from tests.gateway.support import DEFAULT_KEY, Deployments
from tests.monitoring.test_rollups import _InProcessGateway, upstream  # noqa: F401 (fixture)

HOSTILE = [
    (b'{"instances": ' + b"[" * 3000 + b"]" * 3000 + b"}", "application/json"),  # was a 500
    (b'{"instances": [[1.0, 2.0]]}', "multipart/form-data"),  # reached the model: a 500
    (b'{"instances": [["\\u0000"]]}', "application/json"),
    (b"{not json", "application/json"),
]
BODY = {"instances": [[1.0, 2.0]]}


def _send(deployment, monitoring_redis, settings, upstream, plan) -> None:  # noqa: F811
    routes = Deployments(monitoring_redis)
    routes.publish(deployment.name, upstream, version=2, keys=(DEFAULT_KEY,))
    headers = {"Authorization": f"Bearer {DEFAULT_KEY}"}
    with _InProcessGateway(settings.REDIS_URL) as gateway, httpx.Client(timeout=10) as http:
        base = f"http://127.0.0.1:{gateway.port}/d/{deployment.name}"
        deadline = time.monotonic() + 10
        while http.post(f"{base}/predict", json=BODY, headers=headers).status_code != 200:
            assert time.monotonic() < deadline, "route never reached the gateway"
            time.sleep(0.05)
        for api, body, content_type, expected in plan:
            response = http.post(
                f"{base}/{api}",
                content=body,
                headers={**headers, "Content-Type": content_type},
            )
            assert response.status_code == expected, response.text
    metrics_rollup()


def _guarded(deployment) -> None:
    Deployment.objects.filter(pk=deployment.pk).update(
        guard_policy={"max_error_rate": 0.05, "min_requests": 20}
    )


def test_a_flood_of_hostile_bodies_does_not_trip_the_error_rate_guard(
    deployment,
    monitoring_redis,
    settings,
    upstream,  # noqa: F811
):
    _guarded(deployment)
    ok = json.dumps(BODY).encode()
    plan = [("predict", ok, "application/json", 200)] * 30
    for body, content_type in HOSTILE * 50:
        plan.append(("predict", body, content_type, 415 if "multipart" in content_type else 400))
    plan += [("reject", ok, "application/json", 422)] * 50  # rows the model refuses
    _send(deployment, monitoring_redis, settings, upstream, plan)

    traffic = traffic_by_version(
        deployment=deployment, start=timezone.now().replace(hour=0, minute=0), end=timezone.now()
    )[2]
    assert traffic.errors == 0 and traffic.client_errors == 250
    assert guards_check() == []
    assert Rollout.objects.get(deployment=deployment, version__number=2).state == "baking"


def test_a_flood_of_client_errors_does_not_mask_real_failures(
    deployment,
    monitoring_redis,
    settings,
    upstream,  # noqa: F811
):
    _guarded(deployment)
    ok = json.dumps(BODY).encode()
    plan = [("predict", ok, "application/json", 200)] * 25
    plan += [("fail", ok, "application/json", 500)] * 5  # the version's own failures: 5/31
    plan += [("predict", b"{not json", "application/json", 400)] * 300
    _send(deployment, monitoring_redis, settings, upstream, plan)

    [breach] = guards_check()
    assert breach.rules == ["error_rate"]
    assert breach.evidence["errors"] == 5 and breach.evidence["client_errors"] == 300
    # 5 failures among the 31 requests the version answered for (the route probe included),
    # not among all 331.
    assert breach.evidence["answerable"] == 31
    assert abs(breach.evidence["error_rate"]["value"] - 5 / 31) < 1e-9
