"""Ids that are not numbers: every detail route answers 404 (no such object), never a 500
that leaks a traceback or lets a NUL byte or a fragment reach a query."""

from __future__ import annotations

import pytest

from accounts.choices import Role

pytestmark = pytest.mark.django_db

IDS = ["abc", "1%00", "1%23", "1%3F", "..%2F1", "1.5", "%C3%A9"]
ROUTES = [
    ("post", "/api/v1/tokens/{}/revoke/"),
    ("get", "/api/v1/batch/schedules/{}/"),
    ("patch", "/api/v1/batch/schedules/{}/"),
    ("delete", "/api/v1/batch/schedules/{}/"),
    ("get", "/api/v1/batch-jobs/{}/"),
    ("post", "/api/v1/batch-jobs/{}/cancel/"),
    ("get", "/api/v1/webhooks/{}/"),
    ("delete", "/api/v1/webhooks/{}/"),
]


@pytest.mark.parametrize("method,route", ROUTES)
def test_non_numeric_ids_are_not_found_not_a_crash(method, route, make_user, api_for):
    api = api_for(make_user(Role.ADMIN))
    for raw in IDS:
        response = getattr(api, method)(route.format(raw), {}, format="json")
        assert response.status_code == 404, (route, raw, response.status_code)
        assert b"Traceback" not in response.content
