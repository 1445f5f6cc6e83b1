"""A data scientist uploads through the wizard, validation finishes on the real worker, a
reviewer approves with the evidence in front of them. Screenshots of every page."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from accounts.choices import Role
from registry.choices import VersionState
from registry.models import ModelVersion, Review
from tests.factories import RegisteredModelFactory
from tests.registry.helpers import upload_version

VALIDATION_TIMEOUT_MS = 180_000  # sandbox load + predict on a busy 2-core machine


def test_scientist_uploads_and_reviewer_approves(ui, make_user, sklearn_model, tmp_path):
    scientist = make_user(Role.DATA_SCIENTIST, "dana")
    reviewer = make_user(Role.REVIEWER, "rory")
    artifact = tmp_path / "churn.joblib"
    artifact.write_bytes(sklearn_model.artifact)
    reference = tmp_path / "reference.csv"
    reference.write_bytes(sklearn_model.reference_csv)

    page = ui.new_page(scientist)
    expect(page.get_by_role("heading", name="No models registered yet")).to_be_visible()
    ui.shot(page, "01-models-empty")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Upload").click()
    expect(page.get_by_role("heading", name="Upload a model version")).to_be_visible()

    page.get_by_label("Model (required)", exact=True).fill("churn")
    page.get_by_label("Model file").set_input_files(str(artifact))
    # The server sniffs the chosen file (never loads it) and says what it looks like.
    expect(page.locator("#framework-hint")).to_contain_text("scikit-learn")
    page.get_by_label("What changed in this version").fill("Logistic regression baseline")
    page.get_by_label("Parameters").fill("C = 1.0\nmax_iter = 200")
    page.get_by_label("Metrics").fill("auc = high")
    page.get_by_label("Parent versions").fill("churn:9")
    page.get_by_label("Datasets").fill("s3://bucket/churn/train.parquet")
    page.get_by_label("Reference data").set_input_files(str(reference))
    page.get_by_role("button", name="Upload and validate").click()
    # Every mistake is reported at once next to its field, and nothing was stored.
    metrics = page.get_by_label("Metrics")
    expect(metrics).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#id_metrics_error")).to_contain_text("'auc' must be a number")
    expect(page.locator("#id_parents_error")).to_contain_text("churn v9 does not exist")
    # The chosen files are kept: no need to choose them again.
    expect(page.locator("#kept-file")).to_contain_text("churn.joblib")
    expect(page.locator("#kept-reference_data")).to_contain_text("reference.csv")
    ui.shot(page, "02-upload-field-error")
    assert not ModelVersion.objects.exists()
    metrics.fill("auc = 0.91")
    page.get_by_label("Parent versions").fill("")
    ui.shot(page, "03-upload-filled")
    page.get_by_role("button", name="Upload and validate").click()

    page.wait_for_url(re.compile(r"/models/churn/versions/1/$"))
    ui.shot(page, "04-version-validating")
    status = page.locator(".validation-status")
    expect(status).to_have_attribute("aria-live", "polite")
    # The htmx poller swaps the panel in place when the real Celery worker is done.
    expect(status).to_contain_text("Validation passed", timeout=VALIDATION_TIMEOUT_MS)
    expect(page.get_by_text("no unsafe code found")).to_be_visible()
    expect(page.get_by_role("table", name="Input schema")).to_be_visible()
    ui.shot(page, "05-version-validated")

    page.get_by_label("Note for the reviewers").fill("Ready for review")
    page.get_by_role("button", name="Submit for review").click()
    expect(page.locator("#version-state")).to_have_text("in review")
    # The uploader has no way to approve: no button here, and no review page for the role.
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    expect(page.get_by_role("link", name="Reviews")).to_have_count(0)
    assert page.goto(f"{ui.url}/reviews/churn/1/").status == 403
    # Live search: typing filters the list in place (htmx), the URL follows.
    page.goto(f"{ui.url}/models/")
    page.get_by_label("Search").fill("no-such-model")
    expect(page.get_by_role("heading", name="No model matches these filters")).to_be_visible()
    expect(page).to_have_url(re.compile(r"q=no-such-model"))
    page.get_by_label("Search").fill("chu")
    expect(page.get_by_role("link", name="churn", exact=True)).to_be_visible()
    page.goto(f"{ui.url}/models/churn/")
    expect(page.locator('[data-figure="lineage-figure"] .main-svg').first).to_be_attached()
    ui.shot(page, "06-model-page")

    review = ui.new_page(reviewer)
    nav_reviews = review.get_by_role("navigation", name="Main").get_by_role(
        "link", name=re.compile("Reviews")
    )
    expect(nav_reviews).to_contain_text("1")
    nav_reviews.click()
    expect(review.get_by_role("cell", name="churn v1", exact=True)).to_be_visible()
    ui.shot(review, "07-review-queue")
    review.get_by_role("link", name="Review churn v1").click()
    expect(review.get_by_role("heading", name=re.compile("Review churn v1"))).to_be_visible()
    for evidence in (
        "Validation",
        "Metrics against the live version",
        "Parameters diff",
        "Lineage",
        "Model card",
    ):
        expect(review.get_by_role("heading", name=evidence, exact=True)).to_be_visible()
    expect(review.locator(".validation-status")).to_contain_text("Validation passed")
    expect(review.get_by_text("this would be the first")).to_be_visible()
    expect(review.locator('[data-figure="lineage-figure"] .main-svg').first).to_be_attached()
    ui.shot(review, "08-review-page")

    review.get_by_label("Comment").fill("Holdout AUC is fine; approve.")
    review.get_by_role("button", name="Approve").click()
    review.wait_for_url(re.compile(r"/reviews/$"))
    expect(review.get_by_text("Approved churn v1.")).to_be_visible()
    expect(review.get_by_role("heading", name="Nothing to review")).to_be_visible()
    ui.shot(review, "09-review-queue-after")

    version = ModelVersion.objects.get(model__name="churn", number=1)
    assert version.state == VersionState.APPROVED
    assert Review.objects.get(version=version).comment == "Holdout AUC is fine; approve."
    # The refused upload (400) and the scientist's attempt to open the review page (403).
    expected = [f"HTTP 400 {ui.url}/upload/", f"HTTP 403 {ui.url}/reviews/churn/1/"]
    assert ui.console_errors == expected, ui.console_errors


def test_own_version_shows_why_and_has_no_active_buttons(ui, make_user, sklearn_model):
    # An admin may upload and review; their own upload still needs someone else.
    admin = make_user(Role.ADMIN, "ada")
    admin.is_superuser = admin.is_staff = True
    admin.save()
    model = RegisteredModelFactory(name="own", owner=admin)
    upload_version(model, admin, sklearn_model, submit=True)

    page = ui.new_page(admin)
    page.goto(f"{ui.url}/reviews/own/1/")
    expect(page.get_by_text("You uploaded this, someone else must review it.")).to_be_visible()
    expect(page.get_by_role("button", name="Approve")).to_be_disabled()
    expect(page.get_by_role("button", name="Reject")).to_be_disabled()
    ui.shot(page, "own-version")
    assert ui.axe(page) == []
    assert not Review.objects.exists()


@pytest.fixture(autouse=True)
def _fast_fail_on_server_errors(ui):
    yield
    log = ui.stack["web_log"].read_text() if ui.stack["web_log"].exists() else ""
    assert "Internal Server Error" not in log, log[-3000:]
