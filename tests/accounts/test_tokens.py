from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.choices import Capability, Role
from accounts.models import ApiToken, User
from accounts.services import token_create, token_revoke
from core.models import AuditEvent

pytestmark = pytest.mark.django_db


def _client(key: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return api


def test_token_is_stored_hashed_and_authenticates(scientist):
    issued = token_create(user=scientist, name="ci")
    token = ApiToken.objects.get(pk=issued.token.pk)
    assert issued.key.split(".", 1)[1] not in token.digest
    assert issued.key not in str(ApiToken.objects.filter(pk=token.pk).values().first())
    response = _client(issued.key).get("/api/v1/models/")
    assert response.status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None


@pytest.mark.parametrize("key", ["my_nope.secret", "garbage", "my_.", ""])
def test_bad_token_is_refused_with_401_and_error_body(key, scientist):
    token_create(user=scientist, name="real")
    response = _client(key).get("/api/v1/models/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] in {"authentication_failed", "not_authenticated"}


def test_revoked_and_expired_tokens_are_refused(scientist):
    revoked = token_create(user=scientist, name="old")
    token_revoke(token_id=revoked.token.pk, actor=scientist)
    expired = token_create(
        user=scientist, name="short", expires_at=timezone.now() + timedelta(seconds=1)
    )
    ApiToken.objects.filter(pk=expired.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert "revoked" in _client(revoked.key).get("/api/v1/models/").json()["error"]["message"]
    assert "expired" in _client(expired.key).get("/api/v1/models/").json()["error"]["message"]


def test_token_scopes_limit_the_role(scientist):
    read_only = token_create(user=scientist, name="ro", scopes=[Capability.VIEW])
    response = _client(read_only.key).post("/api/v1/models/", {"name": "x"}, format="json")
    assert response.status_code == 403
    assert "manage_models" in response.json()["error"]["message"]


def test_token_api_shows_key_once_and_revokes(scientist, api_for):
    api = api_for(scientist)
    created = api.post("/api/v1/tokens/", {"name": "pipeline"}, format="json")
    assert created.status_code == 201
    key = created.json()["key"]
    listed = api.get("/api/v1/tokens/").json()["results"]
    assert all("key" not in row for row in listed)
    assert _client(key).get("/api/v1/models/").status_code == 200
    revoke = api.post(f"/api/v1/tokens/{created.json()['id']}/revoke/")
    assert revoke.status_code == 200 and revoke.json()["is_active"] is False
    assert _client(key).get("/api/v1/models/").status_code == 401
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert "token.created" in actions and "token.revoked" in actions


def test_user_cannot_revoke_someone_elses_token(scientist, reviewer, api_for):
    theirs = token_create(user=reviewer, name="theirs")
    response = api_for(scientist).post(f"/api/v1/tokens/{theirs.token.pk}/revoke/")
    assert response.status_code == 404


def test_adduser_prints_token_as_last_line(capsys):
    call_command("adduser", "ci-bot", "--role", "data_scientist", "--token")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("my_")
    assert User.objects.get(username="ci-bot").role == Role.DATA_SCIENTIST
    assert _client(last).get("/api/v1/models/").status_code == 200


def test_adduser_refuses_duplicate_and_unknown_role():
    from django.core.management.base import CommandError

    call_command("adduser", "sam", "--role", "viewer", "--password", "a-long-password-1")
    with pytest.raises(CommandError, match="already exists"):
        call_command("adduser", "SAM", "--role", "viewer")
    with pytest.raises(CommandError):
        call_command("adduser", "kim", "--role", "superhero")


def test_adduser_password_allows_session_login(client):
    call_command("adduser", "pat", "--role", "reviewer", "--password", "a-long-password-1")
    assert client.login(username="pat", password="a-long-password-1")
