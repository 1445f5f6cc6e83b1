"""Operators create deployments, issue and revoke gateway keys, try a prediction and read
whether a rollback is instant, from the pages."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
from django.utils import timezone

from accounts.choices import Role
from core.models import AuditEvent
from deployments.choices import SlotColor, SlotState
from deployments.models import Deployment, DeploymentKey, Slot
from frontend.example_rows import example_rows
from gateway.routes import deployment_key_hash
from registry.models import ModelVersion
from tests.frontend.conftest import assert_csp_clean
from tests.frontend.test_operations_pages import ops  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db


# --- create ---------------------------------------------------------------------------------


def test_operator_creates_a_deployment_from_the_page(login, ops, registered_model):  # noqa: F811
    client = login(ops["operator"])
    page = client.get("/deployments/")
    assert 'href="/deployments/new/"' in page.content.decode()
    form = client.get("/deployments/new/")
    assert form.status_code == 200
    assert_csp_clean(form.content.decode())
    response = client.post(
        "/deployments/new/",
        {
            "name": "churn-staging",
            "model": registered_model.name,
            "environment": "staging",
            "bake_seconds": "120",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/deployments/churn-staging/"
    created = Deployment.objects.get(name="churn-staging")
    assert (created.environment, created.bake_seconds) == ("staging", 120)
    assert created.slots.count() == 2
    assert AuditEvent.objects.filter(action="deployment.created", object_repr="churn-staging")


def test_create_reports_every_error_at_once_and_stores_nothing(login, ops):  # noqa: F811
    client = login(ops["operator"])
    before = Deployment.objects.count()
    response = client.post(
        "/deployments/new/", {"name": "", "model": "nope", "environment": "moon"}
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "Please correct the 4 fields marked below." in html
    assert html.count('class="field-error"') == 4
    taken = client.post(
        "/deployments/new/",
        {
            "name": ops["deployment"].name.upper(),
            "model": ops["deployment"].model.name,
            "environment": "production",
            "bake_seconds": "300",
        },
    )
    assert taken.status_code == 409
    assert "already exists" in taken.content.decode()
    assert Deployment.objects.count() == before


def test_only_deployers_may_create(client, make_user):
    client.force_login(make_user(Role.DATA_SCIENTIST, "dana"))
    assert client.get("/deployments/new/").status_code == 403
    assert client.post("/deployments/new/", {"name": "x"}).status_code == 403
    assert 'href="/deployments/new/"' not in client.get("/deployments/").content.decode()


# --- keys -----------------------------------------------------------------------------------


def test_operator_issues_a_key_shown_once_and_revokes_it(login, ops):  # noqa: F811
    deployment = ops["deployment"]
    client = login(ops["operator"])
    issued = client.post(f"/deployments/{deployment.name}/keys/", {"name": "checkout"})
    assert issued.status_code == 200 and issued["Cache-Control"] == "no-store"
    html = issued.content.decode()
    key = html.split('id="new-gateway-key" class="token-key">', 1)[1].split("<", 1)[0]
    record = DeploymentKey.objects.get(deployment=deployment, name="checkout")
    assert record.digest == deployment_key_hash(key)
    assert "shown only once" in html
    # Shown once: the page afterwards lists the key by name only.
    detail = client.get(f"/deployments/{deployment.name}/").content.decode()
    assert key not in detail and "checkout" in detail and "Revoke “checkout”" in detail

    revoked = client.post(f"/deployments/{deployment.name}/keys/{record.pk}/revoke/")
    assert revoked.status_code == 200
    record.refresh_from_db()
    assert record.revoked_at is not None
    again = client.post(f"/deployments/{deployment.name}/keys/{record.pk}/revoke/")
    assert again.status_code == 409 and "already revoked" in again.content.decode()


def test_viewers_see_no_keys_and_cannot_issue_any(client, ops, make_user):  # noqa: F811
    deployment = ops["deployment"]
    client.force_login(make_user(Role.VIEWER, "vera"))
    html = client.get(f"/deployments/{deployment.name}/").content.decode()
    assert "Operators and admins issue and revoke" in html and "Issue a key" not in html
    assert client.post(f"/deployments/{deployment.name}/keys/", {"name": "x"}).status_code == 403
    assert not DeploymentKey.objects.filter(deployment=deployment).exists()


# --- try a prediction -----------------------------------------------------------------------


class _ModelSlot:
    """A real HTTP server answering POST /predict with the real trained model, in the
    generated service's wire format (``{"instances": [...]}`` in, ``{"predictions"}`` out)."""

    def __init__(self, model) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.received.append(body)
                try:
                    frame = pd.DataFrame.from_records(body["instances"])
                    answer, status = {"predictions": model.predict(frame).tolist()}, 200
                except (KeyError, ValueError) as exc:
                    answer, status = {"error": {"code": "bad_input", "message": str(exc)}}, 400
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.received: list = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def model_slot(ops, sklearn_model):  # noqa: F811
    slot = _ModelSlot(sklearn_model.model)
    Slot.objects.filter(deployment=ops["deployment"], color=SlotColor.GREEN).update(url=slot.url)
    yield slot
    slot.close()


def test_example_row_lists_the_versions_features_in_order(ops, sklearn_model):  # noqa: F811
    version = ops["versions"][2]
    rows, source = example_rows(version)
    # Not validated in this fixture: the reference sample's columns are what is known.
    assert source == "reference_schema"
    assert list(rows[0]) == list(sklearn_model.frame.columns)
    ModelVersion.objects.filter(pk=version.pk).update(
        contract={"features": [{"name": "b", "type": "integer"}, {"name": "a", "type": "string"}]}
    )
    version.refresh_from_db()
    assert example_rows(version) == ([{"b": 0, "a": ""}], "contract")


def test_operator_tries_a_prediction_through_the_live_slot(login, ops, model_slot, sklearn_model):  # noqa: F811
    deployment = ops["deployment"]
    client = login(ops["operator"])
    detail = client.get(f"/deployments/{deployment.name}/").content.decode()
    assert "Try a prediction" in detail and 'name="rows"' in detail
    row = sklearn_model.frame.iloc[0].to_dict()
    answer = client.post(f"/deployments/{deployment.name}/try/", {"rows": json.dumps(row)})
    assert answer.status_code == 200
    html = answer.content.decode()
    expected = sklearn_model.model.predict(sklearn_model.frame.head(1)).tolist()
    assert "v2 answered HTTP 200" in html and json.dumps(expected[0]) in html
    assert model_slot.received == [{"instances": [row]}]

    refused = client.post(f"/deployments/{deployment.name}/try/", {"rows": '{"nope": 1}'})
    assert refused.status_code == 400 and "refused" in refused.content.decode()
    bad_json = client.post(f"/deployments/{deployment.name}/try/", {"rows": "{age: 3"})
    assert bad_json.status_code == 400 and "Not valid JSON" in bad_json.content.decode()
    too_many = client.post(f"/deployments/{deployment.name}/try/", {"rows": json.dumps([row] * 21)})
    assert too_many.status_code == 400 and "At most 20 rows" in too_many.content.decode()
    assert len(model_slot.received) == 2  # the bad inputs never reached the model


def test_try_needs_the_deploy_capability_and_a_live_slot(client, ops, make_user):  # noqa: F811
    deployment = ops["deployment"]
    client.force_login(make_user(Role.VIEWER, "vera"))
    html = client.get(f"/deployments/{deployment.name}/").content.decode()
    # A viewer sees the example and a curl command with a placeholder, never a key.
    assert "$KEY" in html and 'name="rows"' not in html and "myd_" not in html
    assert client.post(f"/deployments/{deployment.name}/try/", {"rows": "{}"}).status_code == 403
    client.force_login(ops["operator"])
    Slot.objects.filter(deployment=deployment).update(state=SlotState.STOPPED)
    idle = client.post(f"/deployments/{deployment.name}/try/", {"rows": "{}"})
    assert idle.status_code == 409 and "no live slot serving" in idle.content.decode()


# --- rollback confirmation ------------------------------------------------------------------


def test_rollback_confirmation_says_cold_start_when_the_previous_slot_is_not_warm(login, ops):  # noqa: F811
    # The fixture's blue slot is only a database row: no server runs it.
    client = login(ops["operator"])
    html = client.get(f"/deployments/{ops['deployment'].name}/rollback/").content.decode()
    assert "Roll back" in html and "Cold start: v1 no longer runs" in html
    assert "Instant switch" not in html


# --- the actions follow the status -----------------------------------------------------------


def test_actions_partial_never_offers_the_live_version(login, ops):  # noqa: F811
    deployment = ops["deployment"]
    client = login(ops["operator"])
    html = client.get(f"/deployments/{deployment.name}/actions/").content.decode()
    assert html.startswith('<section id="deployment-actions"')
    assert 'data-live-follows="deployment-status"' in html
    assert '<option value="3">' in html and '<option value="2">' not in html
    # v3 went live (the status says so): the next actions answer offers v2, not v3.
    Slot.objects.filter(deployment=deployment, color=SlotColor.BLUE).update(
        version=ops["versions"][3]
    )
    Deployment.objects.filter(pk=deployment.pk).update(live_slot=SlotColor.BLUE)
    html = client.get(f"/deployments/{deployment.name}/actions/").content.decode()
    assert '<option value="2">' in html and '<option value="3">' not in html
    status = client.get(f"/deployments/{deployment.name}/status/").content.decode()
    assert 'data-live-signature="blue:' in status


# --- predictions vs reference ----------------------------------------------------------------


def test_prediction_baseline_is_built_within_a_minute_of_serving(ops, model_slot):  # noqa: F811
    from django.conf import settings as django_settings

    from config.celery_app import app
    from monitoring import selectors as data
    from monitoring.models import DriftProfile
    from monitoring.tasks import prediction_baselines_ensure_task

    deployment = ops["deployment"]
    v2 = ops["versions"][2]
    assert (
        data.prediction_distribution(deployment=deployment, version=2, end=timezone.now())["labels"]
        == []
    )
    # Beat asks every minute, on the monitoring queue.
    scheduled = {e["task"]: e for e in django_settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled["monitoring.prediction_baselines_ensure"]["schedule"] <= 60
    assert app.amqp.router.route({}, "monitoring.prediction_baselines_ensure")["queue"].name == (
        "monitoring"
    )
    outcome = prediction_baselines_ensure_task.apply().get()
    # v2's slot answered with the real model; v1's slot (blue) has no server: not yet.
    assert outcome == {"built": [v2.pk]}
    assert DriftProfile.objects.get(version=v2).prediction is not None
    shown = data.prediction_distribution(deployment=deployment, version=2, end=timezone.now())
    assert shown["labels"] and sum(shown["reference"]) == pytest.approx(1.0)
    asked = len(model_slot.received)
    assert asked >= 1
    # Built once: the next run does not ask v2's slot again.
    assert prediction_baselines_ensure_task.apply().get() == {"built": []}
    assert len(model_slot.received) == asked
