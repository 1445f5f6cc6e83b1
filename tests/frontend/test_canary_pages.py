"""The deployment page during a canary: arms and weights, steps, the judge's verdict per
metric with its numbers, and the promote / pause / abort buttons (the services' own paths)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from deployments.choices import RolloutState
from deployments.models import Rollout
from registry.models import ModelVersion
from tests.deployments.test_canary import (  # noqa: F401 (fixtures)
    _shadow_cells,
    _tick,
    _traffic,
    canary,
    minute_ago,
    monitoring_redis,
    private_redis_url,
    registered_model,
    shadow,
    trained_models,
    versions,
)
from tests.frontend.conftest import assert_csp_clean

pytestmark = pytest.mark.django_db


def test_the_page_shows_the_split_the_steps_and_the_judges_numbers(canary, settings, login):  # noqa: F811
    rollout, operator = canary
    _traffic(rollout, settings, canary_errors=5)
    rollout = _tick(rollout)  # passes step 1: now 50 %
    client = login(operator)
    page = client.get(f"/deployments/{rollout.deployment.name}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert_csp_clean(html)
    assert 'data-arm-weight="canary">50 %' in html and 'data-arm-weight="live">50 %' in html
    assert html.count('data-step-status="done"') == 1
    assert html.count('data-step-status="current"') == 1
    assert 'data-verdict="pass"' in html and 'data-metric="error_rate"' in html
    assert "fisher_exact" in html or "two_proportion_z" in html
    assert "0.50%" in html  # both arms' 5xx rate, as the judge measured it
    # The done step names the verdict that closed it, per metric, whatever the judge says
    # of the next step meanwhile.
    done = html.split('data-step-status="done"', 1)[1].split("</li>", 1)[0]
    closed = '<span data-step-metric="error_rate">error_rate <span class="ops-state">pass</span>'
    assert closed in done
    assert 'data-step-metric="latency"' in done and "(p " in done
    for label in ("Promote to 100 %", "Pause", "Abort canary"):
        assert label in html
    assert (
        "A canary or shadow is running: abort it" in html
    )  # no rollback to an older version offered

    # The polled partial carries the same panel for the live refresh.
    status = client.get(f"/deployments/{rollout.deployment.name}/status/").content.decode()
    assert 'id="canary-judge"' in status and "Abort canary" in status


def test_the_buttons_pause_and_abort_and_a_viewer_has_none(canary, login, make_user):  # noqa: F811
    rollout, operator = canary
    url = f"/deployments/{rollout.deployment.name}/rollouts/{rollout.pk}/canary/"
    viewer = login(make_user("viewer", "val"))
    page = viewer.get(f"/deployments/{rollout.deployment.name}/").content.decode()
    assert "Abort canary" not in page
    assert viewer.post(url, {"action": "abort"}).status_code == 403
    assert Rollout.objects.get(pk=rollout.pk).state == RolloutState.CANARY

    client = login(operator)
    paused = client.post(url, {"action": "pause"})
    assert paused.status_code == 302 and Rollout.objects.get(pk=rollout.pk).paused
    assert "Resume" in client.get(f"/deployments/{rollout.deployment.name}/").content.decode()
    assert client.post(url, {"action": "explode"}).status_code == 400
    client.post(url, {"action": "abort"})
    aborted = Rollout.objects.get(pk=rollout.pk)
    assert aborted.state == RolloutState.ABORTED and aborted.error == "abort from the UI"


def test_the_rollout_form_starts_a_canary_and_refuses_bad_steps(canary, login, versions):  # noqa: F811
    rollout, operator = canary
    Rollout.objects.filter(pk=rollout.pk).update(
        state=RolloutState.ABORTED, finished_at=timezone.now() - timedelta(seconds=1)
    )
    ModelVersion.objects.filter(pk=versions[2].pk).update(state="validated")
    client = login(operator)
    url = f"/deployments/{rollout.deployment.name}/rollouts/"
    bad = client.post(url, {"version": "2", "strategy": "canary", "steps": "5, lots"})
    assert bad.status_code == 400 and "whole percentages" in bad.content.decode()
    backwards = client.post(url, {"version": "2", "strategy": "canary", "steps": "50, 5"})
    assert backwards.status_code == 400 and "canary plan is invalid" in backwards.content.decode()
    started = client.post(
        url, {"version": "2", "strategy": "canary", "steps": "5, 20", "min_step_seconds": "30"}
    )
    assert started.status_code == 302
    created = Rollout.objects.filter(deployment=rollout.deployment).order_by("-id").first()
    assert created.strategy == "canary"
    assert (created.plan["steps"], created.plan["min_step_seconds"]) == ([5, 20], 30)


def test_a_shadow_shows_its_comparison_per_minute_and_its_buttons(shadow, monitoring_redis, login):  # noqa: F811
    rollout, operator = shadow
    minute = int(minute_ago(1) // 60)
    _shadow_cells(
        monitoring_redis, rollout.deployment, 2, minute=minute, mirrored=50, rows=50, agree=45
    )
    html = login(operator).get(f"/deployments/{rollout.deployment.name}/").content.decode()
    assert "40 % of live requests are mirrored to v2" in html
    panel = html[html.index('id="canary"') :]
    assert "<td data-shadow-agreement>90.00%</td>" in panel, panel[:6000]
    # The same minute in the chart: agreement 0.9 over 50 rows.
    figure = json.loads(
        panel.split('<script id="fig-shadow" type="application/json">')[1].split("</script>")[0]
    )
    agreement = figure["data"][0]
    assert agreement["y"] == [0.9] and agreement["customdata"] == [50], figure
    assert "shadow (40 % mirrored)" in html  # the slots table
    for label in ("Promote to canary (10 %)", "Promote to 100 %", "Abort shadow"):
        assert label in html
    assert 'id="canary-arms"' not in html and "Pause" not in html
