"""Deployment, dashboard and batch pages through the Django test client, for every role."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.choices import Role
from batch.choices import JobState
from batch.models import BatchJob
from core.models import AuditEvent
from deployments.choices import RolloutKind, RolloutState, SlotColor, SlotState
from deployments.models import Deployment, Rollout, Slot
from deployments.services import deployment_create
from gateway.metrics import BUCKET_COUNT
from monitoring.models import MetricRollup
from registry.choices import VersionState
from registry.models import ModelVersion
from tests.batch.conftest import (  # noqa: F401 - fixtures
    batch_bentos,
    batch_setup,
    csv_upload,
    input_frame,
    read_output,
    run_job_inline,
)
from tests.conftest import stored_files
from tests.frontend.conftest import assert_csp_clean
from tests.registry.helpers import upload_version

pytestmark = pytest.mark.django_db

ROLES = [Role.VIEWER, Role.DATA_SCIENTIST, Role.REVIEWER, Role.OPERATOR, Role.ADMIN]


def add_rollups(deployment, version: int, minutes: int, *, count=10, errors=0, bucket=60):
    """``minutes`` minute rows ending a few minutes ago; latencies around BUCKET ``bucket``."""
    now = timezone.now().replace(second=0, microsecond=0)
    rows = []
    for m in range(minutes):
        histogram = [0] * BUCKET_COUNT
        histogram[bucket] = count - 2
        histogram[bucket + 20] = 2  # the slow tail p99 must find
        rows.append(
            MetricRollup(
                deployment=deployment,
                version=version,
                status=200,
                start=now - timedelta(minutes=m + 2),
                count=count,
                rows=count,
                errors=0,
                latency_us_sum=count * 5000,
                histogram=histogram,
            )
        )
        if errors:
            rows.append(
                MetricRollup(
                    deployment=deployment,
                    version=version,
                    status=500,
                    start=now - timedelta(minutes=m + 2),
                    count=errors,
                    rows=errors,
                    errors=errors,
                    latency_us_sum=errors * 1000,
                    histogram=[errors if i == bucket else 0 for i in range(BUCKET_COUNT)],
                )
            )
    MetricRollup.objects.bulk_create(rows)


@pytest.fixture
def ops(registered_model, scientist, make_user, sklearn_model):
    """Deployment ``<model>-prod``: v2 live on green, v1 warm on blue, v3 approved and idle."""
    versions = {
        n: upload_version(registered_model, scientist, sklearn_model, validate=False)
        for n in (1, 2, 3)
    }
    ModelVersion.objects.filter(pk__in=[v.pk for v in versions.values()]).update(
        state=VersionState.APPROVED
    )
    operator = make_user(Role.OPERATOR, "olive")
    deployment = deployment_create(
        name=f"{registered_model.name}-prod",
        model=registered_model,
        environment="production",
        actor=operator,
        bake_seconds=900,
    )
    Slot.objects.filter(deployment=deployment, color=SlotColor.BLUE).update(
        version=versions[1], state=SlotState.READY, url="http://127.0.0.1:1"
    )
    Slot.objects.filter(deployment=deployment, color=SlotColor.GREEN).update(
        version=versions[2], state=SlotState.READY, url="http://127.0.0.1:2"
    )
    Deployment.objects.filter(pk=deployment.pk).update(live_slot=SlotColor.GREEN)
    Rollout.objects.create(
        deployment=deployment,
        version=versions[2],
        previous_version=versions[1],
        kind=RolloutKind.ROLLOUT,
        target_slot=SlotColor.GREEN,
        state=RolloutState.LIVE,
        steps=[{"at": timezone.now().isoformat(), "state": "live", "message": "v2 <b>live</b>"}],
    )
    add_rollups(deployment, 1, 30)
    add_rollups(deployment, 2, 30, errors=1, bucket=70)
    deployment.refresh_from_db()
    return {"deployment": deployment, "versions": versions, "operator": operator}


def users_by_role(make_user):
    return {role: make_user(role, f"u-{role}") for role in ROLES}


# --- deployments ----------------------------------------------------------------------------


def test_anonymous_visitor_is_sent_to_login(client, ops):
    name = ops["deployment"].name
    for url in ("/deployments/", f"/deployments/{name}/", "/batch/", "/batch/new/"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/login/"), url


def test_empty_deployment_list_tells_what_to_do_next(login, make_user):
    html = login(make_user(Role.OPERATOR, "o1")).get("/deployments/").content.decode()
    assert "No deployments yet" in html
    assert "POST /api/v1/deployments/" in html
    html = login(make_user(Role.VIEWER, "v1")).get("/deployments/").content.decode()
    assert "Ask an operator" in html


def test_deployment_pages_render_for_every_role(client, ops, make_user):
    deployment = ops["deployment"]
    for role, user in users_by_role(make_user).items():
        client.force_login(user)
        listing = client.get("/deployments/")
        assert listing.status_code == 200, role
        html = listing.content.decode()
        assert deployment.name in html and "v2" in html and "healthy" in html
        assert_csp_clean(html)

        page = client.get(f"/deployments/{deployment.name}/")
        assert page.status_code == 200, role
        html = page.content.decode()
        assert_csp_clean(html)
        for figure in ("fig-latency", "fig-throughput", "fig-errors", "fig-cost", "fig-drift"):
            assert f'data-figure="{figure}"' in html
            assert f'id="{figure}" type="application/json"' in html
        can_deploy = role in (Role.OPERATOR, Role.ADMIN)
        assert (">Rollback…</button>" in html) == can_deploy, role
        assert (">Roll out</button>" in html) == can_deploy, role
        assert ("Only operators and admins" in html) != can_deploy, role
        # The step log is user data (a message): escaped, never markup.
        assert "v2 &lt;b&gt;live&lt;/b&gt;" in html


def test_list_error_rate_counts_only_the_last_hour(login, ops):
    # 30 minutes of v1 + v2 traffic: 30*(10+10+1) requests, 30 errors.
    html = login(ops["operator"]).get("/deployments/").content.decode()
    assert f"{30 / (30 * 21):.2%}" in html


def test_rollback_confirmation_names_the_live_and_previous_versions(login, ops):
    deployment = ops["deployment"]
    client = login(ops["operator"])
    url = f"/deployments/{deployment.name}/rollback/"
    full = client.get(url)
    assert full.status_code == 200
    question = f"Roll back {deployment.name} from v2 to v1?"
    assert question in full.content.decode()
    assert "<html" in full.content.decode()
    partial = client.get(url, HTTP_HX_REQUEST="true")
    html = partial.content.decode()
    assert question in html and "<html" not in html
    assert 'name="confirm_version" value="1"' in html
    assert "csrfmiddlewaretoken" in html
    assert_csp_clean(html)


@pytest.mark.parametrize("role", [Role.VIEWER, Role.DATA_SCIENTIST, Role.REVIEWER])
def test_rollback_and_rollout_need_the_deploy_capability(client, ops, make_user, role):
    deployment = ops["deployment"]
    client.force_login(make_user(role, f"x-{role}"))
    before = Rollout.objects.count()
    assert client.get(f"/deployments/{deployment.name}/rollback/").status_code == 403
    posted = client.post(
        f"/deployments/{deployment.name}/rollback/confirm/", {"confirm_version": "1"}
    )
    assert posted.status_code == 403
    assert (
        client.post(f"/deployments/{deployment.name}/rollouts/", {"version": "3"}).status_code
        == 403
    )
    assert Rollout.objects.count() == before


def test_rollback_post_needs_csrf_and_calls_the_rollback_service(ops):
    deployment = ops["deployment"]
    client = Client(enforce_csrf_checks=True)
    client.force_login(ops["operator"])
    url = f"/deployments/{deployment.name}/rollback/confirm/"
    refused = client.post(url, {"confirm_version": "1"})
    assert refused.status_code == 403
    assert not Rollout.objects.filter(kind=RolloutKind.ROLLBACK).exists()

    form = client.get(f"/deployments/{deployment.name}/rollback/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    done = client.post(
        url, {"confirm_version": "1", "reason": "p99 regression", "csrfmiddlewaretoken": token}
    )
    assert done.status_code == 302
    assert done["Location"] == f"/deployments/{deployment.name}/"
    rollback = Rollout.objects.get(kind=RolloutKind.ROLLBACK)
    assert rollback.version.number == 1 and rollback.previous_version.number == 2
    assert rollback.reason == "p99 regression"
    assert AuditEvent.objects.filter(
        action="deployment.rollback", actor_id=ops["operator"].pk
    ).exists()
    page = client.get(done["Location"]).content.decode()
    assert f"Rolling {deployment.name} back to v1" in page


def test_rollback_refuses_when_the_confirmed_version_is_no_longer_the_target(login, ops):
    deployment = ops["deployment"]
    response = login(ops["operator"]).post(
        f"/deployments/{deployment.name}/rollback/confirm/", {"confirm_version": "3"}
    )
    assert response.status_code == 409
    html = response.content.decode()
    assert "The rollback you confirmed (to v3) no longer matches" in html
    assert "go back to v1" in html
    assert not Rollout.objects.filter(kind=RolloutKind.ROLLBACK).exists()


def test_rollback_without_a_previous_version_says_so(login, ops):
    deployment = ops["deployment"]
    Slot.objects.filter(deployment=deployment, color=SlotColor.BLUE).update(version=None)
    Rollout.objects.filter(deployment=deployment).update(previous_version=None)
    client = login(ops["operator"])
    page = client.get(f"/deployments/{deployment.name}/").content.decode()
    assert "Rollback…" not in page and "Nothing to roll back to" in page
    confirm = client.get(f"/deployments/{deployment.name}/rollback/").content.decode()
    assert "has no previous version to roll back to" in confirm
    posted = client.post(f"/deployments/{deployment.name}/rollback/confirm/", {})
    assert posted.status_code == 409
    assert not Rollout.objects.filter(kind=RolloutKind.ROLLBACK).exists()


def test_rollout_form_lists_approved_versions_and_starts_a_rollout(login, ops):
    deployment = ops["deployment"]
    client = login(ops["operator"])
    html = client.get(f"/deployments/{deployment.name}/").content.decode()
    options = re.findall(r'<option value="(\d+)">', html)
    assert options == ["3", "1"]  # approved, newest first, not the live v2
    response = client.post(
        f"/deployments/{deployment.name}/rollouts/", {"version": "3", "reason": "better recall"}
    )
    assert response.status_code == 302
    rollout = Rollout.objects.get(deployment=deployment, state=RolloutState.PENDING)
    assert rollout.version.number == 3 and rollout.target_slot == SlotColor.BLUE
    assert rollout.created_by == ops["operator"] and rollout.reason == "better recall"
    # The live step log polls fast while the rollout is active.
    status = client.get(f"/deployments/{deployment.name}/status/").content.decode()
    assert 'data-live-interval="2000"' in status and "Rollout in progress" in status


def test_rollout_errors_are_4xx_with_the_reason(login, ops):
    deployment = ops["deployment"]
    client = login(ops["operator"])
    url = f"/deployments/{deployment.name}/rollouts/"
    missing = client.post(url, {"version": ""})
    assert missing.status_code == 400 and "Pick the version" in missing.content.decode()
    unknown = client.post(url, {"version": "42"})
    assert unknown.status_code == 404 and "has no version 42" in unknown.content.decode()
    live = client.post(url, {"version": "2"})
    assert live.status_code == 409 and "already serves" in live.content.decode()
    ModelVersion.objects.filter(model=deployment.model, number=3).update(
        state=VersionState.IN_REVIEW
    )
    unapproved = client.post(url, {"version": "3"})
    assert unapproved.status_code == 409 and "needs a version that is approved" in (
        unapproved.content.decode()
    )
    assert not Rollout.objects.filter(state=RolloutState.PENDING).exists()


def test_dashboard_endpoint_serves_each_window_and_rejects_unknown_ones(login, ops):
    deployment = ops["deployment"]
    client = login(ops["operator"])
    for window in ("1h", "24h", "7d", "30d"):
        response = client.get(f"/deployments/{deployment.name}/dashboard/?window={window}")
        assert response.status_code == 200, window
        html = response.content.decode()
        assert f'aria-current="page">{window}<' in html
        assert "v1: 300 requests" in html and "v2: 330 requests" in html
        assert "<html" not in html
    bad = client.get(f"/deployments/{deployment.name}/dashboard/?window=2y")
    assert bad.status_code == 400
    assert "window must be one of 1h, 24h, 7d, 30d; got '2y'" in bad.content.decode()
    assert client.get("/deployments/nope/dashboard/").status_code == 404


def test_page_and_dashboard_query_counts_are_bounded(login, ops, django_assert_max_num_queries):
    deployment = ops["deployment"]
    client = login(ops["operator"])
    client.get("/deployments/")  # session/user caches warm
    # Measured: 5, 13, 9, 7 (session + user included); a little room for the navigation.
    with django_assert_max_num_queries(8):
        assert client.get("/deployments/").status_code == 200
    with django_assert_max_num_queries(16):
        assert client.get(f"/deployments/{deployment.name}/").status_code == 200
    with django_assert_max_num_queries(11):
        assert client.get(f"/deployments/{deployment.name}/dashboard/").status_code == 200
    with django_assert_max_num_queries(9):
        assert client.get(f"/deployments/{deployment.name}/status/").status_code == 200


def test_list_query_count_does_not_grow_with_deployments(
    login, ops, make_user, django_assert_max_num_queries
):
    client = login(ops["operator"])
    for n in range(5):
        deployment_create(
            name=f"extra-{n}",
            model=ops["deployment"].model,
            environment="staging",
            actor=ops["operator"],
        )
    client.get("/deployments/")
    with django_assert_max_num_queries(8):
        html = client.get("/deployments/").content.decode()
    assert "extra-4" in html and html.count("not serving yet") == 5


# --- batch ----------------------------------------------------------------------------------


def test_empty_batch_list_tells_what_to_do_next(login, make_user):
    html = login(make_user(Role.DATA_SCIENTIST, "d1")).get("/batch/").content.decode()
    assert "No batch jobs yet" in html and "New batch job" in html
    assert_csp_clean(html)
    html = login(make_user(Role.VIEWER, "v1")).get("/batch/").content.decode()
    assert "No batch jobs yet" in html and "New batch job" not in html


def test_batch_pages_render_for_every_role(client, make_user):
    runners = {Role.DATA_SCIENTIST, Role.OPERATOR, Role.ADMIN}
    for role, user in users_by_role(make_user).items():
        client.force_login(user)
        listing = client.get("/batch/")
        assert listing.status_code == 200, role
        assert_csp_clean(listing.content.decode())
        assert ("New batch job</a>" in listing.content.decode()) == (role in runners), role
        assert client.get("/batch/new/").status_code == (200 if role in runners else 403), role
    assert client.get("/batch/999999/").status_code == 404


def test_batch_create_needs_run_batch(client, make_user):
    for role in (Role.VIEWER, Role.REVIEWER):
        client.force_login(make_user(role, f"b-{role}"))
        assert client.get("/batch/new/").status_code == 403
        assert client.post("/batch/new/", {}).status_code == 403
    assert not BatchJob.objects.exists()


def test_batch_create_form_without_approved_versions_says_so(login, make_user):
    html = login(make_user(Role.OPERATOR, "o2")).get("/batch/new/").content.decode()
    assert "No approved version yet" in html


def test_batch_create_shows_errors_next_to_fields_and_stores_nothing(login, batch_setup):  # noqa: F811
    client = login(batch_setup["owner"])
    form = client.get("/batch/new/").content.decode()
    assert 'value="batchmodel:v:2"' in form and 'value="batchmodel:v:1"' in form
    assert_csp_clean(form)
    for field in ("id_target", "id_file", "id_id_column", "id_probabilities"):
        assert f'<label for="{field}">' in form
    before = stored_files()

    def errors(response):
        return dict(
            re.findall(
                r'<p class="ops-field-error" id="id_(\w+)-error" role="alert">([^<]+)</p>',
                response.content.decode(),
            )
        )

    empty = client.post("/batch/new/", {})
    assert empty.status_code == 400
    assert set(errors(empty)) == {"target", "file"}

    bad_columns = input_frame(5).drop(columns=["income"])
    response = client.post(
        "/batch/new/",
        {"target": "batchmodel:v:1", "file": csv_upload(bad_columns), "id_column": "row_id"},
    )
    assert response.status_code == 400
    assert "income" in errors(response)["file"]

    response = client.post(
        "/batch/new/",
        {"target": "batchmodel:v:1", "file": csv_upload(input_frame(5)), "id_column": "nope"},
    )
    assert response.status_code == 400
    assert "The id column &#x27;nope&#x27; is not in the input." in errors(response)["id_column"]

    response = client.post(
        "/batch/new/", {"target": "batchmodel:v:9", "file": csv_upload(input_frame(5))}
    )
    assert response.status_code == 400 and "target" in errors(response)
    assert not BatchJob.objects.exists()
    assert stored_files() == before


def test_batch_job_runs_and_its_output_downloads_through_the_view(
    login,
    batch_setup,  # noqa: F811
    make_user,
):
    client = login(batch_setup["owner"])
    response = client.post(
        "/batch/new/",
        {"target": "batchmodel:a:" + "x", "file": csv_upload(input_frame(5))},
    )
    assert response.status_code == 400  # no such alias: nothing queued
    response = client.post(
        "/batch/new/",
        {"target": "batchmodel:v:2", "file": csv_upload(input_frame(40)), "id_column": "row_id"},
    )
    assert response.status_code == 302
    job = BatchJob.objects.get()
    assert response["Location"] == f"/batch/{job.pk}/"
    detail = client.get(response["Location"]).content.decode()
    assert "queued" in detail and 'data-live-url="/batch/' in detail and "Cancel job" in detail
    assert client.get(f"/batch/{job.pk}/output/").status_code == 409

    job = run_job_inline(job)
    assert job.state == JobState.SUCCEEDED
    viewer = make_user(Role.VIEWER, "v-batch")
    client.force_login(viewer)
    detail = client.get(f"/batch/{job.pk}/").content.decode()
    assert "Download output (40 rows, Parquet)" in detail
    assert "data-live-url" not in detail and "Cancel job" not in detail
    listing = client.get("/batch/").content.decode()
    assert f"#{job.pk}" in listing and 'value="100"' in listing
    download = client.get(f"/batch/{job.pk}/output/")
    assert download.status_code == 200
    assert download["Content-Disposition"].startswith("attachment;")
    body = b"".join(download.streaming_content)
    import io

    import pandas as pd

    assert pd.read_parquet(io.BytesIO(body)).equals(read_output(job))
    client.logout()
    assert client.get(f"/batch/{job.pk}/output/").status_code == 302


def test_batch_cancel_needs_run_batch_and_csrf(batch_setup, make_user):  # noqa: F811
    client = Client(enforce_csrf_checks=True)
    client.force_login(batch_setup["owner"])
    form = client.get("/batch/new/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    created = client.post(
        "/batch/new/",
        {
            "target": "batchmodel:v:1",
            "file": csv_upload(input_frame(10)),
            "csrfmiddlewaretoken": token,
        },
    )
    assert created.status_code == 302
    job = BatchJob.objects.get()
    assert client.post(f"/batch/{job.pk}/cancel/").status_code == 403  # no token
    viewer_client = Client()
    viewer_client.force_login(make_user(Role.VIEWER, "v-cancel"))
    assert viewer_client.post(f"/batch/{job.pk}/cancel/").status_code == 403
    job.refresh_from_db()
    assert job.state == JobState.QUEUED
    done = client.post(f"/batch/{job.pk}/cancel/", {"csrfmiddlewaretoken": token})
    assert done.status_code == 302
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED
    again = client.post(f"/batch/{job.pk}/cancel/", {"csrfmiddlewaretoken": token})
    assert again.status_code == 409 and "can no longer be cancelled" in again.content.decode()
