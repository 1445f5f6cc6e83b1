"""An operator starts a canary from the deployment page on the real stack with traffic flowing,
watches the judge pass the first step and the split move on, then aborts it: the live version
keeps every request. Screenshots on the way, and an axe check of the canary panel."""

from __future__ import annotations

import re
import threading

import httpx
import pytest
from playwright.sync_api import expect

from accounts.models import User
from deployments.models import Rollout
from monitoring.tasks import metrics_rollup_task
from tests.browser.conftest import axe_summary
from tests.deployments.flows import _roll_out, churn_deployment
from tests.deployments.loadgen import LoadProcess

ROLLOUT_TIMEOUT_MS = 420_000  # a Bento build and a cold slot start on a busy 2-core machine
STEP_TIMEOUT_MS = 240_000  # ~540 canary requests at 10 % for the judge's pass bound

pytestmark = pytest.mark.stack_env(MODELYARD_CANARY_JUDGE_SECONDS="2")


class _BeatRollups:
    """What beat does every 10 s, every 2 s here: the gateway's metrics rolled up for the
    judge (the live stack runs no beat)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(2):
            metrics_rollup_task.apply_async()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def test_operator_starts_a_canary_watches_it_advance_and_aborts_it(ui, tmp_path):
    with httpx.Client(timeout=60) as http:
        churn = churn_deployment(http, ui.stack, versions=2)
        _roll_out(http, churn.base, churn.ops, 1, ui.stack)
    load = LoadProcess(
        f"{ui.stack.gateway}/d/churn-prod/predict", churn.key, churn.rows, tmp_path / "l.json"
    )
    rollups = _BeatRollups()
    try:
        page = ui.new_page(User.objects.get(username="olive"))
        page.goto("/deployments/churn-prod/")
        expect(page.locator("#live-version")).to_have_text("v1")

        page.get_by_label("Version to roll out").select_option("2")
        page.get_by_label("Strategy").select_option("canary")
        page.get_by_label("Canary steps, % of requests").fill("10, 50")
        page.get_by_label("Minimum seconds per step").fill("5")
        page.get_by_label("Reason (optional)").fill("tree model, carefully")
        ui.shot(page, "01-canary-form")
        page.get_by_role("button", name="Roll out").click()
        expect(page.get_by_role("status")).to_contain_text("Rolling out v2")
        expect(page.locator("#deployment-status")).to_contain_text("as a canary in steps of")

        # The canary takes 10 %: the split, the steps and (soon) the judge's first look.
        canary = page.locator("#canary")
        expect(canary.locator('[data-arm-weight="canary"]')).to_have_text(
            "10 %", timeout=ROLLOUT_TIMEOUT_MS
        )
        expect(canary.locator('[data-arm-weight="live"]')).to_have_text("90 %")
        expect(canary.locator("#canary-judge")).to_be_visible(timeout=60_000)
        ui.shot(page, "02-canary-at-10-percent")
        violations = ui.axe(page)
        assert not violations, axe_summary(violations)

        # The judge passes step 1 on real traffic: the page moves to 50 % by itself.
        expect(canary.locator('[data-arm-weight="canary"]')).to_have_text(
            "50 %", timeout=STEP_TIMEOUT_MS
        )
        expect(canary.locator('[data-step-status="done"]')).to_have_count(1)
        expect(canary.locator('[data-step-status="done"]')).to_contain_text("10 % (passed)")
        expect(canary.locator('[data-step-status="current"]')).to_contain_text("50 %")
        # The done step keeps the verdict that closed it (the judge's table has moved on to
        # step 2's window and may say "not yet" by now).
        expect(
            canary.locator('[data-step-status="done"] [data-step-metric="error_rate"] .ops-state')
        ).to_have_text("pass")
        ui.shot(page, "03-canary-at-50-percent-judge-passed")

        page.get_by_role("button", name="Abort canary").click()
        expect(page.get_by_role("status")).to_contain_text("abort (aborted)")
        expect(page.locator("#deployment-status")).to_contain_text("canary aborted")
        expect(page.locator("#live-version")).to_have_text("v1")
        ui.shot(page, "04-canary-aborted")
    finally:
        rollups.close()
        result = load.stop()

    print(f"\nload through the canary and its abort: {result}")
    assert result["errors"] == {} and set(result["by_status"]) == {"200"}, result
    assert set(result["by_version"]) == {"1", "2"}, result
    rollout = Rollout.objects.filter(deployment__name="churn-prod").order_by("-id").first()
    assert rollout.state == "aborted" and rollout.error == "abort from the UI"
    assert re.search(r"canary step 2: 50 %", str(rollout.steps))
    assert not ui.console_errors, ui.console_errors
