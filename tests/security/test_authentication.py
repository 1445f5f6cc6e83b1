"""Authentication on every route, and each role's permissions on every state-changing action.

The URL conf is enumerated when the tests are collected, so routes added later (new pages,
new API endpoints) are tried without anyone remembering to list them.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.shortcuts import resolve_url
from django.test import Client
from django.utils.crypto import get_random_string
from rest_framework.test import APIClient

from accounts.choices import Role
from accounts.permissions import ROLE_CAPABILITIES
from accounts.services import token_create, token_revoke
from tests.security.conftest import PUBLIC_ROUTES, url_routes

pytestmark = pytest.mark.django_db

ROUTES = url_routes()
PRIVATE = [route for route in ROUTES if route.name not in PUBLIC_ROUTES]
API = [route for route in PRIVATE if route.path.startswith("/api/v1/")]
PAGES = [route for route in PRIVATE if route.name.startswith("frontend:")]
METHODS = ("get", "post", "put", "patch", "delete")
WRITES = ("post", "put", "patch", "delete")


def _login_redirect(response) -> bool:
    if response.status_code != 302:
        return False
    location = response["Location"]
    return location.startswith(resolve_url(settings.LOGIN_URL)) or location.startswith(
        "/admin/login/"
    )


def test_the_enumeration_sees_the_whole_url_conf():
    names = {route.name for route in ROUTES}
    # One of each family, so a broken walker cannot pass by finding nothing.
    for expected in (
        "api:model-list",
        "api:batch-job-output",
        "admin:index",
        "api-docs",
        "metrics",
    ):
        assert expected in names
    assert any(name.startswith("frontend:") for name in names)
    assert set(PUBLIC_ROUTES) - {"frontend:logout", "frontend:login"} <= names


@pytest.mark.parametrize("route", PRIVATE, ids=lambda route: f"{route.name} {route.path}")
def test_every_non_public_route_refuses_anonymous_clients(route):
    client = Client()
    statuses = {}
    for method in METHODS:
        response = getattr(client, method)(route.path)
        status = statuses[method] = response.status_code
        refused = status in (401, 403) or _login_redirect(response)
        # A method the route lacks may answer 405 (before the sign-in check, for pages with
        # require_POST outside login_required): that says nothing about any object.
        assert refused or status == 405, (
            f"{method.upper()} {route.path} answered {status} to an anonymous client"
        )
        if route.path.startswith("/api/"):
            assert b"results" not in response.content
    # ...but a method the route does implement must have met the sign-in check.
    assert set(statuses.values()) != {405}, statuses


@pytest.mark.parametrize("route", API, ids=lambda route: f"{route.name} {route.path}")
@pytest.mark.parametrize(
    "authorization",
    [
        "Token my_000000000000.not-a-real-secret",
        "Token garbage",
        "Token",
        "Bearer my_000000000000.x",
        "Basic YWRtaW46YWRtaW4=",  # admin:admin
    ],
    ids=["unknown-key", "malformed-key", "no-key", "wrong-scheme", "basic-default-creds"],
)
def test_api_refuses_invalid_credentials(route, authorization):
    response = APIClient().get(route.path, HTTP_AUTHORIZATION=authorization)
    assert response.status_code in (401, 403), (route.path, response.status_code)


def test_revoked_and_expired_tokens_are_refused(make_user):
    from datetime import timedelta

    from django.utils import timezone

    from accounts.models import ApiToken

    user = make_user(Role.ADMIN, "root-like")
    revoked = token_create(user=user, name="old")
    token_revoke(token_id=revoked.token.pk, actor=user)
    expired = token_create(user=user, name="short", expires_at=timezone.now() + timedelta(hours=1))
    ApiToken.objects.filter(pk=expired.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    inactive_user = make_user(Role.ADMIN, "gone")
    inactive = token_create(user=inactive_user, name="left")
    inactive_user.is_active = False
    inactive_user.save()
    for issued, reason in ((revoked, "revoked"), (expired, "expired"), (inactive, "inactive")):
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {issued.key}")
        response = api.get("/api/v1/models/")
        assert response.status_code == 401
        assert reason in response.json()["error"]["message"]


# --- roles --------------------------------------------------------------------------------


def _action_capability(route, method: str) -> tuple[bool, str | None]:
    """(does the route implement the method, capability it requires or None if unlisted)."""
    view_class = getattr(route.callback, "cls", None)
    actions = getattr(route.callback, "actions", None)
    if actions is not None:
        action = actions.get(method)
        if action is None:
            return False, None
    else:
        if not hasattr(view_class, method):
            return False, None
        action = method
    return True, getattr(view_class, "required_capabilities", {}).get(action)


ROLES = [Role.VIEWER, Role.DATA_SCIENTIST, Role.REVIEWER, Role.OPERATOR]


@pytest.mark.parametrize("route", API, ids=lambda route: f"{route.name} {route.path}")
def test_each_role_is_refused_every_write_its_capabilities_do_not_allow(route, make_user, api_for):
    """Every API write, every role: refused (403) unless the role holds the capability the
    action declares; an action that declares none is refused to everyone but admins."""
    clients = {role: api_for(make_user(role, f"u-{role}")) for role in ROLES}
    tried = 0
    for method in WRITES:
        implemented, capability = _action_capability(route, method)
        if not implemented:
            continue
        for role, api in clients.items():
            response = getattr(api, method)(route.path, {}, format="json")
            # A tuple is "any of these" (the service then decides per field or per alias).
            wanted = capability if isinstance(capability, tuple) else (capability,)
            allowed = capability is not None and any(
                item in ROLE_CAPABILITIES[role] for item in wanted
            )
            if not allowed:
                assert response.status_code == 403, (role, method, route.path, response.content)
                assert "error" in response.json()
                tried += 1
            else:
                assert response.status_code != 403 or b"role" not in response.content, (
                    role,
                    method,
                    route.path,
                )
    if route.name.endswith("-list") and route.name in {"api:model-list", "api:webhook-list"}:
        assert tried  # the write routes that matter are really exercised


@pytest.fixture
def page_objects(scientist, sklearn_model):
    """A model named like the sample arguments ("x", version 1), so pages resolve."""
    from tests.factories import RegisteredModelFactory
    from tests.registry.helpers import upload_version

    model = RegisteredModelFactory(name="x", owner=scientist)
    return upload_version(model, scientist, sklearn_model, validate=False)


@pytest.mark.parametrize(
    "route",
    [route for route in PAGES if route.name not in {"frontend:login", "frontend:logout"}],
    ids=lambda route: route.name,
)
def test_viewers_cannot_change_anything_through_the_pages(
    route, make_user, login_client, page_objects
):
    """Every page, POSTed by a viewer with a valid CSRF token: refused, or nothing changed
    (every state change writes an audit event)."""
    from core.models import AuditEvent

    client = login_client(make_user(Role.VIEWER, "vic"))
    token = get_random_string(32)  # a valid CSRF secret: cookie and form agree
    client.cookies[settings.CSRF_COOKIE_NAME] = token
    events = AuditEvent.objects.count()
    response = client.post(
        route.path,
        {"csrfmiddlewaretoken": token, "decision": "approve", "alias": "production"},
        HTTP_X_CSRFTOKEN=token,
    )
    if response.status_code not in (403, 405):
        assert response.status_code < 500, (route.path, response.status_code)
        assert AuditEvent.objects.count() == events, (route.path, response.status_code)
    page_objects.refresh_from_db()
    assert page_objects.state == "uploaded"


def test_data_scientist_cannot_approve_deploy_or_manage_webhooks(
    scientist, api_for, registered_model
):
    api = api_for(scientist)
    review = api.post(
        f"/api/v1/models/{registered_model.name}/versions/1/reviews/",
        {"decision": "approve", "comment": "lgtm"},
        format="json",
    )
    assert review.status_code == 403 and "review" in review.json()["error"]["message"]
    deploy = api.post(
        "/api/v1/deployments/",
        {"name": "d", "model": registered_model.name, "environment": "staging"},
        format="json",
    )
    assert deploy.status_code == 403
    hook = api.post("/api/v1/webhooks/", {"name": "h", "url": "https://x.test/"}, format="json")
    assert hook.status_code == 403


def test_non_admin_roles_cannot_delete_artifacts_through_the_admin_site(
    make_user, registered_model, login_client
):
    """Artifacts and versions can only be removed by an admin; the admin site refuses
    every other role (they are not staff), even with a valid session and CSRF token."""
    from registry.models import RegisteredModel

    for role in ROLES:
        client = login_client(make_user(role, f"adm-{role}"))
        url = f"/admin/registry/registeredmodel/{registered_model.pk}/delete/"
        response = client.post(url, {"post": "yes"})
        assert response.status_code in (302, 403), (role, response.status_code)
        if response.status_code == 302:
            assert response["Location"].startswith("/admin/login/")
    assert RegisteredModel.objects.filter(pk=registered_model.pk).exists()


def test_a_user_cannot_revoke_someone_elses_token(make_user, api_for):
    owner = make_user(Role.ADMIN, "owner")
    issued = token_create(user=owner, name="ci")
    response = api_for(make_user(Role.OPERATOR, "mallory")).post(
        f"/api/v1/tokens/{issued.token.pk}/revoke/"
    )
    assert response.status_code == 404
    issued.token.refresh_from_db()
    assert issued.token.revoked_at is None


def test_token_scopes_narrow_the_role(make_user, api_for, registered_model):
    admin = make_user(Role.ADMIN, "scoped")
    api = api_for(admin, scopes=["view"])
    assert api.get("/api/v1/models/").status_code == 200
    response = api.post("/api/v1/models/", {"name": "newmodel"}, format="json")
    assert response.status_code == 403
