"""Health endpoints, request ids in responses and in every log record (JSON lines), and
the web process's Prometheus metrics (not public; summed over gunicorn workers)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from accounts.choices import Role
from core.logging import JsonFormatter, RequestIdFilter

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def test_healthz_is_public_and_says_nothing_else():
    response = Client().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert Client().post("/healthz").status_code == 405


def test_readyz_checks_the_database_and_redis():
    response = Client().get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_readyz_fails_when_redis_is_unreachable(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok" and body["checks"]["redis"].startswith("error")
    assert "127.0.0.1" not in response.content.decode()  # no configuration leaks


# --- request ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent, kept",
    [
        ("0b7c3c6e-2f1e-4c57-9a55-5cfb1b6e0d11", True),
        ("req-42.retry_1:edge", True),
        ("", False),
        ("bad id with spaces", False),
        ('line\nFAKE {"level": "ERROR"}', False),
        ('"><script>', False),
        ("x" * 200, False),
        ("-starts-with-dash", False),
    ],
)
def test_request_ids_are_kept_when_well_formed_else_replaced(sent, kept):
    headers = {"HTTP_X_REQUEST_ID": sent} if sent else {}
    response = Client().get("/healthz", **headers)
    request_id = response["X-Request-ID"]
    if kept:
        assert request_id == sent
    else:
        assert request_id != sent and len(request_id) == 32 and request_id.isalnum()


@pytest.fixture
def json_log():
    """A handler configured like the production console handler, writing to a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield buffer
    root.removeHandler(handler)


def test_every_log_record_of_a_request_carries_its_id_as_json(json_log, make_user, api_for):
    api = api_for(make_user(Role.VIEWER, "vic"))
    response = api.get("/api/v1/models/does-not-exist/", HTTP_X_REQUEST_ID="trace-abc-123")
    assert response.status_code == 404
    assert response["X-Request-ID"] == "trace-abc-123"
    logging.getLogger("modelyard.test").info("outside any request")
    records = [json.loads(line) for line in json_log.getvalue().splitlines() if line.strip()]
    in_request = [r for r in records if r["logger"] == "django.request"]
    assert in_request, records
    for record in in_request:
        assert record["request_id"] == "trace-abc-123"
        assert record["level"] == "WARNING" and record["status_code"] == 404
        assert record["path"] == "/api/v1/models/does-not-exist/" and "timestamp" in record
    outside = [r for r in records if r["logger"] == "modelyard.test"]
    assert outside[0]["request_id"] == "-"


def test_a_forged_request_id_cannot_inject_log_lines(json_log):
    Client().get("/nope-404/", HTTP_X_REQUEST_ID='x\n{"level":"CRITICAL"}')
    lines = [line for line in json_log.getvalue().splitlines() if line.strip()]
    assert all(json.loads(line)["level"] != "CRITICAL" for line in lines)


# --- metrics -------------------------------------------------------------------------------


def test_metrics_are_not_public(make_user, settings):
    settings.MODELYARD_METRICS_TOKEN = "scrape-secret-1234567890"
    anonymous = Client().get("/metrics")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    for header in ("Bearer wrong", "Bearer scrape-secret-123456789", "Token scrape-secret"):
        assert Client().get("/metrics", HTTP_AUTHORIZATION=header).status_code == 401
    viewer = Client()
    viewer.force_login(make_user(Role.OPERATOR, "olive"))
    assert viewer.get("/metrics").status_code == 403


def test_without_a_configured_token_no_bearer_is_accepted(settings):
    settings.MODELYARD_METRICS_TOKEN = ""
    for header in ("Bearer ", "Bearer x", 'Bearer ""'):
        assert Client().get("/metrics", HTTP_AUTHORIZATION=header).status_code == 401


def test_metrics_count_requests_by_route_with_bounded_labels(make_user, settings):
    settings.MODELYARD_METRICS_TOKEN = "scrape-secret-1234567890"
    client = Client()
    client.get("/healthz")
    client.get("/some/random/path/" + "x" * 50)
    client.generic("FOOBAR", "/healthz")
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret-1234567890")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'modelyard_web_http_requests_total{method="GET",status="200",view="healthz"}' in text
    assert 'view="unmatched"' in text and 'method="other"' in text
    assert "x" * 50 not in text and "FOOBAR" not in text
    assert "modelyard_web_http_request_duration_seconds_bucket" in text
    admin = Client()
    admin.force_login(make_user(Role.ADMIN, "ada"))
    assert admin.get("/metrics").status_code == 200


_WORKER = """
import os, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
django.setup()
from django.test import Client
for _ in range({n}):
    Client().get("/healthz", HTTP_HOST="localhost")
"""
_SCRAPER = """
import os, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
django.setup()
from core.metrics import metrics_exposition
print(metrics_exposition()[0].decode())
"""


def test_metrics_are_summed_over_worker_processes(tmp_path):
    """gunicorn runs several workers: with PROMETHEUS_MULTIPROC_DIR each writes its samples
    there and any worker's /metrics reports the sum."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for n in (3, 4):
        subprocess.run(
            [sys.executable, "-c", _WORKER.format(n=n)], env=env, cwd=ROOT, check=True, timeout=120
        )
    scraped = subprocess.run(
        [sys.executable, "-c", _SCRAPER],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    line = next(
        line
        for line in scraped.splitlines()
        if line.startswith("modelyard_web_http_requests_total{") and 'view="healthz"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) == 7.0
