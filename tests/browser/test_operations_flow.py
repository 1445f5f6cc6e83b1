"""An operator rolls out v2 from the UI on the real stack, watches the live step log, sees the
dashboard charts drawn from real gateway traffic, rolls back through the confirmation and
sees the live version change. Screenshots of every page on the way."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import httpx
from django.utils import timezone
from playwright.sync_api import expect

from accounts.models import User
from deployments.choices import RolloutKind, RolloutState, SlotColor
from deployments.models import Deployment, Rollout
from monitoring.models import DriftWindow, MetricRollup
from monitoring.services import metrics_rollup
from monitoring.services.drift_profiles import samples_read
from tests.deployments.flows import _predict, _roll_out, churn_deployment
from tests.frontend.test_operations_pages import ops  # noqa: F401 - fixture

ROLLOUT_TIMEOUT_MS = 420_000  # a Bento build and a cold slot start on a busy 2-core machine


def _traffic(http, stack, key, rows, requests: int) -> set[int]:
    versions = set()
    for _ in range(requests):
        version, _ = _predict(http, stack.gateway, key, rows)
        versions.add(version)
    return versions


def _rolled_up(deployment: Deployment, version: int, requests: int) -> None:
    """Run the roll-up as beat would until the gateway's flushes (every 0.2 s) of all
    ``requests`` are in."""
    deadline = time.monotonic() + 30
    while True:
        time.sleep(0.5)
        metrics_rollup()
        counts = MetricRollup.objects.filter(deployment=deployment, version=version)
        if sum(counts.values_list("count", flat=True)) >= requests:
            return
        assert time.monotonic() < deadline, f"the roll-ups of v{version} never reached {requests}"


def test_operator_rolls_out_sees_the_dashboard_and_rolls_back(ui):
    with httpx.Client(timeout=60) as http:
        churn = churn_deployment(http, ui.stack, versions=2)
        _roll_out(http, churn.base, churn.ops, 1, ui.stack)
        assert _traffic(http, ui.stack, churn.key, churn.rows, 20) == {1}
    deployment = Deployment.objects.get(name="churn-prod")
    _rolled_up(deployment, 1, 20)

    page = ui.new_page(User.objects.get(username="olive"))
    page.goto("/deployments/")
    row = page.get_by_role("row", name=re.compile("churn-prod"))
    expect(row).to_contain_text("v1")
    expect(row).to_contain_text("healthy")
    ui.shot(page, "01-deployments-list")

    row.get_by_role("link", name="churn-prod").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("churn-prod")
    expect(page.locator("#live-version")).to_have_text("v1")
    ui.shot(page, "02-deployment-v1-live")

    # Roll out v2 from the page; the step log follows the real worker without a reload.
    page.get_by_label("Version to roll out").select_option("2")
    page.get_by_label("Reason (optional)").fill("tree model: better recall")
    page.get_by_role("button", name="Roll out").click()
    expect(page.get_by_role("status")).to_contain_text("Rolling out v2")
    expect(page.locator("#deployment-status")).to_contain_text("rollout of v2")
    ui.shot(page, "03-rollout-in-progress")
    expect(page.locator("#live-version")).to_have_text("v2", timeout=ROLLOUT_TIMEOUT_MS)
    expect(page.locator("#deployment-status .ops-steplog")).to_contain_text("switch")
    ui.shot(page, "04-rolled-out-v2")

    with httpx.Client(timeout=60) as http:
        assert _traffic(http, ui.stack, churn.key, churn.rows, 30) == {2}
    # v2's own samples (v1's were there already): drift is computed once, for the versions
    # sampled by then, and a loaded gateway flushes its samples a moment later.
    deadline = time.monotonic() + 30
    while 2 not in samples_read(
        deployment="churn-prod", start=timezone.now() - timedelta(hours=1), end=timezone.now()
    ):
        assert time.monotonic() < deadline, "the gateway wrote no samples of v2"
        time.sleep(0.1)
    _rolled_up(deployment, 2, 30)
    # Drift of the live version computed now by the worker (beat does it hourly), so the
    # heatmap and the prediction distribution have a real window to show.
    with httpx.Client(timeout=60) as http:
        asked = http.post(f"{churn.base}/deployments/churn-prod/drift/", headers=churn.ops, json={})
        assert asked.status_code == 202, asked.text
    deadline = time.monotonic() + 180
    while not DriftWindow.objects.filter(deployment=deployment, version=2).exists():
        assert time.monotonic() < deadline, "the worker computed no drift window"
        time.sleep(1)

    # The dashboard: every chart drawn by plotly.js, with traces of both versions.
    page.goto("/deployments/churn-prod/?window=1h")
    charts = page.locator("#dashboard .chart")
    # latency, throughput, errors, cost, drift, predictions, quality, confusion matrix
    expect(charts).to_have_count(8)
    for index in range(8):
        expect(charts.nth(index)).to_have_attribute("data-drawn", "true")
        expect(charts.nth(index).locator(".main-svg").first).to_be_attached()
    latency = page.locator('[data-figure="fig-latency"]')
    expect(latency.locator(".scatterlayer .trace")).to_have_count(6)  # p50/p95/p99 x 2
    expect(page.locator("#dashboard")).to_contain_text("v1: 20 requests")
    expect(page.locator("#dashboard")).to_contain_text("v2: 30 requests")
    drift = page.locator("#fig-drift-caption")
    expect(drift).to_contain_text("1 window; latest status:")
    expect(page.locator('[data-figure="fig-drift"] .heatmaplayer')).to_be_attached()
    expect(page.locator("#fig-prediction-caption")).to_contain_text("live predictions sampled")
    throughput = page.locator('[data-figure="fig-throughput"]')
    expect(throughput.locator(".legendtext")).to_have_text(["v1", "v2"])
    ui.shot(page, "05-dashboard-with-data")

    # Rollback: the confirmation names both versions before anything happens.
    page.get_by_role("button", name="Rollback…").click()
    confirm = page.locator("#rollback-area")
    expect(confirm).to_contain_text("Roll back churn-prod from v2 to v1?")
    # v1's slot is still warm (bake period): the confirmation says the switch is instant.
    expect(confirm).to_contain_text("Instant switch: v1 still runs warm in the idle slot")
    assert Deployment.objects.get(pk=deployment.pk).live_slot == "green"
    page.get_by_label("Reason (recorded in the audit log)").fill("UI test: back to v1")
    ui.shot(page, "06-rollback-confirmation")
    page.get_by_role("button", name="Roll back to v1").click()
    expect(page.get_by_role("status")).to_contain_text("Rolling churn-prod back to v1")
    expect(page.locator("#live-version")).to_have_text("v1", timeout=ROLLOUT_TIMEOUT_MS)
    ui.shot(page, "07-rolled-back-to-v1")
    deployment.refresh_from_db()
    live = deployment.slots.get(color=deployment.live_slot)
    assert live.version.number == 1

    with httpx.Client(timeout=60) as http:
        assert _traffic(http, ui.stack, churn.key, churn.rows, 3) == {1}
    page.goto("/deployments/")
    expect(page.get_by_role("row", name=re.compile("churn-prod"))).to_contain_text("rollback")
    ui.shot(page, "08-deployments-list-after-rollback")
    assert not ui.console_errors, ui.console_errors


def test_live_parts_poll_while_visible_and_pause_while_hidden(ui, ops):  # noqa: F811
    """The step log follows the rollout without a reload, and nothing polls a hidden tab."""
    deployment = ops["deployment"]
    rollout = Rollout.objects.create(
        deployment=deployment,
        version=ops["versions"][3],
        previous_version=ops["versions"][2],
        kind=RolloutKind.ROLLOUT,
        target_slot=SlotColor.BLUE,
        state=RolloutState.BUILDING,
        steps=[
            {"at": timezone.now().isoformat(), "state": "building", "message": "build requested"}
        ],
    )
    page = ui.new_page(ops["operator"])
    polls: list[str] = []
    page.on(
        "request", lambda request: polls.append(request.url) if "/status/" in request.url else None
    )
    page.goto(f"/deployments/{deployment.name}/")
    status = page.locator("#deployment-status")
    expect(status).to_contain_text("Rollout in progress")
    expect(status).to_have_attribute("data-live-interval", "2000")

    Rollout.objects.filter(pk=rollout.pk).update(
        state=RolloutState.STARTING,
        steps=[
            *rollout.steps,
            {"at": timezone.now().isoformat(), "state": "starting", "message": "Bento ready"},
        ],
    )
    expect(status.locator(".ops-steplog")).to_contain_text("Bento ready", timeout=10_000)
    assert polls

    page.evaluate(
        "() => { Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        " document.dispatchEvent(new Event('visibilitychange')); }"
    )
    page.wait_for_timeout(2500)  # a request already in flight may still land
    polls.clear()
    page.wait_for_timeout(6000)  # three intervals
    assert polls == [], polls
    ui.shot(page, "hidden-tab-no-polling")

    page.evaluate(
        "() => { Object.defineProperty(document, 'hidden', {value: false, configurable: true});"
        " document.dispatchEvent(new Event('visibilitychange')); }"
    )
    page.wait_for_timeout(1500)  # visible again: refreshed at once, not after an interval
    assert polls, "polling did not resume when the tab became visible"

    # Errors back off (2 s doubling: 4 s, 8 s, ...) instead of hammering a failing server.
    page.route("**/status/", lambda route: route.fulfill(status=500, body="boom"))
    page.wait_for_timeout(2500)
    polls.clear()
    page.wait_for_timeout(12_000)  # six polls at the normal pace
    assert len(polls) <= 3, polls
    expect(status).to_contain_text("Bento ready")  # the error page was never swapped in
    page.unroute("**/status/")
    page.reload()

    # The rollout ends: the partial polls slowly from then on (a guard may still roll back).
    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.FAILED, error="demo failure")
    expect(status).to_have_attribute("data-live-interval", "15000", timeout=10_000)
    expect(status).to_contain_text("demo failure")
