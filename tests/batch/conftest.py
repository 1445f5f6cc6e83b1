"""A built Bento per test session, approved versions pointing at it, and job drivers.

Building a Bento costs seconds, so the two versions' Bentos are built once per session
into the session's BentoML home (shared with the live stack) and every test recreates the
same database rows (model ``batchmodel``, versions 1 and 2 from the same artifacts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.choices import Role
from batch import services
from batch.engine import runner
from batch.models import BatchChunk, BatchJob
from deployments.choices import BuildState
from deployments.integrations.bentoml import bento_build
from deployments.models import Build
from registry.choices import VersionState
from registry.models import ModelVersion, RegisteredModel
from registry.services.artifacts import artifact_store
from tests.factories import UserFactory
from tests.models import FEATURES, TrainedModel, train_sklearn_joblib

MODEL_NAME = "batchmodel"


@dataclass(frozen=True)
class BuiltVersion:
    number: int
    trained: TrainedModel
    artifact: Path
    bento_tag: str


@pytest.fixture(scope="session")
def batch_bentos(bento_dirs, tmp_path_factory) -> dict[int, BuiltVersion]:
    from sklearn.tree import DecisionTreeClassifier

    folder = tmp_path_factory.mktemp("batch-artifacts")
    models = {
        1: train_sklearn_joblib(seed=0),
        2: train_sklearn_joblib(seed=1, estimator=DecisionTreeClassifier(max_depth=3)),
    }
    built = {}
    for number, trained in models.items():
        artifact = folder / f"v{number}.joblib"
        artifact.write_bytes(trained.artifact)
        result = bento_build(
            home=bento_dirs["home"],
            model_name=MODEL_NAME,
            version=number,
            artifact_path=artifact,
            framework="sklearn",
            fmt="joblib",
            feature_names=None,
            log_path=folder / "build.log",
        )
        built[number] = BuiltVersion(number, trained, artifact, result.bento_tag)
    yield built
    runner.children_stop()


def _signature(trained: TrainedModel) -> dict:
    return {
        "inputs": [{"name": name, "dtype": "float64"} for name in FEATURES],
        "n_features": len(FEATURES),
        "feature_names": list(FEATURES),
        "output": {"shape": [5], "dtype": "int64"},
    }


@pytest.fixture
def batch_setup(db, settings, bento_dirs, batch_bentos):
    """Model ``batchmodel`` with approved v1 and v2 whose Bentos are built."""
    settings.MODELYARD_BENTOML_HOME = str(bento_dirs["home"])
    owner = UserFactory(username="dana", role=Role.DATA_SCIENTIST)
    model = RegisteredModel.objects.create(name=MODEL_NAME, owner=owner)
    versions = {}
    for number, built in batch_bentos.items():
        stored = artifact_store(
            local_path=built.artifact, folder="artifacts", basename="model.joblib"
        )
        version = ModelVersion.objects.create(
            model=model,
            number=number,
            state=VersionState.APPROVED,
            created_by=owner,
            framework="sklearn",
            artifact_format="joblib",
            safe_format=False,
            artifact_path=stored.path,
            artifact_sha256=stored.sha256,
            artifact_size=stored.size,
            signature=_signature(built.trained),
        )
        Build.objects.create(version=version, state=BuildState.SUCCEEDED, bento_tag=built.bento_tag)
        versions[number] = version
    return {"model": model, "owner": owner, "versions": versions, "built": batch_bentos}


def input_frame(rows: int, seed: int = 7, with_id: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, rows),
            "income": rng.normal(50_000, 15_000, rows),
            "visits": rng.poisson(3, rows).astype(float),
            "score": rng.uniform(0, 1, rows),
        }
    )
    if with_id:
        frame.insert(0, "row_id", np.arange(rows, dtype=np.int64))
    return frame


def csv_upload(frame: pd.DataFrame, name: str = "input.csv") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, frame.to_csv(index=False).encode())


def parquet_bytes(frame: pd.DataFrame, row_group_size: int | None = None) -> bytes:
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, row_group_size=row_group_size)
    return buffer.getvalue()


def run_job_inline(job: BatchJob) -> BatchJob:
    """Drive a job's steps in this process, in order (what the workers do in parallel)."""
    services.batch_job_prepare(job_id=job.pk)
    for chunk_id in (
        BatchChunk.objects.filter(job=job).order_by("index").values_list("pk", flat=True)
    ):
        services.batch_chunk_run(chunk_id=chunk_id)
    services.batch_job_join(job_id=job.pk)
    return BatchJob.objects.get(pk=job.pk)


def read_output(job: BatchJob) -> pd.DataFrame:
    from django.core.files.storage import default_storage

    with default_storage.open(job.output_path, "rb") as handle:
        return pd.read_parquet(handle)
