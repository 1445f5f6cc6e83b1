"""axe-core on the registry, review, audit and token pages: no serious or critical issue."""

from __future__ import annotations

from accounts.choices import Role
from accounts.services import token_create
from registry import services
from tests.browser.conftest import axe_summary
from tests.factories import RegisteredModelFactory
from tests.registry.helpers import upload_version


def test_main_pages_have_no_serious_accessibility_violations(ui, make_user, sklearn_model):
    scientist = make_user(Role.DATA_SCIENTIST, "dana")
    reviewer = make_user(Role.REVIEWER, "rory")
    model = RegisteredModelFactory(
        name="churn",
        owner=scientist,
        description="Predicts churn",
        tags=["tabular"],
        intended_use="Retention campaigns.",
        limitations="Synthetic data.",
    )
    upload_version(model, scientist, sklearn_model)
    services.alias_set(model=model, name="staging", version_number=1, actor=scientist)
    upload_version(model, scientist, sklearn_model, submit=True)
    token_create(user=scientist, name="ci")

    checked = {}
    anonymous = ui.new_context().new_page()
    anonymous.goto(f"{ui.url}/login/")
    checked["login"] = (anonymous, ui.axe(anonymous))
    ui.shot(anonymous, "login")

    page = ui.new_page(scientist)
    for name, path in [
        ("models", "/models/"),
        ("model", "/models/churn/"),
        ("version", "/models/churn/versions/2/"),
        ("upload", "/upload/"),
        ("audit", "/audit/"),
        ("tokens", "/tokens/"),
    ]:
        page.goto(f"{ui.url}{path}")
        page.wait_for_load_state("networkidle")
        checked[name] = ui.axe(page)
        ui.shot(page, name)

    review = ui.new_page(reviewer)
    for name, path in [("review-queue", "/reviews/"), ("review", "/reviews/churn/2/")]:
        review.goto(f"{ui.url}{path}")
        review.wait_for_load_state("networkidle")
        checked[name] = ui.axe(review)
        ui.shot(review, name)

    checked["login"] = checked["login"][1]
    # The check itself can fail: an unlabelled field is a critical violation to axe.
    review.evaluate("document.querySelector('main').insertAdjacentHTML('beforeend', '<input>')")
    assert "label" in {v["id"] for v in ui.axe(review)}
    failures = {name: axe_summary(v) for name, v in checked.items() if v}
    assert not failures, "\n".join(f"{name}:\n{text}" for name, text in failures.items())


def test_keyboard_reaches_the_upload_button_and_focus_is_visible(ui, make_user):
    page = ui.new_page(make_user(Role.DATA_SCIENTIST, "dana"))
    page.goto(f"{ui.url}/upload/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Skip to content"
    for _ in range(60):
        page.keyboard.press("Tab")
        label = page.evaluate("document.activeElement.textContent.trim()")
        if label == "Upload and validate":
            break
    else:
        raise AssertionError("the submit button is not reachable with Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")
