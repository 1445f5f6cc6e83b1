"""An operator creates a deployment, issues a key (shown once), tries a prediction on the
live slot, and sees the roll-out list follow a version change without a reload."""

from __future__ import annotations

import json

from playwright.sync_api import expect

from deployments.choices import SlotColor
from deployments.models import Deployment, DeploymentKey, Slot
from gateway.routes import deployment_key_hash
from tests.frontend.test_deployment_manage import _ModelSlot
from tests.frontend.test_operations_pages import ops  # noqa: F401 - fixture


def test_operator_manages_keys_tries_a_prediction_and_actions_follow(ui, ops, sklearn_model):  # noqa: F811
    deployment = ops["deployment"]
    slot = _ModelSlot(sklearn_model.model)
    try:
        Slot.objects.filter(deployment=deployment, color=SlotColor.GREEN).update(url=slot.url)
        page = ui.new_page(ops["operator"])

        page.goto("/deployments/new/")
        page.get_by_role("button", name="Create deployment").click()
        expect(page.locator(".form-errors")).to_contain_text("Please correct the")
        ui.shot(page, "01-new-deployment-errors")
        page.get_by_label("Name").fill("churn-staging")
        page.get_by_label("Model").select_option(deployment.model.name)
        page.get_by_label("Environment").select_option("staging")
        page.get_by_role("button", name="Create deployment").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("churn-staging")
        assert Deployment.objects.filter(name="churn-staging").exists()

        page.goto(f"/deployments/{deployment.name}/")
        page.get_by_label("Key name").fill("checkout")
        page.get_by_role("button", name="Issue a key").click()
        issued = page.locator("#new-gateway-key")
        expect(issued).to_be_visible()
        key = issued.inner_text().strip()
        assert DeploymentKey.objects.get(name="checkout").digest == deployment_key_hash(key)
        page.locator("#deployment-keys").scroll_into_view_if_needed()
        ui.shot(page, "02-key-issued-once")

        row = sklearn_model.frame.iloc[0].to_dict()
        page.get_by_label("Input rows (JSON)").fill(json.dumps([row], indent=2))
        page.get_by_role("button", name="Predict").click()
        expect(page.locator("#try-result")).to_contain_text("v2 answered HTTP 200")
        page.get_by_label("Input rows (JSON)").fill("{not json")
        page.get_by_role("button", name="Predict").click()
        expect(page.locator("#try-result")).to_contain_text("Not valid JSON")
        page.get_by_label("Input rows (JSON)").fill(json.dumps([row], indent=2))
        page.get_by_role("button", name="Predict").click()
        expect(page.locator("#try-result")).to_contain_text("v2 answered HTTP 200")
        page.locator("#deployment-try").scroll_into_view_if_needed()
        ui.shot(page, "03-try-a-prediction")

        page.get_by_role("button", name="Rollback…").click()
        expect(page.locator("#rollback-area")).to_contain_text("Cold start: v1 no longer runs")
        ui.shot(page, "04-rollback-cold-start")

        # v3 goes live elsewhere (API, another operator): the status poll picks it up and the
        # roll-out list follows at once, no longer offering v3 and offering v2 again.
        options = page.locator("#rollout-version option")
        expect(options).to_have_text(["v3 (approved)", "v1 (approved)"])
        Slot.objects.filter(deployment=deployment, color=SlotColor.BLUE).update(
            version=ops["versions"][3]
        )
        Deployment.objects.filter(pk=deployment.pk).update(live_slot=SlotColor.BLUE)
        expect(page.locator("#live-version")).to_have_text("v3", timeout=25_000)
        expect(options).to_have_text(["v2 (approved)", "v1 (approved)"], timeout=5_000)
        ui.shot(page, "05-actions-followed-the-status")
        # The two refusals the test provoked (the empty create form, the bad JSON) only.
        expected = [
            f"HTTP 400 {ui.url}/deployments/new/",
            f"HTTP 400 {ui.url}/deployments/churn-prod/try/",
        ]
        assert ui.console_errors == expected, ui.console_errors
    finally:
        slot.close()
