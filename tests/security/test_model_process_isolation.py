"""Model processes hold none of the platform's secrets (issue 14, item 3).

Real processes throughout: a ``bentoml serve`` slot server (its arbiter and its worker), a
batch child predicting a chunk, and the validation child loading hostile pickles. The
parent holds the platform's secrets in its environment while they start, and the tests read
what the processes actually hold: ``/proc/<pid>/environ``, their uid, their connections.
"""

# ruff: noqa: F811 - the imported fixtures are named again as test arguments
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import numpy as np
import psutil
import pytest

from batch.engine import runner
from core.model_process import model_environment, model_process_start, model_user
from deployments.runtime.local import SLOT_ENV, LocalProcessBackend
from deployments.services import LocalBento
from registry.validation.sandbox import SandboxLimits, sandbox_load_and_predict

# A built store with Bentos of two small scikit-learn models (module-scoped).
from tests.deployments.runtime.conftest import (  # noqa: F401
    FEATURES,
    serving_processes,
    store,
    training_data,
)
from tests.registry.validation.conftest import allowlist_hole, probe_modelkit_dir  # noqa: F401
from tests.registry.validation.helpers import probe_pickle

MARKER = f"leak-{uuid.uuid4().hex}"
# What the platform holds, and names it might add later (the allow-list must drop them too).
PLATFORM_SECRETS = {
    "DATABASE_URL": f"postgresql://modelyard:{MARKER}@127.0.0.1:5432/modelyard",
    "REDIS_URL": f"redis://:{MARKER}@127.0.0.1:6379/0",
    "DJANGO_SECRET_KEY": MARKER,
    "MODELYARD_API_TOKEN": MARKER,
    "MODELYARD_FUTURE_SETTING": MARKER,
    "CELERY_BROKER_URL": f"redis://:{MARKER}@127.0.0.1:6379/1",
    "AWS_ACCESS_KEY_ID": MARKER,
    "AWS_SECRET_ACCESS_KEY": MARKER,
    "GOOGLE_APPLICATION_CREDENTIALS": f"/secrets/{MARKER}.json",
    "DJANGO_SECRET_KEY_FILE": f"/run/secrets/{MARKER}",
    "SMTP_PASSWORD": MARKER,
    "GITHUB_TOKEN": MARKER,
}
LIMITS = SandboxLimits(timeout_seconds=60)


def _can_switch_user() -> str:
    """Why model processes cannot run as another user here ('' if they can)."""
    if os.geteuid() != 0:
        return f"the test runs as uid {os.geteuid()}, not root"
    if shutil.which("setpriv") is None:
        return "util-linux setpriv is not installed"
    if model_user() is None:
        return "no model user on this machine"
    return ""


def _can_unshare_network() -> str:
    """Why no network namespace can be made here ('' if it can), probed on its own."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "util-linux unshare is not installed"
    command = [unshare, "--net", "true"]
    if os.geteuid() != 0:
        command = [unshare, "--user", "--map-current-user", "--net", "true"]
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        return "unshare --net fails on this machine (no root, no user namespaces)"
    return ""


@pytest.fixture
def platform_secrets(monkeypatch):
    for name, value in PLATFORM_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MODELYARD_MODEL_USER", raising=False)
    return PLATFORM_SECRETS


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _assert_no_secrets(env: dict[str, str], pid: int) -> None:
    held = sorted(name for name in PLATFORM_SECRETS if name in env)
    assert not held, f"pid {pid} holds {held}"
    assert not [name for name, value in env.items() if MARKER in value], env
    assert "HOME" in env and "PATH" in env  # the real environment was read, not an empty one


def _uid(pid: int) -> int:
    return psutil.Process(pid).uids().real


# --------------------------------------------------------------------------- slot servers


def _slot_processes(backend: LocalProcessBackend, slot_key: str) -> list[psutil.Process]:
    pid = backend.slot_status(slot_key=slot_key).pid
    assert pid is not None
    main = psutil.Process(pid)
    return [main, *main.children(recursive=True)]


@pytest.fixture
def slot_backend(store, shared_tmp):
    # A state dir the model user could reach: its own modes are what keep it out.
    backend = LocalProcessBackend(store["home"], shared_tmp / "state", ready_timeout=60)
    yield backend
    for status in backend.slots():
        backend.slot_stop(slot_key=status.slot_key, timeout=5)
    for proc in serving_processes(shared_tmp / "state"):
        proc.kill()


def test_slot_server_and_its_worker_hold_none_of_the_platforms_secrets(
    platform_secrets,
    slot_backend,
    store,
    training_data,
):
    handle = slot_backend.slot_start(slot_key="churn.blue", bento_tag=store["v1"])

    procs = _slot_processes(slot_backend, "churn.blue")
    # The arbiter and at least its one API worker: the worker loads the model.
    assert len(procs) >= 2, procs
    for proc in procs:
        env = _environ(proc.pid)
        _assert_no_secrets(env, proc.pid)
        assert env[SLOT_ENV].endswith("/churn.blue")  # the mark supervision relies on
        assert env["BENTOML_DO_NOT_TRACK"] == "True"
    # Still a working server: it answers with the model's own predictions.
    matrix, _ = training_data
    response = httpx.post(
        f"{handle.url}/predict",
        json={"instances": [dict(zip(FEATURES, row, strict=True)) for row in matrix[:3]]},
        timeout=30,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == store["models"][1].predict(matrix[:3]).tolist()


@pytest.mark.skipif(bool(_can_switch_user()), reason=_can_switch_user() or "n/a")
def test_slot_server_runs_as_the_model_user_and_cannot_read_platform_files(
    slot_backend,
    store,
    shared_tmp,
):
    secret = shared_tmp / "platform-secret"
    secret.write_text(MARKER)
    secret.chmod(0o640)  # as stored artifacts are

    slot_backend.slot_start(slot_key="churn.green", bento_tag=store["v2"])

    user = model_user()
    assert user is not None
    for proc in _slot_processes(slot_backend, "churn.green"):
        assert _uid(proc.pid) == user.uid, slot_backend.state.load("churn.green").isolation
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert "CapEff:\t0000000000000000" in status
        assert "NoNewPrivs:\t1" in status
    record = slot_backend.slot_status(slot_key="churn.green")
    assert record.running
    # What the record says matches what the process is.
    assert slot_backend.state.load("churn.green").isolation["user"] == user.name
    # The model user cannot read a 0640 platform file, the slots' logs or their records.
    log = slot_backend.state.log_path("churn.green")
    assert "starting scorer:v2" in log.read_text()
    for path in (secret, log, slot_backend.state.record_path("churn.green")):
        check = model_process_start(argv=["/bin/cat", str(path)], home=shared_tmp / "probe")
        assert check.confinement.user == user
        result = subprocess.run(check.argv, env=check.env, cwd=check.cwd, capture_output=True)
        assert result.returncode != 0, path
        assert b"Permission denied" in result.stderr, result.stderr


# --------------------------------------------------------------------------- batch children


@pytest.fixture
def passable_media_root(settings):
    """The storage root as a real install has it (0755 from mkdir), not the test's 0700."""
    root = Path(settings.MEDIA_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    mode = root.stat().st_mode & 0o7777
    root.chmod(0o711)
    yield root
    root.chmod(mode)


def _stage_chunk(folder: Path, matrix: np.ndarray) -> tuple[Path, Path]:
    """A staged input as the worker writes it (0640, the platform's) and the chunk folder."""
    import pyarrow as pa

    staged = folder / "staged"
    staged.mkdir(mode=0o755)
    chunks = folder / "chunks"
    chunks.mkdir(mode=0o700)
    table = pa.table({name: matrix[:, i] for i, name in enumerate(FEATURES)})
    path = staged / "chunk-000000.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    path.chmod(0o640)
    return path, chunks / ".chunk-000000.arrow.tmp"


def test_batch_child_holds_no_secrets_and_still_predicts_its_chunk(
    platform_secrets,
    passable_media_root,
    store,
    training_data,
    shared_tmp,
):
    import pyarrow as pa

    # The folder a killed worker's child left behind (its worker pid is gone).
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = Path(tempfile.gettempdir()) / f"modelyard-batch-child-{gone.pid}-left"
    orphan.mkdir()
    bento = LocalBento(tag=store["v1"], home=Path(store["home"]))
    child = runner.BatchChild(bento=bento, start_timeout=120)
    assert not orphan.exists()
    try:
        env = _environ(child.proc.pid)
        _assert_no_secrets(env, child.proc.pid)
        assert env["OMP_NUM_THREADS"] == "1"
        assert Path(env["HOME"]) == child.folder and env["TMPDIR"] == str(child.folder)
        reason = _can_switch_user()
        if not reason:
            assert _uid(child.proc.pid) == model_user().uid, child.confinement
        matrix, _ = training_data
        job = shared_tmp / "job"
        job.mkdir(mode=0o755)
        staged, output = _stage_chunk(job, matrix[:50])
        before = staged.stat()

        summary = child.chunk_run(
            timeout=60,
            input_path=staged,
            batch_index=0,
            rows=50,
            output_path=output,
            id_column="",
            probabilities=False,
        )

        assert summary["rows"] == 50
        written = pa.ipc.open_file(pa.memory_map(str(output))).read_all()
        expected = store["models"][1].predict(matrix[:50]).tolist()
        assert written.column("prediction").to_pylist() == expected
        after = staged.stat()
        assert (after.st_gid, after.st_mode) == (before.st_gid, before.st_mode)  # revoked
        info = output.stat()
        assert (info.st_uid, info.st_mode & 0o777) == (os.geteuid(), 0o640)  # reclaimed
        # Two chunks of one staged file in flight: one grant, put back after both.
        chunk = {"batch_index": 0, "rows": 50, "id_column": "", "probabilities": False}
        for suffix in ("a", "b"):
            child.chunk_send(input_path=staged, output_path=job / "chunks" / suffix, **chunk)
        granted_gid = before.st_gid if reason else model_user().gid
        assert staged.stat().st_gid == granted_gid
        assert child.chunk_reply(timeout=60)["rows"] == 50
        assert staged.stat().st_gid == granted_gid  # the second chunk may still open it
        assert child.chunk_reply(timeout=60)["rows"] == 50
        after = staged.stat()
        assert (after.st_gid, after.st_mode) == (before.st_gid, before.st_mode)
    finally:
        child.stop()
    assert not child.folder.exists()


# --------------------------------------------------------------------------- validation


def _probe(path: Path, probe: str, *args) -> Path:
    path.write_bytes(probe_pickle(probe, *args))
    return path


def _targets() -> list[tuple[str, int]]:
    database = urlsplit(os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/x"))
    return [(database.hostname or "127.0.0.1", database.port or 5432)]


# The payloads below run in the child although the real allow-list refuses them: the child
# is handed a modelkit copy whose list has a hole for the test's probes (``allowlist_hole``,
# see tests/registry/validation/probes.py). What is tested is the line behind the list.


@pytest.mark.skipif(bool(_can_unshare_network()), reason=_can_unshare_network() or "n/a")
@pytest.mark.parametrize("target", ["own listener", "postgresql"])
def test_validation_child_cannot_open_a_tcp_connection(allowlist_hole, tmp_path, target):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    if target == "own listener":
        address = listener.getsockname()
    else:
        address = _targets()[0]
        if unquote(address[0]).startswith("/"):  # e.g. devstack's embedded PostgreSQL
            pytest.skip("the test database is reached by a Unix socket here, not over TCP")
    # Proof the target is reachable from outside the sandbox.
    socket.create_connection(address, timeout=5).close()
    if target == "own listener":
        listener.accept()[0].close()

    report = sandbox_load_and_predict(
        artifact_path=_probe(tmp_path / "connect.pkl", "connect", *address),
        fmt="pickle",
        sample_path=None,
        limits=LIMITS,
    )

    assert report.isolation["own_network"] is True, report.isolation
    assert not report.ok
    # The payload ran and its connect() failed (a connection would end in "no predict()").
    assert "OSError: [Errno 101] Network is unreachable" in report.error, report.error
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


def test_validation_child_holds_no_secrets_and_runs_as_the_model_user(
    platform_secrets, allowlist_hole, tmp_path, shared_tmp
):
    secret = shared_tmp / "platform-secret"
    secret.write_text(MARKER)
    secret.chmod(0o640)  # as stored artifacts are

    report = sandbox_load_and_predict(
        artifact_path=_probe(tmp_path / "probe.pkl", "inspect", str(secret)),
        fmt="pickle",
        sample_path=None,
        limits=LIMITS,
    )

    # The probe's findings come back as its "predictions": it really ran in the child.
    assert report.ok, report.error
    seen = json.loads(report.predictions_preview[0])
    env = seen["environ"]
    _assert_no_secrets(env, pid=-1)
    assert MARKER not in report.predictions_preview[0]
    assert env["HOME"] == env["TMPDIR"] != os.environ.get("HOME")
    reason = _can_switch_user()
    if reason:
        pytest.skip(f"environment checked; no user switch here: {reason}")
    user = model_user()
    assert user is not None
    assert (seen["uid"], seen["euid"], seen["gid"]) == (user.uid, user.uid, user.gid)
    assert seen["groups"] == []  # the platform's groups were cleared
    assert report.isolation["user"] == user.name
    assert "CapEff:\t0000000000000000" in seen["status"]
    assert "NoNewPrivs:\t1" in seen["status"]
    assert seen["read"] is None and "PermissionError" in seen["read_error"], seen["read_error"]


# --------------------------------------------------------------------------- the rule


def test_environment_is_an_allow_list_that_refuses_secret_names(platform_secrets, tmp_path):
    env = model_environment(home=tmp_path, threads=1, extra={"BENTOML_HOME": str(tmp_path)})

    assert not set(env) & set(PLATFORM_SECRETS)
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path)
    for name in ("DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "SOMETHING_NEW"):
        with pytest.raises(ValueError, match=name):
            model_environment(home=tmp_path, extra={name: "x"})
