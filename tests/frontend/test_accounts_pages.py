from __future__ import annotations

from datetime import date, timedelta

import pytest
from rest_framework.test import APIClient

from accounts.models import ApiToken
from core.models import AuditEvent
from tests.frontend.conftest import assert_csp_clean

pytestmark = pytest.mark.django_db
PASSWORD = "pw-for-tests-only"


def test_login_page_has_labelled_fields(client):
    response = client.get("/login/")
    html = response.content.decode()
    assert response.status_code == 200
    assert '<label for="id_username">' in html and '<label for="id_password">' in html
    assert_csp_clean(html)


def test_login_success_redirects_and_is_audited(client, scientist):
    response = client.post("/login/", {"username": "dana", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/models/"
    event = AuditEvent.objects.get(action="auth.login")
    assert (event.actor_name, event.via) == ("dana", "web")


def test_login_failure_is_audited_without_the_password(client, scientist):
    response = client.post("/login/", {"username": "dana", "password": "wrong-secret"})
    assert response.status_code == 200
    assert "Wrong username or password" in response.content.decode()
    event = AuditEvent.objects.get(action="auth.login_failed")
    assert event.object_repr == "dana" and event.actor_id is None
    assert "wrong-secret" not in str(event.__dict__)


def test_login_respects_next(client, scientist):
    response = client.post(
        "/login/?next=/audit/", {"username": "dana", "password": PASSWORD, "next": "/audit/"}
    )
    assert response["Location"] == "/audit/"


def test_logout_is_post_only_and_audited(login, scientist):
    client = login(scientist)
    assert client.get("/logout/").status_code == 405
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert AuditEvent.objects.filter(action="auth.logout", actor_name="dana").exists()
    assert client.get("/models/").status_code == 302


def test_tokens_page_creates_shows_key_once_and_it_works(login, scientist):
    client = login(scientist)
    html = client.get("/tokens/").content.decode()
    assert "No tokens yet" in html
    assert_csp_clean(html)
    response = client.post("/tokens/", {"name": "ci", "scopes": ["view", "upload"]})
    assert response.status_code == 200
    key = response.context["issued"].key
    html = response.content.decode()
    assert key in html and "shown only once" in html
    assert "no-store" in response["Cache-Control"] or "no-cache" in response["Cache-Control"]
    token = ApiToken.objects.get()
    assert token.scopes == ["upload", "view"]
    assert key not in client.get("/tokens/").content.decode()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/models/").status_code == 200


def test_token_scopes_offered_are_the_roles_own(login, viewer):
    response = login(viewer).get("/tokens/")
    offered = {value for value, _ in response.context["form"].fields["scopes"].choices}
    assert offered == {"view", "manage_tokens"}
    response = login(viewer).post("/tokens/", {"name": "x", "scopes": ["deploy"]})
    assert response.status_code == 400
    assert "scopes" in response.context["form"].errors
    assert not ApiToken.objects.exists()


def test_token_errors_next_to_their_fields(login, scientist):
    client = login(scientist)
    past = (date.today() - timedelta(days=2)).isoformat()
    response = client.post("/tokens/", {"name": "old", "expires_on": past})
    assert response.status_code == 400
    assert "future" in response.context["form"].errors["expires_on"][0]
    assert 'id="id_expires_on_error"' in response.content.decode()
    client.post("/tokens/", {"name": "dup"})
    response = client.post("/tokens/", {"name": "dup"})
    assert response.status_code == 400
    assert "already have an active token" in response.context["form"].errors["name"][0]
    assert ApiToken.objects.count() == 1


def test_revoke_own_token_but_not_someone_elses(login, scientist, viewer):
    from accounts.services import token_create

    mine = token_create(user=scientist, name="mine").token
    theirs = token_create(user=viewer, name="theirs").token
    client = login(scientist)
    html = client.get("/tokens/").content.decode()
    assert "mine" in html and "theirs" not in html
    response = client.post(f"/tokens/{mine.pk}/revoke/", follow=True)
    assert "is revoked" in response.content.decode()
    response = client.post(f"/tokens/{theirs.pk}/revoke/", follow=True)
    assert f"No token with id {theirs.pk}" in response.content.decode()
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.revoked_at is not None and theirs.revoked_at is None
    assert client.get(f"/tokens/{mine.pk}/revoke/").status_code == 405


def test_audit_log_filters_and_paginates(login, scientist, viewer, django_assert_max_num_queries):
    from accounts.services import token_create
    from core.choices import AuditAction
    from core.services import audit_record

    for index in range(60):
        audit_record(actor=scientist, action=AuditAction.TOKEN_CREATED, object_repr=f"t{index}")
    token_create(user=viewer, name="viewer-token")
    client = login(viewer)
    with django_assert_max_num_queries(10):
        response = client.get("/audit/")
    assert response.status_code == 200
    page = response.context["page"]
    assert page.paginator.count == 61 and len(page.object_list) == 50
    assert "Page 1 of 2" in response.content.decode()
    assert_csp_clean(response.content.decode())
    assert login(viewer).get("/audit/", {"actor": "vic"}).context["page"].paginator.count == 1
    assert login(viewer).get("/audit/", {"object": "t59"}).context["page"].paginator.count == 1
    by_action = login(viewer).get("/audit/", {"action": "token.created"}).context["page"]
    assert by_action.paginator.count == 61
    today = date.today()
    assert (
        login(viewer)
        .get("/audit/", {"since": today.isoformat(), "until": today.isoformat()})
        .context["page"]
        .paginator.count
        == 61
    )
    tomorrow = (today + timedelta(days=1)).isoformat()
    empty = login(viewer).get("/audit/", {"since": tomorrow})
    assert "No events match these filters" in empty.content.decode()
    bad = login(viewer).get("/audit/", {"since": "not-a-date"})
    assert bad.status_code == 400


def test_empty_audit_log_says_what_appears(login, viewer):
    html = login(viewer).get("/audit/").content.decode()
    assert "No events yet" in html
