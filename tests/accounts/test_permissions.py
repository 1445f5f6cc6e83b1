from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from accounts.choices import Capability, Role
from accounts.permissions import ROLE_CAPABILITIES

pytestmark = pytest.mark.django_db

PUBLIC = {"healthz", "readyz", "admin/login/"}


def _api_routes():
    def walk(patterns, prefix=""):
        for p in patterns:
            if isinstance(p, URLResolver):
                yield from walk(p.url_patterns, prefix + str(p.pattern))
            elif isinstance(p, URLPattern):
                yield prefix + str(p.pattern)

    return sorted({r for r in walk(get_resolver().url_patterns) if r.startswith("api/")})


def _concrete(route: str) -> str:
    import re

    route = re.sub(r"\(\?P<[^>]+>[^)]*\)", "1", route)  # router regex groups
    route = re.sub(r"<int:[^>]+>", "1", route)
    route = re.sub(r"<(str:)?[^>]+>", "x", route)
    return "/" + route.replace("^", "").replace("$", "").replace("\\.", ".")


def test_every_api_route_refuses_anonymous_access():
    anonymous = APIClient()
    routes = _api_routes()
    assert len(routes) > 10
    for route in routes:
        url = _concrete(route)
        for method in ("get", "post"):
            response = getattr(anonymous, method)(url)
            assert response.status_code in (401, 403, 405), (method, url, response.status_code)
            if response.status_code != 405 and url.startswith("/api/v1/"):
                assert set(response.json()["error"]) == {"code", "message", "details"}, url


def test_roles_map_to_expected_capabilities():
    assert Capability.REVIEW not in ROLE_CAPABILITIES[Role.DATA_SCIENTIST]
    assert Capability.UPLOAD not in ROLE_CAPABILITIES[Role.REVIEWER]
    assert Capability.DEPLOY in ROLE_CAPABILITIES[Role.OPERATOR]
    assert ROLE_CAPABILITIES[Role.VIEWER] == {Capability.VIEW, Capability.MANAGE_TOKENS}
    assert ROLE_CAPABILITIES[Role.ADMIN] == set(Capability.values)


@pytest.mark.parametrize(
    "role,status",
    [
        (Role.VIEWER, 403),
        (Role.REVIEWER, 403),
        (Role.OPERATOR, 403),
        (Role.DATA_SCIENTIST, 201),
        (Role.ADMIN, 201),
    ],
)
def test_only_scientists_and_admins_create_models(role, status, make_user, api_for):
    response = api_for(make_user(role)).post(
        "/api/v1/models/", {"name": f"m-{role}"}, format="json"
    )
    assert response.status_code == status
    if status == 403:
        assert role in response.json()["error"]["message"]
