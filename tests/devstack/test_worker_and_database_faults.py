"""`make run` under the platform's faults, with predictions flowing (issue 22): the worker
``kill -9``ed while it builds or switches a rollout, PostgreSQL SIGSTOPped for 20 s, the web
server ``kill -9``ed.

Every fault is real, on the stack the ``make_run`` fixture runs; the load is the generator of
tests/devstack/loadgen.py in a process of its own, counting every request. The figures are
printed (``-s``) for the record: seconds of errors, counts, how long recovery took.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from devstack.stackfile import stack_file_read
from tests.devstack.conftest import ROOT
from tests.devstack.test_faults import Load, _kill_9, _started_pid, _wait_line
from tests.devstack.test_stop import _demo_key, _predict_until_ok

API = "/api/v1"


def _failed_summary(results: list[tuple[float, str]]) -> tuple[list, str]:
    failed = [(sent, outcome) for sent, outcome in results if outcome != "200"]
    return (
        failed,
        f"{len(results)} predictions, {len(failed)} failed {sorted({o for _, o in failed})}",
    )


@contextlib.contextmanager
def _load(make_run, key: str, tmp_path: Path) -> Iterator[dict]:
    load = Load(make_run, key, tmp_path / "load.json")
    figures: dict = {}
    try:
        yield figures
    finally:
        figures["results"] = load.stop()


@pytest.fixture(scope="module")
def ops(make_run) -> dict[str, str]:
    """An operator's API token on the stack (deploys, rolls back)."""
    result = make_run.manage("adduser", "ops-faults", "--role", "operator", "--token")
    assert result.returncode == 0, result.stderr
    return {"Authorization": f"Token {result.stdout.strip().splitlines()[-1]}"}


@pytest.fixture
def serving(make_run) -> str:
    key = _demo_key(make_run)
    assert _predict_until_ok(make_run, key).status_code == 200
    return key


def _sql(make_run, query: str, *params) -> list[tuple]:
    """Read the stack's database directly (quicker than a manage.py shell per poll)."""
    url = stack_file_read(make_run.data)["DATABASE_URL"]
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(query, params).fetchall()


def _rollout_state(make_run, rollout_id: int) -> str:
    return _sql(make_run, "SELECT state FROM deployments_rollout WHERE id = %s", rollout_id)[0][0]


def _no_active_rollout(make_run, timeout: float = 240) -> None:
    """Earlier tests' rollouts (the demo's first one) are out of the way."""
    deadline = time.monotonic() + timeout
    while _sql(
        make_run,
        "SELECT r.id FROM deployments_rollout r JOIN deployments_deployment d"
        " ON d.id = r.deployment_id WHERE d.name = 'churn-prod'"
        " AND r.state IN ('pending', 'building', 'starting', 'verifying', 'switching')",
    ):
        assert time.monotonic() < deadline, "a rollout of churn-prod never finished"
        time.sleep(1)


def _live_and_other_version(make_run) -> tuple[int, int]:
    ((live,),) = _sql(
        make_run,
        "SELECT v.number FROM deployments_deployment d JOIN deployments_slot s"
        " ON s.deployment_id = d.id AND s.color = d.live_slot"
        " JOIN registry_modelversion v ON v.id = s.version_id WHERE d.name = 'churn-prod'",
    )
    return live, (2 if live == 1 else 1)


def _rollout_start(make_run, ops, version: int) -> int:
    response = httpx.post(
        f"{make_run.url}{API}/deployments/churn-prod/rollouts/",
        headers=ops,
        json={"version": version},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def _wait_hold(make_run, step: str, timeout: float = 180) -> Path:
    deadline = time.monotonic() + timeout
    while not (holds := list(make_run.pause_dir.glob(f"{step}-*"))):
        assert time.monotonic() < deadline, f"the worker never paused in {step}"
        time.sleep(0.05)
    return holds[0]


def _wait_rollout(make_run, rollout_id: int, states: set[str], timeout: float) -> float:
    started = time.monotonic()
    while (state := _rollout_state(make_run, rollout_id)) not in states:
        assert time.monotonic() - started < timeout, f"rollout {rollout_id} still {state}"
        time.sleep(0.5)
    return time.monotonic() - started


def _worker_died_since(make_run, event_id: int) -> list[str]:
    return [
        message
        for (message,) in _sql(
            make_run,
            "SELECT e.message FROM deployments_deploymentevent e JOIN deployments_deployment d"
            " ON d.id = e.deployment_id WHERE d.name = 'churn-prod' AND e.kind = 'worker_died'"
            " AND e.id > %s ORDER BY e.id",
            event_id,
        )
    ]


def _last_event_id(make_run) -> int:
    return int(_sql(make_run, "SELECT coalesce(max(id), 0) FROM deployments_deploymentevent")[0][0])


def _kill_worker_while_paused(make_run, step: str) -> tuple[int, float]:
    """kill -9 the worker while it holds ``step`` open; the pool child's pid (the lease
    holder) and when it was killed."""
    hold = _wait_hold(make_run, step)
    holder_pid = int(hold.read_text())
    assert psutil.pid_exists(holder_pid)
    _, after = _kill_9(make_run, "worker")
    killed = time.monotonic()
    _wait_line(make_run, "restarted worker", after=after)
    hold.unlink(missing_ok=True)
    return holder_pid, killed


def test_worker_kill_9_while_building_then_while_switching_each_rollout_finishes_with_one_event(
    make_run, serving, ops, tmp_path
):
    _no_active_rollout(make_run)
    live, other = _live_and_other_version(make_run)
    # The version to roll out has not been built on this stack: its build row goes, so the
    # rollout builds (the Bento in the store is reused by the build, which is fine: the
    # worker is killed right after claiming the build, before any of it).
    _sql(
        make_run,
        "DELETE FROM deployments_build b USING registry_modelversion v, registry_registeredmodel m"
        " WHERE b.version_id = v.id AND v.model_id = m.id AND m.name = 'churn' AND v.number = %s"
        " RETURNING b.id",
        other,
    )
    with _load(make_run, serving, tmp_path) as figures:
        # 1. Killed in `building`.
        first_event = _last_event_id(make_run)
        (make_run.pause_dir / "arm-build").touch()
        building = _rollout_start(make_run, ops, other)
        build_holder, killed = _kill_worker_while_paused(make_run, "build")
        _wait_rollout(make_run, building, {"baking", "failed"}, timeout=120)
        build_recovery = time.monotonic() - killed
        assert _rollout_state(make_run, building) == "baking"
        build_events = _worker_died_since(make_run, first_event)

        # 2. Killed in `switching` (the route already flipped, the database not yet).
        second_event = _last_event_id(make_run)
        (make_run.pause_dir / "arm-switching").touch()
        switching = _rollout_start(make_run, ops, live)
        switch_holder, killed = _kill_worker_while_paused(make_run, "switching")
        _wait_rollout(make_run, switching, {"baking", "failed"}, timeout=120)
        switch_recovery = time.monotonic() - killed
        assert _rollout_state(make_run, switching) == "baking"
        switch_events = _worker_died_since(make_run, second_event)
    failed, summary = _failed_summary(figures["results"])
    print(
        f"worker kill -9 in building: baking {build_recovery:.1f} s after the kill; "
        f"in switching: {switch_recovery:.1f} s; {summary}"
    )
    assert len(build_events) == 1, build_events
    assert "build worker died (lease expired at" in build_events[0]
    assert f"/{build_holder})" in build_events[0]
    assert len(switch_events) == 1, switch_events
    assert f"/{switch_holder}) holding rollout {switching}" in switch_events[0]
    assert "in switching" in switch_events[0]
    assert build_recovery < 60 and switch_recovery < 60
    # One rollout active at most, none left behind, and the route is what the database says.
    assert _live_and_other_version(make_run)[0] == live
    assert _predict_until_ok(make_run, serving, timeout=30).status_code == 200
    assert failed == [], summary


def _postgres_processes(make_run) -> list[psutil.Process]:
    postmaster = psutil.Process(_started_pid(make_run, "embedded PostgreSQL"))
    return [postmaster, *postmaster.children(recursive=True)]


@contextlib.contextmanager
def _postgres_stopped(make_run) -> Iterator[None]:
    stopped = _postgres_processes(make_run)
    for proc in stopped:
        proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for proc in stopped:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)


def _timed(method: str, url: str, **kwargs) -> tuple[int | str, float, httpx.Response | None]:
    started = time.monotonic()
    try:
        response = httpx.request(method, url, timeout=60, **kwargs)
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.monotonic() - started, None
    return response.status_code, time.monotonic() - started, response


def test_postgresql_stopped_20_s_under_load_api_answers_503_in_time_and_all_converges(
    make_run, serving, ops, tmp_path
):
    _no_active_rollout(make_run)
    deployment = f"{make_run.url}{API}/deployments/churn-prod/"
    assert httpx.get(deployment, headers=ops, timeout=30).status_code == 200
    rollbacks_before = _sql(
        make_run, "SELECT count(*) FROM deployments_rollout WHERE kind = 'rollback'"
    )
    with _load(make_run, serving, tmp_path) as figures, _postgres_stopped(make_run):
        stopped_at = time.monotonic()
        read = _timed("GET", deployment, headers=ops)
        rollback = _timed(
            "POST", f"{deployment}rollback/", headers=ops, json={"reason": "stall test"}
        )
        time.sleep(max(0.0, 20 - (time.monotonic() - stopped_at)))
    resumed_at = time.monotonic()
    deadline = resumed_at + 60
    while httpx.get(deployment, headers=ops, timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "the API never answered again"
        time.sleep(0.25)
    converged = time.monotonic() - resumed_at
    failed, summary = _failed_summary(figures["results"])
    print(
        f"PostgreSQL stopped 20 s: GET answered {read[0]} in {read[1]:.1f} s, rollback "
        f"{rollback[0]} in {rollback[1]:.1f} s; API 200 again {converged:.1f} s after SIGCONT; "
        f"{summary}"
    )
    for status, seconds, response in (read, rollback):
        assert status == 503 and seconds <= 10.5, (status, seconds)
        assert response is not None and int(response.headers["Retry-After"]) > 0
        assert response.json()["error"]["code"] == "database_unavailable"
    # The refused rollback left nothing: no rollback rollout, the same version live.
    assert _sql(make_run, "SELECT count(*) FROM deployments_rollout WHERE kind = 'rollback'") == (
        rollbacks_before
    )
    assert failed == [], summary
    assert converged < 15


def test_web_kill_9_under_load_api_errors_bounded_and_predictions_all_answered(
    make_run, serving, ops, tmp_path
):
    deployment = f"{make_run.url}{API}/deployments/churn-prod/"
    api: list[tuple[float, int | str]] = []
    with _load(make_run, serving, tmp_path) as figures:
        time.sleep(1)
        pid, after = _kill_9(make_run, "web")
        killed = time.monotonic()
        while time.monotonic() - killed < 60:
            status, _, _ = _timed("GET", deployment, headers=ops)
            api.append((time.monotonic(), status))
            if status == 200 and any(
                "restarted web" in line for line in make_run.devstack_lines()[after:]
            ):
                break
            time.sleep(0.2)
    failed, summary = _failed_summary(figures["results"])
    errors = [at for at, status in api if status != 200]
    window = (errors[-1] - killed) if errors else 0.0
    print(f"web kill -9: API errors for {window:.1f} s ({len(errors)} calls failed); {summary}")
    assert api and api[-1][1] == 200
    assert _started_pid(make_run, "web") != pid
    assert window < 30
    assert failed == [], summary


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """``folder`` made read-only for every process (a read-only bind mount of itself: the
    stack runs as root here, which file modes would not stop)."""
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:  # pragma: no cover - machines without mount rights
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_upload_to_a_read_only_artifact_folder_answers_503_and_leaves_no_file_and_no_row(
    make_run, tmp_path
):
    result = make_run.manage("adduser", "ds-faults", "--role", "data_scientist", "--token")
    assert result.returncode == 0, result.stderr
    headers = {"Authorization": f"Token {result.stdout.strip().splitlines()[-1]}"}
    artifacts = make_run.data / "artifacts"
    versions = "SELECT count(*) FROM registry_modelversion"
    before_rows, before_files = _sql(make_run, versions), _files(artifacts)
    with _read_only(artifacts):
        status, seconds, response = _timed(
            "POST",
            f"{make_run.url}{API}/models/churn/versions/",
            headers=headers,
            data={"framework": "sklearn", "metadata": "{}"},
            files={
                "file": ("model.joblib", (ROOT / "examples/model.joblib").read_bytes()),
                "reference_data": ("reference.csv", (ROOT / "examples/reference.csv").read_bytes()),
            },
        )
    print(f"upload to a read-only artifact folder: {status} in {seconds:.2f} s")
    assert status == 503 and response is not None, status
    assert int(response.headers["Retry-After"]) > 0
    error = response.json()["error"]
    assert error["code"] == "storage_unavailable" and "Read-only file system" in error["message"]
    assert _sql(make_run, versions) == before_rows
    assert _files(artifacts) == before_files


def test_worker_kill_9_during_a_200000_row_batch_job_writes_every_row_exactly_once(
    make_run, tmp_path
):
    import io

    import numpy as np
    import pandas as pd

    result = make_run.manage("adduser", "batch-faults", "--role", "data_scientist", "--token")
    assert result.returncode == 0, result.stderr
    headers = {"Authorization": f"Token {result.stdout.strip().splitlines()[-1]}"}
    rows = 200_000
    rng = np.random.default_rng(22)
    frame = pd.DataFrame(
        {
            "row_id": np.arange(rows, dtype=np.int64),
            "tenure_months": rng.integers(0, 72, rows).astype(float),
            "monthly_charges": rng.uniform(20, 120, rows),
            "support_calls": rng.integers(0, 10, rows).astype(float),
            "contract_years": rng.integers(0, 3, rows).astype(float),
        }
    )
    submitted = httpx.post(
        f"{make_run.url}{API}/batch-jobs/",
        headers=headers,
        data={"model": "churn", "version": "1", "id_column": "row_id", "chunk_rows": "5000"},
        files={"file": ("input.csv", frame.to_csv(index=False).encode())},
        timeout=120,
    )
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    progress = "SELECT state, chunks_done, chunks_total FROM batch_batchjob WHERE id = %s"
    deadline = time.monotonic() + 180
    while True:  # aim the kill at a chunk being predicted, once one is done
        state, done, total = _sql(make_run, progress, job_id)[0]
        running = _sql(
            make_run,
            "SELECT count(*) FROM batch_batchchunk WHERE job_id = %s AND state = 'running'",
            job_id,
        )[0][0]
        if done >= 1 and running:
            break
        assert state in ("queued", "preparing", "running"), state
        assert time.monotonic() < deadline, "the job never ran"
        time.sleep(0.01)
    _, after = _kill_9(make_run, "worker")
    killed = time.monotonic()
    state, done_at_kill, total = _sql(make_run, progress, job_id)[0]
    _wait_line(make_run, "restarted worker", after=after)
    deadline = killed + 240
    while (state := _sql(make_run, progress, job_id)[0][0]) not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, f"batch job still {state}"
        time.sleep(1)
    recovered = time.monotonic() - killed
    output = httpx.get(
        f"{make_run.url}{API}/batch-jobs/{job_id}/output/", headers=headers, timeout=120
    )
    assert output.status_code == 200, output.text
    written = pd.read_parquet(io.BytesIO(output.content))
    print(
        f"worker kill -9 in a {rows}-row batch job ({done_at_kill}/{total} chunks done): "
        f"{state} {recovered:.1f} s after the kill; {len(written)} rows written, "
        f"{written['row_id'].nunique()} distinct ids"
    )
    assert state == "succeeded"
    assert len(written) == rows
    assert np.array_equal(np.sort(written["row_id"].to_numpy()), np.arange(rows))  # once each
