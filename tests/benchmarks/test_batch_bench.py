"""Batch throughput: a 1,000,000-row job against model.predict over the same data.

Run: .venv/bin/python -m devstack test -- -m benchmark -s tests/benchmarks/test_batch_bench.py
(prints figures; asserts only correctness, never speed)

For each model, in the same run and on the same machine:
- ``predict``: ``model.predict`` on the frame already in memory, one process (timed again
  right before and after each job; a job is compared with the mean of those two);
- ``read+predict+write``: the same file read, predicted and written as Parquet, one process
  (the single-process equivalent of a batch job);
- ``batch``: the job over HTTP, with 1 and then 2 worker processes (their children warmed
  by small jobs first, as on a running platform), three runs each, the median reported:
  end to end (from submission, the upload of the Parquet bytes included, their encoding
  not, to a succeeded job), the job alone (its row created, i.e. the input stored and
  checked, to its output stored: what a job over a server path takes), the rows/s the job
  reports itself (running to succeeded, as the API and UI show it) and the chunk phase
  (first chunk claimed to last chunk counted); chunks of 100,000 rows and of the default
  size for this input.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from batch.models import BatchJob
from deployments.choices import BuildState
from deployments.integrations.bentoml import bento_build
from deployments.models import Build
from registry.choices import VersionState
from registry.models import ModelVersion
from registry.services.artifacts import artifact_store
from tests.batch.conftest import (  # noqa: F401 - fixtures
    _signature,
    batch_bentos,
    batch_setup,
    input_frame,
    parquet_bytes,
)
from tests.batch.test_stack import _auth, _output
from tests.models import train_sklearn_joblib

pytestmark = [pytest.mark.benchmark, pytest.mark.stack]

ROWS = 1_000_000


def _forest_version(setup, home: Path, folder: Path):
    """v3: a small random forest (30 trees, depth 10), heavier to predict than v1."""
    from sklearn.ensemble import RandomForestClassifier

    trained = train_sklearn_joblib(
        seed=2, estimator=RandomForestClassifier(n_estimators=30, max_depth=10, random_state=0)
    )
    artifact = folder / "v3.joblib"
    artifact.write_bytes(trained.artifact)
    result = bento_build(
        home=home,
        model_name="batchmodel",
        version=3,
        artifact_path=artifact,
        framework="sklearn",
        fmt="joblib",
        feature_names=None,
        log_path=folder / "build.log",
    )
    stored = artifact_store(local_path=artifact, folder="artifacts", basename="model.joblib")
    version = ModelVersion.objects.create(
        model=setup["model"],
        number=3,
        state=VersionState.APPROVED,
        created_by=setup["owner"],
        framework="sklearn",
        artifact_format="joblib",
        safe_format=False,
        artifact_path=stored.path,
        artifact_sha256=stored.sha256,
        artifact_size=stored.size,
        signature=_signature(trained),
    )
    Build.objects.create(version=version, state=BuildState.SUCCEEDED, bento_tag=result.bento_tag)
    return trained


def _one_process(model, frame: pd.DataFrame, folder: Path) -> tuple[float, float]:
    features = frame.drop(columns="row_id")
    started = time.perf_counter()
    model.predict(features)
    predict = time.perf_counter() - started
    source = folder / "input.parquet"
    frame.to_parquet(source, index=False)
    started = time.perf_counter()
    read = pd.read_parquet(source)
    out = pd.DataFrame(
        {"row_id": read["row_id"], "prediction": model.predict(read.drop(columns="row_id"))}
    )
    out.to_parquet(folder / "output.parquet", index=False)
    return predict, time.perf_counter() - started


def _predict_seconds(model, features: pd.DataFrame) -> float:
    started = time.perf_counter()
    model.predict(features)
    return time.perf_counter() - started


def _workers(stack, concurrency: int) -> None:
    stack.worker_kill()
    stack.worker_starts += 1
    stack._spawn(
        "worker",
        [
            "-m", "celery", "-A", "config", "worker", "--pool", "prefork",
            "--concurrency", str(concurrency), "--queues", "batch,builds,default",
            "--loglevel", "INFO", "--hostname", f"bench{stack.worker_starts}@%h",
            "--without-heartbeat", "--without-gossip", "--without-mingle",
        ],
    )  # fmt: skip


def _job(
    http, stack, headers, payload: bytes, version, chunk_rows: int | None = 100_000
) -> tuple[float, dict[str, float], BatchJob]:
    # The Parquet bytes are made before the clock starts: encoding the test's frame is the
    # client's work, and the one-process baseline does not count writing its input either.
    started = time.perf_counter()
    response = http.post(
        f"{stack.url}/api/v1/batch-jobs/",
        headers=headers,
        data={
            "model": "batchmodel",
            "version": str(version),
            "id_column": "row_id",
            **({"chunk_rows": str(chunk_rows)} if chunk_rows else {}),  # None: the default
        },
        files={"file": ("input.parquet", payload)},
    )
    upload = time.perf_counter() - started
    assert response.status_code == 201, response.text
    job = response.json()
    # Polled in the database, once a second: the job's times come from its own timestamps,
    # and an authenticated API request every 0.25 s took CPU from the child being measured.
    deadline = time.monotonic() + 600
    while BatchJob.objects.get(pk=job["id"]).state not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, "the batch job did not finish in 10 minutes"
        time.sleep(1.0)
    row = BatchJob.objects.get(pk=job["id"])
    assert row.state == "succeeded", row.error
    chunks = list(row.chunks.order_by("started_at"))
    first, last = chunks[0].started_at, max(c.finished_at for c in chunks)
    phases = {
        "chunk work (mean)": sum(c.seconds for c in chunks) / len(chunks),
        "upload+check": upload,
        "prepare": (row.started_at - row.created_at).total_seconds(),
        "chunks": (last - first).total_seconds(),
        "join": (row.finished_at - last).total_seconds(),
        "job": (row.finished_at - row.created_at).total_seconds(),
        # What the job itself reports (its rows/s in the API and UI): running to finished.
        "job as reported": (row.finished_at - row.started_at).total_seconds(),
    }
    # The job's own time (submission stored → output stored), without HTTP polling.
    return upload + (row.finished_at - row.created_at).total_seconds(), phases, row


def test_batch_throughput_against_model_predict(live_stack, batch_setup, bento_dirs):  # noqa: F811
    frame = input_frame(ROWS)
    payload, warm = parquet_bytes(frame), parquet_bytes(input_frame(100_000, seed=1))
    headers = _auth(batch_setup["owner"])
    with tempfile.TemporaryDirectory() as tmp:
        forest = _forest_version(batch_setup, bento_dirs["home"], Path(tmp))
        models = {1: batch_setup["built"][1].trained.model, 3: forest.model}
        names = {1: "logistic regression pipeline", 3: "random forest (30 trees, depth 10)"}
        lines = []
        with httpx.Client(timeout=300) as http:
            for number, model in models.items():
                predict, single = _one_process(model, frame, Path(tmp))
                features = frame.drop(columns="row_id")
                _MODELS[number] = (model, features)
                expected = model.predict(features)
                lines.append(f"\n{names[number]} (v{number}), {ROWS:,} rows, 4 features:")
                lines.append(f"  model.predict, in memory        {ROWS / predict:>12,.0f} rows/s")
                lines.append(f"  read+predict+write, 1 process   {ROWS / single:>12,.0f} rows/s")
                for workers in (1, 2):
                    _workers(live_stack, workers)
                    # Warm every worker process's child: many chunks, enough work that
                    # each process gets some (the process that prepares a job runs its
                    # chunks too; with tiny warm-up chunks it ran them all, the second
                    # process stayed cold and its model load, 2.7 s, landed in the
                    # measured job).
                    for _ in range(workers + 1):
                        _job(http, live_stack, headers, warm, number, chunk_rows=2_000)
                    for chunk_rows in (100_000, None):
                        runs = [
                            _measured(http, live_stack, headers, payload, number, chunk_rows)
                            for _ in range(REPEATS)
                        ]
                        for _, _, job in runs:
                            output = _output(http, live_stack, headers, job.pk)
                            assert len(output) == ROWS
                            assert np.array_equal(output["prediction"].to_numpy(), expected)
                        lines.extend(_report(runs, workers, chunk_rows, single))
    print("\n".join(lines), file=sys.stderr)


REPEATS = 3  # the machine is shared: each set-up runs three times, the median is reported


def _measured(http, stack, headers, payload, number, chunk_rows):
    """One job, with model.predict timed right before and after it (their mean is the
    baseline it is compared with)."""
    model, features = _MODELS[number]
    before = _predict_seconds(model, features)
    wall, phases, job = _job(http, stack, headers, payload, number, chunk_rows)
    predict = (before + _predict_seconds(model, features)) / 2
    return predict, {"end to end": wall, **phases}, job


def _report(runs, workers: int, chunk_rows: int | None, single: float) -> list[str]:
    def ratios(key: str) -> tuple[float, float, float]:
        values = sorted(predict / phases[key] for predict, phases, _ in runs)
        return values[len(values) // 2], values[0], values[-1]

    median = sorted(runs, key=lambda run: run[0] / run[1]["end to end"])[len(runs) // 2]
    predict, phases, _ = median
    size = f"{chunk_rows:,}" if chunk_rows else f"{runs[0][2].chunk_rows:,} (the default)"
    lines = [f"  batch, {workers} worker(s), chunks of {size} (median of {len(runs)}):"]
    for key, label in (
        ("end to end", "upload + job (end to end)"),
        ("job", "job: stored input -> output"),
        ("job as reported", "job as it reports (run->done)"),
        ("chunks", "chunk phase"),
    ):
        mid, low, high = ratios(key)
        lines.append(
            f"      {label:30s} {ROWS / (predict / mid):>10,.0f} rows/s = {mid:.2f}x predict "
            f"(runs {low:.2f}-{high:.2f})"
        )
    lines.append(
        f"      median run: adjacent predict {ROWS / predict:,.0f} rows/s, "
        f"{single / phases['end to end']:.2f}x 1-process; seconds: "
        + ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
    )
    return lines


_MODELS: dict[int, tuple] = {}
