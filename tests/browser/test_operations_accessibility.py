"""axe-core on the operations pages, in the real browser against the live stack: no serious
or critical violations on the deployments list, the deployment page with its charts drawn,
the batch list, the batch form (also with its errors shown) and a batch job page."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from accounts.choices import Role
from batch import services as batch_services
from tests.batch.conftest import (  # noqa: F401 - fixtures
    batch_bentos,
    batch_setup,
    csv_upload,
    input_frame,
)
from tests.browser.conftest import axe_summary
from tests.frontend.test_operations_pages import add_rollups, ops  # noqa: F401 - fixture


def _check(ui, page, name: str) -> None:
    ui.shot(page, name)
    violations = ui.axe(page)
    assert not violations, f"{name}:\n{axe_summary(violations)}"


def test_operations_pages_have_no_serious_axe_violations(ui, ops, batch_setup, make_user):  # noqa: F811
    deployment = ops["deployment"]
    add_rollups(deployment, 3, 20, bucket=80)
    job = batch_services.batch_job_create(
        model=batch_setup["model"],
        actor=batch_setup["owner"],
        version_number=1,
        upload=csv_upload(input_frame(20)),
        id_column="row_id",
    )
    operator = ops["operator"]
    page = ui.new_page(operator)

    page.goto("/deployments/")
    expect(page.get_by_role("row", name=deployment.name)).to_be_visible()
    _check(ui, page, "a11y-01-deployments")

    page.goto(f"/deployments/{deployment.name}/?window=1h")
    charts = page.locator("#dashboard .chart")
    expect(charts).to_have_count(8)  # with the quality panels
    for index in range(8):
        expect(charts.nth(index)).to_have_attribute("data-drawn", "true")
    _check(ui, page, "a11y-02-deployment-dashboard")

    page.get_by_role("button", name="Rollback…").click()
    expect(page.locator("#rollback-area")).to_contain_text(
        f"Roll back {deployment.name} from v2 to v1?"
    )
    _check(ui, page, "a11y-03-rollback-confirmation")

    page.goto("/batch/")
    expect(page.get_by_role("link", name=f"#{job.pk}")).to_be_visible()
    _check(ui, page, "a11y-04-batch-list")

    page.goto("/batch/new/")
    _check(ui, page, "a11y-05-batch-create")
    page.get_by_role("button", name="Start batch job").click()
    expect(page.locator(".ops-field-error")).to_have_count(2)
    _check(ui, page, "a11y-06-batch-create-errors")

    page.goto(f"/batch/{job.pk}/")
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Batch job #{job.pk}")
    _check(ui, page, "a11y-07-batch-detail")

    # Keyboard: the window selector and the rollback button are reachable with Tab.
    page.goto(f"/deployments/{deployment.name}/")
    reached = set()
    for _ in range(60):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("() => document.activeElement.textContent.trim()"))
    assert {"Rollback…", "Roll out", "30d"} <= reached, reached

    viewer = ui.new_page(make_user(Role.VIEWER, "vic"))
    viewer.goto(f"/deployments/{deployment.name}/")
    expect(viewer.get_by_text("Only operators and admins")).to_be_visible()
    expect(viewer.get_by_role("button", name="Rollback…")).to_have_count(0)
    _check(ui, viewer, "a11y-08-deployment-as-viewer")
    # The one 4xx expected: the empty batch form, answered 400 with its errors.
    unexpected = [e for e in ui.console_errors if not re.fullmatch(r"HTTP 400 \S+/batch/new/", e)]
    assert not unexpected, unexpected
