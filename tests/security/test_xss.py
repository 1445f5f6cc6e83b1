"""XSS: names, descriptions, tags, comments, lineage, file names and error messages that
carry markup are rendered escaped on every page of the UI, and in the browsable API.

The pages are found by walking the ``frontend`` URL patterns that exist when the test runs,
so pages added later are tried too; each is requested with the ids of the hostile objects.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import URLPattern, get_resolver

from accounts.choices import Role
from accounts.services import token_create
from batch.models import BatchJob
from deployments.services import deployment_create
from registry.choices import VersionState
from registry.models import ModelVersion, RegisteredModel
from registry.services import version_upload
from registry.services.reviews import version_review
from registry.services.versions import DatasetRef, VersionMetadata

pytestmark = pytest.mark.django_db

SCRIPT = '<script>alert("xss-script")</script>'
ATTR = '"><img src=x onerror=alert("xss-attr")>'
NAME_SAFE = "<img src=x onerror=alert(1)>"  # no "/": passes the file name check as a label
JS_URL = "javascript:alert(document.cookie)"
MARKERS = [SCRIPT, ATTR, NAME_SAFE, "<img src=x onerror", "<script>alert("]


def _assert_escaped(content: bytes, where: str) -> None:
    text = content.decode("utf-8", errors="replace")
    for marker in MARKERS:
        assert marker not in text, f"unescaped {marker!r} in {where}"
    assert not re.search(r"""(href|src|action)\s*=\s*["']?\s*javascript:""", text, re.I), where


@pytest.fixture
def hostile(make_user, scientist, sklearn_model):
    """One of everything the UI shows, each text field carrying markup."""
    model = RegisteredModel.objects.create(
        name="xss-model",
        owner=scientist,
        description=SCRIPT + ATTR,
        team=ATTR,
        tags=[SCRIPT[:64], ATTR[:64]],
        intended_use=SCRIPT,
        limitations=ATTR,
    )
    version = version_upload(
        model=model,
        uploader=scientist,
        artifact=SimpleUploadedFile(NAME_SAFE + ".joblib", sklearn_model.artifact),
        framework="sklearn",
        metadata=VersionMetadata(
            description=SCRIPT,
            params={SCRIPT: ATTR},
            metrics={"auc": 0.9},
            tags=[ATTR[:64]],
            datasets=[DatasetRef(uri=JS_URL, name=SCRIPT), DatasetRef(uri=ATTR)],
            code_repo=JS_URL,
            training_run_id=ATTR,
        ),
        reference=SimpleUploadedFile("ref.csv", sklearn_model.reference_csv),
    )
    ModelVersion.objects.filter(pk=version.pk).update(
        state=VersionState.IN_REVIEW,
        validation_report={"errors": [SCRIPT], "findings": [{"message": ATTR}]},
    )
    reviewer = make_user(Role.REVIEWER, "rory")
    version.refresh_from_db()
    version_review(version=version, reviewer=reviewer, decision="reject", comment=SCRIPT + ATTR)
    operator = make_user(Role.OPERATOR, "olive")
    deployment = deployment_create(
        name="xss-deploy",
        model=model,
        environment="staging",
        actor=operator,
        description=SCRIPT + ATTR,
    )
    admin = make_user(Role.ADMIN, "ada")
    issued = token_create(user=admin, name=SCRIPT[:60])
    job = BatchJob.objects.create(
        model=model,
        requested_version=version,
        input_source="upload",
        input_path="batch-inputs/x.csv",
        input_name=NAME_SAFE + ".csv",
        input_format="csv",
        id_column=ATTR,
        chunk_rows=10,
        state="failed",
        error=SCRIPT + ATTR,
        created_by=scientist,
    )
    client = Client()
    client.force_login(admin)
    return {
        "client": client,
        "model": model,
        "version": version,
        "deployment": deployment,
        "token": issued.token,
        "job": job,
    }


def _page_routes() -> list[tuple[str, URLPattern]]:
    resolver = get_resolver()
    for entry in resolver.url_patterns:
        if getattr(entry, "namespace", None) == "frontend":
            return [(p.name, p) for p in entry.url_patterns if isinstance(p, URLPattern)]
    return []


def _path_for(pattern: URLPattern, objects: dict) -> str:
    route = str(pattern.pattern)
    is_deployment = route.startswith("deployments/")
    values = {
        "name": objects["deployment"].name if is_deployment else objects["model"].name,
        "number": str(objects["version"].number),
        "job_id": str(objects["job"].pk),
        "token_id": str(objects["token"].pk),
    }

    def sub(match: re.Match) -> str:
        return values.get(match["name"], "1")

    return "/" + re.sub(r"<(?:[^>:]+:)?(?P<name>[^>]+)>", sub, route)


def test_every_page_renders_hostile_text_escaped(hostile):
    client = hostile["client"]
    tried = []
    for name, pattern in _page_routes():
        if name in {"logout"}:
            continue
        path = _path_for(pattern, hostile)
        for headers in ({}, {"HTTP_HX_REQUEST": "true"}):  # full page and htmx partial
            response = client.get(path, **headers)
            assert response.status_code < 500, (path, response.status_code)
            _assert_escaped(response.content, f"GET {path} {headers}")
            tried.append((path, response.status_code))
    rendered = {path for path, status in tried if status == 200}
    # The pages that show the hostile objects really rendered them (not all 404s).
    for expected in ("/models/", "/models/xss-model/", "/models/xss-model/versions/1/"):
        assert expected in rendered, tried
    page = client.get("/models/xss-model/").content.decode()
    assert "&lt;script&gt;alert(" in page  # the text is there, escaped


@pytest.mark.parametrize(
    "path",
    [
        "/models/" + quote(SCRIPT, safe="") + "/",
        "/models/xss-model/versions/1/?tab=" + quote(ATTR),
        "/deployments/" + quote(ATTR, safe="") + "/",
        "/batch/?state=" + quote(SCRIPT),
        "/models/?q=" + quote(SCRIPT) + "&tag=" + quote(ATTR),
        "/audit/?action=" + quote(SCRIPT),
    ],
)
def test_error_pages_and_echoed_queries_are_escaped(path, hostile):
    response = hostile["client"].get(path)
    assert response.status_code < 500
    _assert_escaped(response.content, path)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/models/",
        "/api/v1/models/xss-model/",
        "/api/v1/models/xss-model/versions/1/",
        "/api/v1/models/xss-model/versions/1/lineage/",
        "/api/v1/models/" + quote(SCRIPT, safe="") + "/",
        "/api/v1/audit/",
        "/api/v1/batch-jobs/",
        "/api/v1/deployments/xss-deploy/",
    ],
)
def test_browsable_api_renders_hostile_text_escaped(path, hostile):
    response = hostile["client"].get(path, HTTP_ACCEPT="text/html")
    assert response.status_code < 500
    assert response["Content-Type"].startswith("text/html")
    _assert_escaped(response.content, path)


def test_json_answers_are_never_served_as_html(hostile):
    response = hostile["client"].get("/api/v1/models/xss-model/", HTTP_ACCEPT="application/json")
    assert response["Content-Type"].startswith("application/json")
    assert response["X-Content-Type-Options"] == "nosniff"
