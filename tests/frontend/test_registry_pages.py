from __future__ import annotations

import json

import pytest
from django.urls import reverse

from core.models import AuditEvent
from registry import services
from registry.choices import VersionState
from registry.models import Alias
from tests.factories import RegisteredModelFactory
from tests.frontend.conftest import assert_csp_clean

pytestmark = pytest.mark.django_db

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_anonymous_visitor_is_sent_to_login(client):
    response = client.get("/models/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/models/")


def test_empty_model_list_tells_a_scientist_to_upload(login, scientist):
    response = login(scientist).get("/models/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "No models registered yet" in html
    assert reverse("frontend:upload") in html
    assert_csp_clean(html)


def test_empty_model_list_for_a_viewer_has_no_upload_button(login, viewer):
    html = login(viewer).get("/models/").content.decode()
    assert "No models registered yet" in html
    assert "Upload your first model" not in html
    # Navigation follows the role: no Upload or Reviews link for a viewer.
    assert ">Upload<" not in html and ">Reviews" not in html
    assert ">Deployments<" in html and ">Batch jobs<" in html and ">Audit log<" in html


def test_model_list_search_filters_and_htmx_partial(login, scientist, validated_version):
    RegisteredModelFactory(name="fraud", description="card fraud", tags=["payments"])
    RegisteredModelFactory(name="other", description="unrelated")
    client = login(scientist)

    def names(response):
        html = response.content.decode()
        return {n for n in ("churn", "fraud", "other") if f">{n}</a>" in html}

    assert names(client.get("/models/")) == {"churn", "fraud", "other"}
    assert names(client.get("/models/", {"q": "FRAUD"})) == {"fraud"}
    assert names(client.get("/models/", {"q": "payments"})) == {"fraud"}  # a tag
    assert names(client.get("/models/", {"framework": "sklearn"})) == {"churn"}
    assert names(client.get("/models/", {"state": "validated"})) == {"churn"}
    assert names(client.get("/models/", {"state": "approved"})) == set()
    assert names(client.get("/models/", {"owner": "dana"})) == {"churn"}
    # A version filter must not multiply the version count (subquery, not a join).
    assert "1 (latest v1)" in client.get("/models/", {"framework": "sklearn"}).content.decode()

    partial = client.get("/models/", {"q": "zzz"}, headers={"HX-Request": "true"})
    html = partial.content.decode()
    assert html.lstrip().startswith('<section id="model-results"')
    assert "No model matches these filters" in html
    assert "<html" not in html


def test_model_list_query_count_does_not_grow_with_models(
    login, scientist, django_assert_max_num_queries
):
    client = login(scientist)
    for index in range(3):
        RegisteredModelFactory(name=f"m{index}", owner=scientist)
    with django_assert_max_num_queries(12) as small:
        client.get("/models/")
    for index in range(3, 18):
        RegisteredModelFactory(name=f"m{index}", owner=scientist, tags=["a", "b"])
    with django_assert_max_num_queries(len(small.captured_queries)):
        response = client.get("/models/")
    assert response.content.decode().count("/models/m") >= 18


def test_user_data_is_escaped_everywhere(login, scientist, sklearn_model):
    from registry.services.versions import VersionMetadata
    from tests.registry.helpers import upload_version

    model = RegisteredModelFactory(
        name="xss", owner=scientist, description=XSS, tags=[XSS[:60]], intended_use=XSS
    )
    upload_version(
        model,
        scientist,
        sklearn_model,
        metadata=VersionMetadata(description=XSS, params={XSS: XSS}, metrics={"auc": 0.5}),
    )
    client = login(scientist)
    for url in ("/models/", "/models/xss/", "/models/xss/versions/1/", "/audit/"):
        html = client.get(url).content.decode()
        assert "<script>alert" not in html, url
        assert "<img src=x" not in html, url
        assert_csp_clean(html)
    assert "&lt;script&gt;alert" in client.get("/models/xss/").content.decode()


def test_model_page_shows_versions_aliases_card_lineage_and_deployments(
    login, scientist, reviewer, validated_version
):
    services.alias_set(
        model=validated_version.model, name="staging", version_number=1, actor=scientist
    )
    response = login(reviewer).get("/models/churn/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Model card" in html and "Intended use" in html
    assert "staging" in html and "v1" in html
    assert "Not deployed" in html
    figure = response.context["lineage"]["figure"]
    labels = [label for trace in figure["data"] for label in trace.get("text", [])]
    assert "churn v1" in labels
    json.dumps(figure)  # plain JSON for json_script
    # The lineage figure is handed over as JSON for charts.js, never inline code.
    assert 'id="lineage-figure" type="application/json"' in html
    assert 'data-figure="lineage-figure"' in html
    assert_csp_clean(html)


def test_unknown_model_is_404(login, viewer):
    missing = login(viewer).get("/models/nope/")
    assert missing.status_code == 404
    assert "No model named &#x27;nope&#x27;." in missing.content.decode()
    assert login(viewer).get("/models/nope/versions/1/").status_code == 404


def test_version_page_polls_while_validating_and_stops_after(
    login, scientist, registered_model, sklearn_model
):
    from tests.registry.helpers import upload_version

    version = upload_version(registered_model, scientist, sklearn_model, validate=False)
    client = login(scientist)
    html = client.get("/models/churn/versions/1/").content.decode()
    assert "Validation in progress" in html
    assert 'hx-trigger="every 2s"' in html and 'aria-live="polite"' in html
    services.version_validate(version_id=version.pk)
    partial = client.get("/models/churn/versions/1/status/").content.decode()
    assert "Validation passed" in partial
    assert "hx-trigger" not in partial
    assert "Safety scan" in partial and "no unsafe code found" in partial
    # The state badge and the actions follow out of band: no reload needed to submit.
    assert (
        '<section class="panel" id="actions" aria-labelledby="actions-heading" hx-swap-oob="true">'
        in partial
    )
    assert 'id="version-state" hx-swap-oob="true">validated<' in partial
    assert "Submit for review" in partial


def test_scientist_submits_for_review_from_the_version_page(login, scientist, validated_version):
    client = login(scientist)
    html = client.get("/models/churn/versions/1/").content.decode()
    assert "Submit for review" in html
    response = client.post("/models/churn/versions/1/submit/", {"comment": "ready"})
    assert response.status_code == 302
    validated_version.refresh_from_db()
    assert validated_version.state == VersionState.IN_REVIEW
    # Submitting twice: the service refuses, the page says why.
    response = client.post("/models/churn/versions/1/submit/", follow=True)
    assert "only a validated version can be submitted" in response.content.decode()


def test_viewer_cannot_submit_or_set_aliases(login, viewer, validated_version):
    client = login(viewer)
    html = client.get("/models/churn/versions/1/").content.decode()
    assert "Submit for review" not in html and "Point alias" not in html
    assert client.post("/models/churn/versions/1/submit/").status_code == 403
    assert client.post("/models/churn/versions/1/alias/", {"alias": "x"}).status_code == 403
    validated_version.refresh_from_db()
    assert validated_version.state == VersionState.VALIDATED
    assert not Alias.objects.exists()


def test_protected_alias_error_is_shown_next_to_the_field(login, scientist, validated_version):
    client = login(scientist)
    response = client.post("/models/churn/versions/1/alias/", {"alias": "production"})
    assert response.status_code == 400
    errors = response.context["alias_form"].errors
    assert "protected" in errors["alias"][0]
    assert 'id="id_alias_error"' in response.content.decode()
    assert not Alias.objects.exists()
    response = client.post("/models/churn/versions/1/alias/", {"alias": "staging", "reason": "qa"})
    assert response.status_code == 302
    assert Alias.objects.get().name == "staging"
    assert AuditEvent.objects.filter(action="alias.set", reason="qa").exists()


def test_submit_needs_post(login, scientist, validated_version):
    assert login(scientist).get("/models/churn/versions/1/submit/").status_code == 405


def test_home_tells_a_new_user_what_to_do_next(login, scientist, viewer):
    html = login(scientist).get("/").content.decode()
    assert "No models yet" in html and "Upload your first model" in html
    html = login(viewer).get("/").content.decode()
    assert "A data scientist uploads the first model" in html
    assert_csp_clean(html)


def test_home_shows_waiting_reviews_to_reviewers(login, reviewer, in_review):
    html = login(reviewer).get("/").content.decode()
    assert "<strong>1</strong> version waiting for review" in html


def test_version_page_shows_the_baseline_of_the_reference_labels(
    login, scientist, registered_model, sklearn_model, validated_version
):
    from types import SimpleNamespace

    from registry.services.versions import VersionMetadata
    from tests.models import training_frame
    from tests.registry.helpers import upload_version

    frame, target = training_frame(seed=0)
    labelled = SimpleNamespace(
        artifact=sklearn_model.artifact,
        reference_csv=frame.head(200).assign(churned=target[:200]).to_csv(index=False).encode(),
    )
    version = upload_version(
        registered_model, scientist, labelled, metadata=VersionMetadata(label_column="churned")
    )
    client = login(scientist)
    html = client.get(f"/models/churn/versions/{version.number}/").content.decode()
    accuracy = version.baseline_quality["metrics"]["accuracy"]["value"]
    assert 'id="baseline-quality"' in html
    assert "on 200 labelled reference rows (column <code>churned</code>)" in html
    assert f"{accuracy:.4f}" in html and "ROC AUC" in html
    # Without a label column there is no baseline to show.
    plain = client.get(f"/models/churn/versions/{validated_version.number}/").content.decode()
    assert 'id="baseline-quality"' not in plain
