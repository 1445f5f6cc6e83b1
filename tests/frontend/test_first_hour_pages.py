"""What a newcomer meets in the first hour: the API docs signed out, the favicon, the
admin's names, the version page's framework line."""

from __future__ import annotations

import re

import pytest
from django.apps import apps

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
