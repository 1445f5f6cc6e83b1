"""The demo `make run` seeds gives every operations page something to show, and seeding
again adds nothing."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.cache import cache
from django.core.management import call_command

from accounts.models import User
from batch.models import BatchJob
from deployments.models import Deployment, Rollout
from monitoring.models import DriftWindow, MetricRollup, SlotResourceSample
from registry.choices import VersionState
from registry.models import ModelVersion

pytestmark = pytest.mark.django_db


def test_seeded_demo_fills_every_operations_page(tmp_path, settings, client):
    settings.DATA_DIR = tmp_path
    cache.clear()
    out = StringIO()
    call_command("seed_demo", stdout=out)
    printed = out.getvalue()
    assert "Dashboard history for churn-prod (synthetic" in printed
    assert re.search(r"Batch job \d+ queued", printed)
    # Passwords are still generated and printed, never defaults.
    assert re.search(r"olive\s+operator\s+\S{12,}", printed)

    states = dict(ModelVersion.objects.filter(model__name="churn").values_list("number", "state"))
    assert states == {
        1: VersionState.APPROVED,
        2: VersionState.APPROVED,
        3: VersionState.IN_REVIEW,
    }
    deployment = Deployment.objects.get(name="churn-prod")
    assert set(
        MetricRollup.objects.filter(deployment=deployment).values_list("version", flat=True)
    ) == {1, 2}
    assert DriftWindow.objects.filter(deployment=deployment, status="drift", version=2).exists()

    client.force_login(User.objects.get(username="olive"))
    listing = client.get("/deployments/").content.decode()
    assert "churn-prod" in listing
    page = client.get("/deployments/churn-prod/?window=7d").content.decode()
    assert re.search(r"v1: \d+ requests", page) and re.search(r"v2: \d+ requests", page)
    assert re.search(r"\d+ windows; latest status: contract_years \w+", page)
    assert re.search(r"v2: [0-9.e-]+ USD per 1,000 predictions \([0-9.]+ CPU-seconds", page)
    assert "rollout of v1 into the blue slot requested" in page
    assert '<option value="2">v2 (approved)' in page
    batch = client.get("/batch/").content.decode()
    assert "queued" in batch and "No batch jobs yet" not in batch

    rollups = MetricRollup.objects.count()
    samples = SlotResourceSample.objects.count()
    call_command("seed_demo", stdout=StringIO())
    assert MetricRollup.objects.count() == rollups
    assert SlotResourceSample.objects.count() == samples
    assert BatchJob.objects.count() == 1 and Rollout.objects.count() == 1
