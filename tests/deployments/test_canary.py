"""Canary rollouts through the judge: steps advance on a pass, a failure aborts with its
evidence, too little data waits, people promote, pause and abort (API and services).

The traffic is what the gateway's recorder writes, flushed and rolled up for real; the live
ramp through a real gateway is in test_canary_live.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import InvalidInput, InvalidState
from core.models import AuditEvent
from deployments import services
from deployments.choices import RolloutKind, RolloutState, RolloutStrategy, SlotColor, SlotState
from deployments.models import Deployment, DeploymentEvent, Rollout, Slot
from deployments.services.progressive import canary_plan_clean, plan_clean
from deployments.services.routes import route_sync
from gateway.metrics import MetricsRecorder
from gateway.routes import ROUTES_KEY, Route
from gateway.shadow_reports import shadow_key
from tests.monitoring.conftest import (  # noqa: F401 (fixtures)
    flush,
    minute_ago,
    monitoring_redis,
    private_redis_url,
    registered_model,
    serve_traffic,
    trained_models,
    versions,
)

pytestmark = pytest.mark.django_db

PLAN = {"steps": [10, 50], "min_step_seconds": 5, "min_step_requests": 100}


@pytest.fixture
def canary(registered_model, make_user, versions, monitoring_redis, settings):  # noqa: F811
    """v1 live on blue; a canary rollout of v2 on green, its first step begun 90 s ago."""
    settings.MODELYARD_CANARY_JUDGE_SECONDS = 3600  # the test ticks the judge itself
    operator = make_user("operator", "otto")
    deployment = services.deployment_create(
        name=f"{registered_model.name}-prod",
        model=registered_model,
        environment="staging",
        actor=operator,
    )
    Slot.objects.filter(deployment=deployment, color=SlotColor.BLUE).update(
        version=versions[1], state=SlotState.READY, url="http://127.0.0.1:9"
    )
    Slot.objects.filter(deployment=deployment, color=SlotColor.GREEN).update(
        version=versions[2], state=SlotState.READY, url="http://127.0.0.1:10"
    )
    Deployment.objects.filter(pk=deployment.pk).update(live_slot=SlotColor.BLUE)
    rollout = Rollout.objects.create(
        deployment=deployment,
        version=versions[2],
        previous_version=versions[1],
        kind=RolloutKind.ROLLOUT,
        target_slot=SlotColor.GREEN,
        state=RolloutState.CANARY,
        strategy=RolloutStrategy.CANARY,
        plan=canary_plan_clean(PLAN),
        step_started_at=timezone.now() - timedelta(seconds=90),
    )
    deployment.refresh_from_db()
    return rollout, operator


def _traffic(rollout, settings, *, canary_errors, requests=1_000, seed=0):
    from monitoring.services.rollups import metrics_rollup

    recorder = MetricsRecorder()
    at = minute_ago(1)
    deployment = rollout.deployment
    serve_traffic(
        recorder, deployment, 1, requests=requests, errors=5, median_ms=20, now=at, seed=seed
    )
    serve_traffic(
        recorder,
        deployment,
        2,
        requests=requests,
        errors=canary_errors,
        median_ms=20,
        now=at,
        seed=seed + 1,
    )
    flush(recorder, settings.REDIS_URL)
    metrics_rollup()


def _tick(rollout) -> Rollout:
    """One tick of the rollout's step, as the worker runs it."""
    from deployments.services.rollouts import STEPS

    rollout = Rollout.objects.select_related("deployment", "version").get(pk=rollout.pk)
    STEPS[rollout.state](rollout)
    return Rollout.objects.get(pk=rollout.pk)


def test_a_healthy_canary_advances_step_by_step_then_is_promoted(canary, settings):
    rollout, _ = canary
    _traffic(rollout, settings, canary_errors=5)
    rollout = _tick(rollout)
    assert (rollout.state, rollout.canary_step) == (RolloutState.CANARY, 1)
    assert rollout.judgement["verdict"] == "pass" and rollout.judgement["weight"] == 1_000
    assert "canary step 2: 50 %" in rollout.steps[-1]["message"]
    assert rollout.steps[-1]["judgement"]["metrics"][0]["counts"]["canary_requests"] == 1_000

    # The next step has its own minimum time: judged at once, it waits.
    assert _tick(rollout).canary_step == 1
    Rollout.objects.filter(pk=rollout.pk).update(
        step_started_at=timezone.now() - timedelta(seconds=90)
    )
    rollout = _tick(rollout)
    assert rollout.state == RolloutState.SWITCHING
    moved = AuditEvent.objects.filter(object_id=str(rollout.pk)).order_by("id").last()
    assert "canary promoted: every step passed the judge" in moved.reason
    assert moved.after["judgement"]["verdict"] == "pass"


def test_two_points_more_5xx_abort_the_canary_with_its_evidence(
    canary, settings, django_capture_on_commit_callbacks
):
    rollout, _ = canary
    _traffic(rollout, settings, canary_errors=30)  # 3 % against 0.5 %
    with django_capture_on_commit_callbacks() as queued:
        rollout = _tick(rollout)
    assert rollout.state == RolloutState.ABORTED and rollout.finished_at
    assert rollout.error.startswith("the judge failed the canary: canary 5xx rate 3.00%")
    [error_rate, _] = rollout.judgement["metrics"]
    assert error_rate["verdict"] == "fail" and error_rate["p_value"] < 0.01
    assert error_rate["counts"]["canary_errors"] == 30
    audit = AuditEvent.objects.filter(object_id=str(rollout.pk)).order_by("id").last()
    assert audit.after["state"] == "aborted"
    assert audit.after["judgement"]["metrics"][0]["verdict"] == "fail"
    event = DeploymentEvent.objects.get(deployment=rollout.deployment, kind="canary_aborted")
    assert "v2" in event.message
    # The live slot kept serving; the canary's slot is released by the worker (queued after
    # the commit), not by the abort itself.
    deployment = Deployment.objects.get(pk=rollout.deployment_id)
    assert deployment.live_slot == SlotColor.BLUE
    green = Slot.objects.get(deployment=deployment, color=SlotColor.GREEN)
    assert green.state == SlotState.READY and len(queued) == 1
    assert services.slot_release(slot_id=green.pk) == "stopped"
    assert Slot.objects.get(pk=green.pk).state == "stopped"
    blue = Slot.objects.get(deployment=deployment, color=SlotColor.BLUE)
    assert services.slot_release(slot_id=blue.pk) == "kept: live or a rollout's target"


def test_without_traffic_a_canary_never_advances(canary, settings):
    rollout, _ = canary
    Rollout.objects.filter(pk=rollout.pk).update(
        step_started_at=timezone.now() - timedelta(hours=2)
    )
    for _ in range(3):
        rollout = _tick(rollout)
    assert (rollout.state, rollout.canary_step) == (RolloutState.CANARY, 0)
    assert rollout.judgement["verdict"] == "not_yet"


def test_a_paused_canary_holds_its_step_but_still_aborts(canary, settings):
    rollout, operator = canary
    deployment = rollout.deployment
    services.canary_pause(deployment=deployment, rollout_id=rollout.pk, actor=operator, paused=True)
    _traffic(rollout, settings, canary_errors=5)
    assert _tick(rollout).canary_step == 0  # passed, but paused
    services.canary_pause(
        deployment=deployment, rollout_id=rollout.pk, actor=operator, paused=False
    )
    assert _tick(rollout).canary_step == 1

    services.canary_pause(deployment=deployment, rollout_id=rollout.pk, actor=operator, paused=True)
    Rollout.objects.filter(pk=rollout.pk).update(
        step_started_at=timezone.now() - timedelta(seconds=90)
    )
    _traffic(rollout, settings, canary_errors=60, seed=7)
    assert _tick(rollout).state == RolloutState.ABORTED


def test_people_promote_and_abort_and_a_rollback_aborts_a_canary(canary, api_for):
    rollout, operator = canary
    deployment = rollout.deployment
    base = f"/api/v1/deployments/{deployment.name}/rollouts/{rollout.pk}"
    api = api_for(operator)

    paused = api.post(f"{base}/pause/", {}, format="json")
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert paused.json()["canary_weight"] == 10

    rolled = api.post(f"/api/v1/deployments/{deployment.name}/rollback/", {}, format="json")
    assert rolled.status_code == 202, rolled.json()
    assert rolled.json()["state"] == "aborted"
    assert rolled.json()["error"] == "rolled back during the canary"

    again = api.post(f"{base}/abort/", {}, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_a_running_canary"

    # A second canary, promoted by hand at its first step.
    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.CANARY, finished_at=None)
    promoted = api.post(f"{base}/promote/", {"reason": "looks fine"}, format="json")
    assert promoted.status_code == 200 and promoted.json()["state"] == "switching"
    assert "canary promoted: looks fine" in promoted.json()["steps"][-1]["message"]


def test_promote_needs_the_deploy_capability(canary, api_for, make_user):
    rollout, _ = canary
    viewer = api_for(make_user("viewer", "vic"))
    url = f"/api/v1/deployments/{rollout.deployment.name}/rollouts/{rollout.pk}/promote/"
    answer = viewer.post(url, {}, format="json")
    assert answer.status_code == 403 and answer.json()["error"]["code"]
    assert Rollout.objects.get(pk=rollout.pk).state == RolloutState.CANARY


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        ({"steps": [50, 25]}, "steps"),
        ({"steps": []}, "steps"),
        ({"steps": [0, 10]}, "steps"),
        ({"min_step_seconds": 1}, "min_step_seconds"),
        ({"judge": {"alpha": 2}}, "judge"),
    ],
)
def test_a_bad_plan_is_refused_naming_the_field(plan, field):
    with pytest.raises(InvalidInput) as refused:
        canary_plan_clean(plan)
    assert refused.value.code == "invalid_plan" and field in refused.value.details


def test_rollout_requests_for_canaries_are_checked(canary, api_for, versions):  # noqa: F811
    from registry.models import ModelVersion

    rollout, operator = canary
    deployment = rollout.deployment
    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.ABORTED)
    ModelVersion.objects.filter(pk=versions[2].pk).update(state="validated")
    url = f"/api/v1/deployments/{deployment.name}/rollouts/"
    api = api_for(operator)
    bad = api.post(
        url, {"version": 2, "strategy": "canary", "plan": {"steps": [9, 3]}}, format="json"
    )
    assert bad.status_code == 400 and "steps" in str(bad.json()["error"])
    unknown = api.post(url, {"version": 2, "strategy": "linear"}, format="json")
    assert unknown.status_code == 400
    with pytest.raises(InvalidInput):
        services.rollout_start(
            deployment=deployment, version_number=2, actor=operator, plan={"steps": [5]}
        )
    started = api.post(
        url, {"version": 2, "strategy": "canary", "plan": {"steps": [20]}}, format="json"
    )
    assert started.status_code == 202, started.json()
    assert started.json()["strategy"] == "canary"
    assert started.json()["plan"] == {
        "steps": [20],
        "min_step_seconds": 60,
        "min_step_requests": 200,
        "auto_promote": True,
        "judge": {},
    }
    assert "as a canary in steps of 20 %" in started.json()["steps"][0]["message"]
    Rollout.objects.filter(pk=started.json()["id"]).delete()
    # Nothing live to judge against: a canary cannot start.
    Deployment.objects.filter(pk=deployment.pk).update(live_slot="")
    with pytest.raises(InvalidState) as refused:
        services.rollout_start(
            deployment=Deployment.objects.get(pk=deployment.pk),
            version_number=2,
            actor=operator,
            strategy="canary",
        )
    assert refused.value.code == "canary_needs_live_version"
    assert Rollout.objects.filter(deployment=deployment).count() == 1  # nothing half-written


# --- shadow ---------------------------------------------------------------------------------


@pytest.fixture
def shadow(canary):
    """The same deployment with a shadow rollout of v2 instead, mirroring 40 % since 90 s."""
    rollout, operator = canary
    Rollout.objects.filter(pk=rollout.pk).update(
        strategy=RolloutStrategy.SHADOW,
        state=RolloutState.SHADOW,
        plan=plan_clean(RolloutStrategy.SHADOW, {**PLAN, "mirror_percent": 40}),
    )
    rollout.refresh_from_db()
    return rollout, operator


def _shadow_cells(client, deployment, version, *, minute, **fields):
    """What the gateway's shadow flush writes (gateway.shadow_reports' layout)."""
    key = shadow_key(deployment.name, version, minute)
    for name, value in fields.items():
        client.hincrbyfloat(key, name, value) if isinstance(value, float) else client.hincrby(
            key, name, value
        )


def test_a_shadow_mirrors_its_share_and_its_comparison_is_kept(shadow, monitoring_redis):  # noqa: F811
    rollout, _ = shadow
    route_sync(deployment_id=rollout.deployment_id)
    route = Route.from_json(monitoring_redis.hget(ROUTES_KEY, rollout.deployment.name))
    assert route.canary is None and route.shadow is not None
    assert (route.shadow.version, route.shadow.slot, route.shadow.weight) == (2, "green", 4_000)
    assert route.shadow.upstreams == ("http://127.0.0.1:10",)

    minute = int(minute_ago(1) // 60)
    _shadow_cells(
        monitoring_redis,
        rollout.deployment,
        2,
        minute=minute,
        mirrored=400,
        compared=398,
        rows=398,
        agree=380,
        errors=2,
        errors_timeout=2,
        prob_values=796,
        prob_abs_sum=39.8,
        live_ms_sum=398.0,
        shadow_ms_sum=796.0,
    )
    rollout = _tick(rollout)
    assert rollout.state == RolloutState.SHADOW  # a shadow never decides by itself
    kept = rollout.judgement["shadow"]
    assert (kept["mirrored"], kept["errors"]) == (400, 2)
    assert kept["agreement_rate"] == pytest.approx(380 / 398)
    assert kept["prob_abs_mean"] == pytest.approx(0.05)
    assert kept["latency_diff_ms_mean"] == pytest.approx(1.0)


def test_a_shadow_is_promoted_to_a_canary_then_the_canary_takes_its_first_step(
    shadow,
    monitoring_redis,  # noqa: F811
    api_for,
):
    rollout, operator = shadow
    api = api_for(operator)
    base = f"/api/v1/deployments/{rollout.deployment.name}/rollouts/{rollout.pk}"
    assert api.post(f"{base}/pause/", {}, format="json").status_code == 409  # canaries only
    moved = api.post(f"{base}/canary/", {"reason": "agrees"}, format="json")
    assert moved.status_code == 200, moved.json()
    assert (moved.json()["state"], moved.json()["canary_weight"]) == ("canary", 10)
    assert "shadow promoted to a canary at 10 %" in moved.json()["steps"][-1]["message"]
    route = Route.from_json(monitoring_redis.hget(ROUTES_KEY, rollout.deployment.name))
    assert route.shadow is None and route.canary is not None and route.canary.weight == 1_000
    assert api.post(f"{base}/canary/", {}, format="json").status_code == 409  # not a shadow


def test_a_shadow_is_aborted_or_promoted_to_live_by_a_person(
    shadow,
    monitoring_redis,  # noqa: F811
    api_for,
):
    rollout, operator = shadow
    api = api_for(operator)
    base = f"/api/v1/deployments/{rollout.deployment.name}/rollouts/{rollout.pk}"
    promoted = api.post(f"{base}/promote/", {}, format="json")
    assert promoted.status_code == 200 and promoted.json()["state"] == "switching"
    assert "shadow promoted: promoted by a person" in promoted.json()["steps"][-1]["message"]

    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.SHADOW)
    aborted = api.post(f"{base}/abort/", {}, format="json")
    assert aborted.status_code == 200 and aborted.json()["state"] == "aborted"
    route = Route.from_json(monitoring_redis.hget(ROUTES_KEY, rollout.deployment.name))
    assert (route.version, route.shadow, route.canary) == (1, None, None)
    assert DeploymentEvent.objects.filter(kind="shadow_aborted").count() == 1


def test_the_canary_arm_and_its_sticky_key_are_published_from_the_rollout(
    canary,
    monitoring_redis,  # noqa: F811
):
    rollout, _ = canary
    plan = canary_plan_clean({**PLAN, "sticky": {"header": "X-User-Id"}})
    Rollout.objects.filter(pk=rollout.pk).update(plan=plan)
    route_sync(deployment_id=rollout.deployment_id)
    route = Route.from_json(monitoring_redis.hget(ROUTES_KEY, rollout.deployment.name))
    assert (route.version, route.slot, route.upstreams) == (1, "blue", ("http://127.0.0.1:9",))
    assert (route.canary.version, route.canary.slot, route.canary.weight) == (2, "green", 1_000)
    assert route.sticky.header == "x-user-id" and route.shadow is None
    # A canary slot with no ready replica gets no share: live answers everything.
    Slot.objects.filter(deployment=rollout.deployment, color="green").update(url="", replicas=[])
    route_sync(deployment_id=rollout.deployment_id)
    route = Route.from_json(monitoring_redis.hget(ROUTES_KEY, rollout.deployment.name))
    assert route.canary is None and route.version == 1
    with pytest.raises(InvalidInput) as refused:
        canary_plan_clean({"sticky": {"header": "X-User-Id", "field": "user"}})
    assert "sticky" in refused.value.details
