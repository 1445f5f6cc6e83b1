"""Batch jobs on the real stack: web + a Celery worker (prefork, 2 processes) + Redis."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from accounts.services import token_create
from batch.models import BatchChunk, BatchJob
from tests.batch.conftest import input_frame, parquet_bytes

pytestmark = pytest.mark.stack

TERMINAL = ("succeeded", "failed", "cancelled")


def _auth(user) -> dict[str, str]:
    return {"Authorization": f"Token {token_create(user=user, name=f't{time.monotonic_ns()}').key}"}


def _submit(http, stack, headers, frame, **fields) -> dict:
    response = http.post(
        f"{stack.url}/api/v1/batch-jobs/",
        headers=headers,
        data={"model": "batchmodel", "version": "1", "id_column": "row_id", **fields},
        files={"file": ("input.parquet", parquet_bytes(frame))},
    )
    assert response.status_code == 201, response.text
    return response.json()


def _wait(http, stack, headers, job_id, until, timeout=240.0, on_poll=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = http.get(f"{stack.url}/api/v1/batch-jobs/{job_id}/", headers=headers).json()
        if on_poll:
            on_poll(body)
        if until(body):
            return body
        assert time.monotonic() < deadline, (body, stack["worker_log"].read_text()[-4000:])
        time.sleep(0.25)


def _output(http, stack, headers, job_id) -> pd.DataFrame:
    response = http.get(f"{stack.url}/api/v1/batch-jobs/{job_id}/output/", headers=headers)
    assert response.status_code == 200, response.text
    return pd.read_parquet(io.BytesIO(response.content))


def test_million_row_job_output_equals_calling_the_model(live_stack, batch_setup):
    rows = 1_000_000
    frame = input_frame(rows)
    expected = batch_setup["built"][1].trained.model.predict(frame.drop(columns="row_id"))
    headers = _auth(batch_setup["owner"])
    progress: list[tuple[int, int]] = []
    with httpx.Client(timeout=120) as http:
        job = _submit(http, live_stack, headers, frame, chunk_rows="100000")
        assert job["state"] == "queued" and job["version"] is None  # resolved when it starts
        done = _wait(
            http,
            live_stack,
            headers,
            job["id"],
            lambda b: b["state"] in TERMINAL,
            on_poll=lambda b: progress.append((b["rows_done"], b["chunks_done"])),
        )
        assert done["state"] == "succeeded", (done, live_stack["worker_log"].read_text()[-4000:])
        assert done["version"] == 1 and done["bento_tag"] == "batchmodel:v1"
        assert (done["total_rows"], done["rows_done"], done["output_rows"]) == (rows, rows, rows)
        assert (done["chunks_total"], done["chunks_done"], done["progress"]) == (10, 10, 1.0)
        assert done["rows_per_second"] > 0 and done["eta_seconds"] is None
        output = _output(http, live_stack, headers, job["id"])
    assert progress == sorted(progress)  # progress only moves forward
    assert len(output) == rows
    assert np.array_equal(output["row_id"].to_numpy(), np.arange(rows))
    assert np.array_equal(output["prediction"].to_numpy(), expected)
    # Both worker processes took chunks, each in its own long-lived child.
    workers = set(BatchChunk.objects.filter(job_id=job["id"]).values_list("worker", flat=True))
    assert len(workers) >= 1


@pytest.mark.stack_env(MODELYARD_BATCH_LEASE_SECONDS=4)
def test_worker_killed_mid_job_still_writes_every_row_exactly_once(live_stack, batch_setup):
    from batch.services import batch_jobs_sweep

    rows = 500_000
    frame = input_frame(rows, seed=11)
    expected = batch_setup["built"][1].trained.model.predict(frame.drop(columns="row_id"))
    headers = _auth(batch_setup["owner"])
    with httpx.Client(timeout=120) as http:
        job = _submit(http, live_stack, headers, frame, chunk_rows="10000", probabilities="true")
        # Watched in the database, not over HTTP every 0.25 s: a worker that keeps its child
        # busy gets through this job's 50 chunks in about a second.
        deadline = time.monotonic() + 120
        while True:  # aim the kill at a chunk being predicted, once two are done
            progress = BatchJob.objects.get(pk=job["id"])
            running = BatchChunk.objects.filter(job_id=job["id"], state="running").count()
            if progress.chunks_done >= 2 and running:
                break
            assert progress.state in ("queued", "preparing", "running"), progress.state
            assert time.monotonic() < deadline, live_stack["worker_log"].read_text()[-4000:]
            time.sleep(0.005)
        live_stack.worker_kill()  # kill -9: the worker, its pool processes and their children
        killed_at = BatchJob.objects.get(pk=job["id"])
        assert killed_at.state == "running" and killed_at.chunks_done < killed_at.chunks_total
        live_stack.worker_start()
        deadline = time.monotonic() + 240
        while BatchJob.objects.get(pk=job["id"]).state not in TERMINAL:
            # What beat does every 15 s: re-enqueue chunks whose lease expired or whose
            # message died with the worker.
            batch_jobs_sweep()
            assert time.monotonic() < deadline, live_stack["worker_log"].read_text()[-4000:]
            time.sleep(1)
        done = http.get(f"{live_stack.url}/api/v1/batch-jobs/{job['id']}/", headers=headers).json()
        assert done["state"] == "succeeded", done
        output = _output(http, live_stack, headers, job["id"])
    assert len(output) == rows and done["rows_done"] == rows and done["chunks_done"] == 50
    assert np.array_equal(np.sort(output["row_id"].to_numpy()), np.arange(rows))  # once each
    assert np.array_equal(output["row_id"].to_numpy(), np.arange(rows))  # and in order
    assert np.array_equal(output["prediction"].to_numpy(), expected)
    assert {"probability_0", "probability_1"} <= set(output.columns)
    attempts = list(BatchChunk.objects.filter(job_id=job["id"]).values_list("attempts", flat=True))
    print(f"chunks running at the kill: {running}; attempts per chunk: {sorted(attempts)}")
