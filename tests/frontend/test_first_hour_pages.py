"""What a newcomer meets in the first hour: the API docs signed out, the favicon, the
admin's names, the version page's framework line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.apps import apps
from django.contrib.staticfiles import finders
from django.templatetags.static import static

from tests.frontend.conftest import assert_csp_clean

pytestmark = pytest.mark.django_db

# English plurals Django's "add an s" gets wrong: "Aliass", "Policys", "Breachs".
_BAD_PLURAL = re.compile(r"(ss|[^aeiou]ys|chs|shs|xs)$")


def test_every_project_model_has_a_correct_plural_name():
    wrong = {
        model._meta.label: str(model._meta.verbose_name_plural)
        for model in apps.get_models()
        if model._meta.app_label
        in {"core", "accounts", "registry", "deployments", "batch", "monitoring"}
        and _BAD_PLURAL.search(str(model._meta.verbose_name_plural))
    }
    assert wrong == {}


def test_admin_index_names_aliases_policies_and_deliveries_right(login, admin_user):
    html = login(admin_user).get("/admin/").content.decode()
    for right in ("Aliases", "Monitoring policies", "Webhook deliveries", "Guard breaches"):
        assert right in html
    for wrong in ("Aliass", "Monitoring policys", "Webhook deliverys", "Guard breachs"):
        assert wrong not in html


def test_version_page_names_framework_and_format_once(login, scientist, validated_version):
    html = login(scientist).get("/models/churn/versions/1/").content.decode()
    assert "scikit-learn (pickle/joblib)" not in html
    fmt = validated_version.artifact_format
    assert f"<dd>scikit-learn · {fmt} file</dd>" in html


def test_api_docs_signed_out_is_a_page_that_leads_to_login_and_back(client):
    response = client.get("/api/docs/")
    assert response.status_code == 401
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "Sign in to read the API docs" in html
    assert 'href="/login/?next=/api/docs/"' in html
    assert_csp_clean(html)
    # Its script keeps the API's refusal; signed out, nothing of the API is shown.
    assert client.get("/api/docs/?script=").status_code == 401


def test_login_from_the_docs_page_comes_back_to_the_docs(client, scientist):
    scientist.set_password("docs-Pw-123")
    scientist.save()
    response = client.post(
        "/login/", {"username": scientist.username, "password": "docs-Pw-123", "next": "/api/docs/"}
    )
    assert response.status_code == 302 and response["Location"] == "/api/docs/"
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and "swagger" in docs.content.decode().lower()


def test_favicon_is_a_shipped_icon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 302
    assert response["Location"] == static("frontend/favicon.ico")
    icon = Path(finders.find("frontend/favicon.ico")).read_bytes()
    # An ICO header (reserved 0, type 1, one image) of a 32x32 image: not an empty file.
    assert icon[:6] == b"\x00\x00\x01\x00\x01\x00" and icon[6:8] == b"\x20\x20"
    page = client.get("/login/").content.decode()
    assert f'<link rel="icon" href="{static("frontend/favicon.ico")}"' in page
