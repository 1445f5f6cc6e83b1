"""The Python client against a real HTTP server: Django's live server on the test database.

No worker runs here, so versions stay where a test puts them (validation is not run):
these tests cover the client's HTTP, error and wait logic; tests/clients/test_cli_stack.py
drives the whole flow against the live stack.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from modelyard_client import ApiError, Client, VersionRef, WaitOutcome

from accounts.choices import Role
from accounts.services import token_create
from deployments.models import Deployment, Rollout
from registry.choices import VersionState
from registry.models import Alias, ModelVersion
from tests.factories import RegisteredModelFactory, UserFactory
from tests.models import train_sklearn_joblib

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server(live_server):
    return live_server.url


def _client(url: str, role: str, username: str) -> Client:
    user = UserFactory(username=username, role=role)
    return Client(url, token_create(user=user, name="ci").key, poll_interval=0.1)


@pytest.fixture
def ci(server):
    return _client(server, Role.DATA_SCIENTIST, "ci-bot")


@pytest.fixture
def model_file(tmp_path, sklearn_model):
    path = tmp_path / "model.joblib"
    path.write_bytes(sklearn_model.artifact)
    return path


def test_push_twice_returns_the_same_version(ci, model_file, tmp_path, sklearn_model):
    RegisteredModelFactory(name="fraud")
    reference = tmp_path / "reference.csv"
    reference.write_bytes(sklearn_model.reference_csv)
    first, created = ci.push(
        "fraud", model_file, framework="sklearn", metadata={"tags": ["ci"]}, reference=reference
    )
    again, created_again = ci.push("fraud", model_file, framework="sklearn")
    assert (created, created_again) == (True, False)
    assert again["number"] == first["number"] == 1
    assert again["artifact_sha256"] == first["artifact_sha256"]
    assert ModelVersion.objects.filter(model__name="fraud").count() == 1

    other = tmp_path / "other.joblib"
    other.write_bytes(train_sklearn_joblib(seed=1).artifact)  # other bytes: a new version
    third, created_third = ci.push("fraud", other, framework="sklearn")
    assert created_third and third["number"] == 2


def test_an_archived_versions_bytes_make_a_new_version(ci, model_file):
    RegisteredModelFactory(name="fraud")
    first, _ = ci.push("fraud", model_file, framework="sklearn")
    ModelVersion.objects.filter(number=first["number"]).update(state=VersionState.ARCHIVED)
    second, created = ci.push("fraud", model_file, framework="sklearn")
    assert created and second["number"] == 2


def test_server_errors_carry_the_servers_message(ci, server, model_file):
    with pytest.raises(ApiError) as missing:
        ci.push("no-such-model", model_file, framework="sklearn")
    assert missing.value.status == 404 and missing.value.code == "not_found"
    assert "no-such-model" in missing.value.message
    assert not missing.value.is_auth

    with pytest.raises(ApiError) as unauthenticated:
        Client(server, "not-a-token").deployments()
    assert unauthenticated.value.status == 401 and unauthenticated.value.is_auth

    viewer = _client(server, Role.VIEWER, "val")
    RegisteredModelFactory(name="fraud")
    with pytest.raises(ApiError) as forbidden:
        viewer.push("fraud", model_file, framework="sklearn")
    assert forbidden.value.status == 403 and forbidden.value.is_auth
    assert "role" in forbidden.value.message.lower()


def test_an_unreachable_server_is_an_api_error_not_a_traceback():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ApiError) as failed:
        Client(f"http://127.0.0.1:{port}", "t").deployments()
    assert failed.value.status == 0 and "Cannot reach" in failed.value.message


@pytest.mark.parametrize(
    ("state", "target", "outcome"),
    [
        (VersionState.VALIDATED, "validated", WaitOutcome.REACHED),
        (VersionState.IN_REVIEW, "validated", WaitOutcome.REACHED),
        (VersionState.INVALID, "validated", WaitOutcome.FAILED),
        (VersionState.REJECTED, "approved", WaitOutcome.FAILED),
        (VersionState.APPROVED, "approved", WaitOutcome.REACHED),
        (VersionState.UPLOADED, "validated", WaitOutcome.TIMEOUT),
        (VersionState.IN_REVIEW, "approved", WaitOutcome.TIMEOUT),
    ],
)
def test_wait_version_outcomes(ci, model_file, state, target, outcome):
    RegisteredModelFactory(name="fraud")
    pushed, _ = ci.push("fraud", model_file, framework="sklearn")
    ModelVersion.objects.filter(number=pushed["number"]).update(state=state)
    seen: list[str] = []
    result = ci.wait_version(VersionRef("fraud", 1), target, timeout=0.5, progress=seen.append)
    assert result.outcome is outcome
    assert seen[0] == f"fraud:1 is {state}"
    if outcome is WaitOutcome.TIMEOUT:
        assert result.seconds >= 0.5 and "after 0.5 s" in result.message


def test_rollout_by_alias_is_resolved_and_recorded(server, model_file):
    ops = _client(server, Role.OPERATOR, "olive")
    owner = UserFactory(username="dana", role=Role.DATA_SCIENTIST)
    model = RegisteredModelFactory(name="fraud", owner=owner)
    Client(server, token_create(user=owner, name="t").key).push(
        "fraud", model_file, framework="sklearn"
    )
    version = ModelVersion.objects.get(model=model, number=1)
    ModelVersion.objects.filter(pk=version.pk).update(state=VersionState.APPROVED)
    Alias.objects.create(model=model, name="champion", version=version, updated_by=owner)
    Deployment.objects.create(
        name="fraud-staging", model=model, environment="staging", created_by=owner
    )
    with pytest.raises(ApiError) as unknown:
        ops.rollout_start("fraud-staging", alias="nope")
    assert unknown.value.status == 404 and "nope" in unknown.value.message
    with pytest.raises(ApiError) as both:
        ops.rollout_start("fraud-staging", version=1, alias="champion")
    assert both.value.status == 400 and both.value.code == "version_or_alias"

    rollout = ops.rollout_start("fraud-staging", alias="champion", reason="ci")
    assert (rollout["version"], rollout["alias"], rollout["state"]) == (1, "champion", "pending")
    assert Rollout.objects.get(pk=rollout["id"]).alias == "champion"
    assert "(alias champion)" in rollout["steps"][0]["message"]


def test_batch_run_queues_a_job_and_an_unfinished_output_is_refused(
    ci, model_file, tmp_path, sklearn_model
):
    RegisteredModelFactory(name="fraud")
    ci.push("fraud", model_file, framework="sklearn")
    ModelVersion.objects.filter(number=1).update(state=VersionState.APPROVED)
    rows = tmp_path / "rows.csv"
    rows.write_bytes(sklearn_model.reference_csv)
    job = ci.batch_run("fraud", version=1, file=rows, probabilities=True)
    assert (job["state"], job["version"] or job["requested_version"]) == ("queued", 1)
    assert job["probabilities"] is True
    waited = ci.wait_batch(job["id"], timeout=0.3)  # no worker here: it stays queued
    assert waited.outcome is WaitOutcome.TIMEOUT and "is queued" in waited.message
    out = tmp_path / "out" / "result.parquet"
    out.parent.mkdir()
    with pytest.raises(ApiError) as refused:
        ci.batch_download(job["id"], out)
    assert refused.value.status == 409 and refused.value.code == "output_not_ready"
    assert not list(out.parent.iterdir())  # neither the file nor a partial one
    with pytest.raises(ApiError) as both:
        ci.batch_run("fraud", version=1, alias="champion", file=rows)
    assert both.value.code == "version_or_alias"


def test_version_ref_parsing():
    assert VersionRef.parse("fraud:3") == VersionRef("fraud", 3)
    assert VersionRef.parse("fraud@3") == VersionRef("fraud", 3)
    assert VersionRef.parse("3", model="fraud") == VersionRef("fraud", 3)
    assert str(VersionRef("fraud", 3)) == "fraud:3"
    for bad in ["fraud", "3", ":3", "fraud:x"]:
        with pytest.raises(ValueError, match="MODEL:NUMBER"):
            VersionRef.parse(bad)


class _BadGateway(BaseHTTPRequestHandler):
    """Answers like a proxy in front of a platform that is down: 502 with an HTML page."""

    def do_GET(self) -> None:
        body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        return None


def test_non_platform_error_bodies_are_summarised():
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _BadGateway)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ApiError) as failed:
            Client(f"http://127.0.0.1:{proxy.server_address[1]}", "t").deployments()
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert failed.value.status == 502 and failed.value.code == "http_error"
    assert failed.value.message == "HTTP 502: <html><body><h1>502 Bad Gateway</h1></body></html>"


def test_concurrent_pushes_of_one_file_make_one_version_and_keep_one_copy(
    ci, model_file, storage_snapshot
):
    from concurrent.futures import ThreadPoolExecutor

    RegisteredModelFactory(name="fraud")
    with ThreadPoolExecutor(4) as pool:  # the live server answers each request in a thread
        results = list(
            pool.map(lambda _: ci.push("fraud", model_file, framework="sklearn"), range(4))
        )
    assert {version["number"] for version, _ in results} == {1}
    assert sorted(created for _, created in results) == [False, False, False, True]
    assert ModelVersion.objects.filter(model__name="fraud").count() == 1
    stored = [path for path in storage_snapshot() if path.endswith("model.joblib")]
    assert len(stored) == 1  # a push that lost the race deleted its copy
