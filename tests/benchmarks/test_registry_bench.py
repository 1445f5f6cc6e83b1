"""Registry benchmarks: print figures, assert nothing about speed.

Run: make bench   (or: python -m devstack test -- -m benchmark -s tests/benchmarks)
"""

from __future__ import annotations

import io
import shutil
import statistics
import time

import numpy as np
import pytest

from registry.models import ModelVersion
from tests.factories import RegisteredModelFactory
from tests.registry.helpers import upload_payload, upload_version

pytestmark = [pytest.mark.benchmark, pytest.mark.django_db]


def _p(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_list_versions_with_10000_versions(scientist, sklearn_model, api_for):
    model = RegisteredModelFactory(name="big", owner=scientist)
    first = upload_version(model, scientist, sklearn_model, validate=False)
    fields = {
        f.attname: getattr(first, f.attname)
        for f in ModelVersion._meta.concrete_fields
        if f.attname not in ("id", "number", "artifact_path")
    }
    ModelVersion.objects.bulk_create(
        (ModelVersion(**fields, number=n, artifact_path=f"bench/{n}") for n in range(2, 10_001)),
        batch_size=2000,
    )
    assert ModelVersion.objects.filter(model=model).count() == 10_000
    api = api_for(scientist)
    print()
    for label, params in [
        ("first page (50)", {}),
        ("page 100 (50)", {"page": 100}),
        ("state filter", {"state": "uploaded"}),
        ("page_size=500", {"page_size": 500}),
    ]:
        api.get("/api/v1/models/big/versions/", params)  # warm
        timings = []
        started = time.perf_counter()
        for _ in range(100):
            t0 = time.perf_counter()
            response = api.get("/api/v1/models/big/versions/", params)
            timings.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200
        elapsed = time.perf_counter() - started
        print(
            f"list versions, 10,000 in DB, {label:16}: {100 / elapsed:7.1f} req/s  "
            f"p50 {statistics.median(timings):6.1f} ms  p95 {_p(timings, 0.95):6.1f} ms"
        )


def test_upload_throughput_50mb(scientist, api_for, tmp_path):
    import joblib
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(np.arange(20).reshape(10, 2), np.arange(10))
    # A real model object carrying 50 MB of numpy weights (joblib stores them raw).
    model.coef_ = np.random.default_rng(0).standard_normal(50 * 1024 * 1024 // 8)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    artifact = buffer.getvalue()
    size_mb = len(artifact) / 1024**2
    source = tmp_path / "artifact.joblib"
    source.write_bytes(artifact)

    copies = []
    for i in range(3):
        t0 = time.perf_counter()
        shutil.copyfile(source, tmp_path / f"copy-{i}")
        copies.append(time.perf_counter() - t0)
    RegisteredModelFactory(name="heavy", owner=scientist)
    api = api_for(scientist)
    uploads = []
    for _ in range(3):
        payload = upload_payload(artifact)
        t0 = time.perf_counter()
        response = api.post("/api/v1/models/heavy/versions/", payload, format="multipart")
        uploads.append(time.perf_counter() - t0)
        assert response.status_code == 201, response.content[:500]
    copy_mbs = size_mb / statistics.median(copies)
    upload_mbs = size_mb / statistics.median(uploads)
    print(
        f"\nupload {size_mb:.1f} MB joblib through the API: {upload_mbs:7.1f} MB/s "
        f"(median of 3); plain file copy: {copy_mbs:7.1f} MB/s; "
        f"ratio upload/copy = {upload_mbs / copy_mbs:.3f}"
    )
