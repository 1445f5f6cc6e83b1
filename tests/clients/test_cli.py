"""The `modelyard` command in-process (``cli.main``) against Django's live server: every
failure is one `modelyard: <message>` line on stderr and a stable exit code, never a
traceback; ``--json`` puts the error body on stdout for scripts.

No worker runs here; tests/clients/test_cli_stack.py drives the whole flow on the stack.
"""

from __future__ import annotations

import json
import socket

import pytest
from modelyard_client.cli import main

from accounts.choices import Role
from accounts.services import token_create
from batch.models import BatchJob
from registry.choices import VersionState
from registry.models import ModelVersion
from tests.clients.test_client import _BadGateway
from tests.factories import RegisteredModelFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def run(live_server, capsys, monkeypatch):
    """``run(role, *args)``: (exit code, stdout, stderr) of the command as that role."""
    monkeypatch.delenv("MODELYARD_URL", raising=False)
    monkeypatch.delenv("MODELYARD_TOKEN", raising=False)
    tokens: dict[str, str] = {}

    def cli(role: str | None, *args: str, url: str | None = None) -> tuple[int, str, str]:
        if role and role not in tokens:
            user = UserFactory(username=f"u-{role}", role=role)
            tokens[role] = token_create(user=user, name="ci").key
        auth = ["--token", tokens[role]] if role else []
        try:
            code = main([*args, "--url", url or live_server.url, *auth])
        except SystemExit as exited:  # argparse's errors leave through sys.exit
            code = int(exited.code or 0)
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    return cli


def _only_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("modelyard: "), err
    return lines[0]


def test_auth_failures_exit_4_with_the_servers_message_and_json_body(run, live_server, capsys):
    code = main(["status", "--url", live_server.url, "--token", "not-a-token", "--json"])
    out, err = capsys.readouterr()
    assert code == 4
    assert "token" in _only_line(err).lower()
    assert json.loads(out)["status"] == 401

    RegisteredModelFactory(name="fraud")
    code, out, err = run(Role.VIEWER, "submit", "fraud:1", "--json")
    assert code == 4 and json.loads(out)["status"] == 403
    assert json.loads(out)["error"]["message"] in _only_line(err)


def test_refused_requests_exit_1_with_the_servers_message(run):
    code, out, err = run(Role.DATA_SCIENTIST, "submit", "nosuch:1", "--json")
    assert code == 1
    body = json.loads(out)
    assert (body["status"], body["error"]["code"]) == (404, "not_found")
    assert _only_line(err) == f"modelyard: {body['error']['message']}"
    code, out, err = run(Role.OPERATOR, "deploy", "nowhere", "--version", "1")
    assert code == 1 and "nowhere" in _only_line(err) and not out


def test_bad_arguments_exit_1_not_2_which_means_rejected(run, tmp_path):
    code, _, err = run(Role.DATA_SCIENTIST, "deploy", "churn-prod")  # argparse's own error
    assert code == 1 and "--version" in err and "--alias" in err
    code, _, err = run(Role.DATA_SCIENTIST, "wait", "fraud:1")
    assert code == 1 and "--for" in _only_line(err)
    model = tmp_path / "model.joblib"
    model.write_bytes(b"not really")
    code, _, err = run(Role.DATA_SCIENTIST, "push", str(model), "--model", "m", "--metadata", "[1")
    assert code == 1 and "--metadata is not valid JSON" in _only_line(err)
    code, _, err = run(Role.DATA_SCIENTIST, "push", str(tmp_path), "--model", "m")
    assert code == 1 and "is not a file" in _only_line(err)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "set MODELYARD_URL"),
        ("127.0.0.1:8000", "not an http(s) URL"),
        ("http://127.0.0.1:1:2", "is not a URL"),
        ("http://127.0.0.1:8000/\x01", "is not a URL"),
    ],
)
def test_a_missing_or_malformed_server_url_is_a_message(run, url, says, capsys):
    code = main(["status", "--url", url] if url else ["status"])
    _, err = capsys.readouterr()
    assert code == 1 and says in _only_line(err), err


def test_an_unreachable_server_or_a_proxys_page_is_a_message(run):
    import threading
    from http.server import ThreadingHTTPServer

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _, err = run(None, "status", url=f"http://127.0.0.1:{port}")
    assert code == 1 and _only_line(err).startswith(
        f"modelyard: Cannot reach http://127.0.0.1:{port}: "
    )
    assert not err.strip().endswith("..")

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _BadGateway)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        code, _, err = run(None, "status", url=f"http://127.0.0.1:{proxy.server_address[1]}")
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert code == 1 and _only_line(err).startswith("modelyard: HTTP 502: <html>")


def test_a_download_into_a_missing_folder_is_refused_before_a_job_is_queued(
    run, tmp_path, sklearn_model
):
    model = RegisteredModelFactory(name="fraud")
    artifact = tmp_path / "model.joblib"
    artifact.write_bytes(sklearn_model.artifact)
    code, out, err = run(Role.DATA_SCIENTIST, "push", str(artifact), "--model", "fraud", "--json")
    assert code == 0 and json.loads(out)["ref"] == "fraud:1", err
    ModelVersion.objects.filter(model=model).update(state=VersionState.APPROVED)
    rows = tmp_path / "rows.csv"
    rows.write_bytes(sklearn_model.reference_csv)
    run_args = ["batch", "run", "--model", "fraud", "--version", "1", "--file", str(rows)]
    missing = tmp_path / "no-such-folder" / "out.parquet"
    code, _, err = run(
        Role.DATA_SCIENTIST, *run_args, "--wait", "--download", str(missing), "--timeout", "1"
    )
    assert code == 1 and "folder does not exist" in _only_line(err)
    code, _, err = run(Role.DATA_SCIENTIST, *run_args, "--download", str(tmp_path / "o.parquet"))
    assert code == 1 and "--download needs --wait" in _only_line(err)
    assert not BatchJob.objects.exists()

    code, out, err = run(Role.DATA_SCIENTIST, *run_args, "--json")  # no --wait: queued, done
    assert code == 0 and json.loads(out)["state"] == "queued", err
    assert BatchJob.objects.count() == 1
