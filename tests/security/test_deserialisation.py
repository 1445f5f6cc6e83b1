"""Unsafe deserialisation: request bodies are never unpickled; model artifacts are loaded only
in the sandbox child (validation) or the serving/batch children, never in the web, gateway
or worker process. Proven three ways: hostile pickle bodies sent to the API, a CPython audit
hook that sees every class a pickle resolves in this process while a real model is uploaded
and validated, and a scan of the source of every module those processes import."""

from __future__ import annotations

import ast
import pickle
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from registry.choices import VersionState
from registry.models import ModelVersion
from tests.registry.helpers import upload_payload
from tests.security.conftest import url_routes

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]

# Every class a pickle resolves in this process while recording (sys.addaudithook cannot be
# removed, so one hook for the session, switched by this list).
_RECORDING: list[list[str]] = []


def _hook(event: str, args: tuple) -> None:
    if event == "pickle.find_class" and _RECORDING:
        _RECORDING[-1].append(f"{args[0]}.{args[1]}")


sys.addaudithook(_hook)


class _Recorder:
    def __enter__(self) -> list[str]:
        self.seen: list[str] = []
        _RECORDING.append(self.seen)
        return self.seen

    def __exit__(self, *exc) -> None:
        _RECORDING.remove(self.seen)


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


PICKLE_TYPES = [
    "application/x-python-pickle",
    "application/python-pickle",
    "application/x-pickle",
    "application/octet-stream",
    "application/vnd.python.pickle",
]
WRITES = ["/api/v1/models/", "/api/v1/tokens/", "/api/v1/webhooks/", "/api/v1/batch-jobs/"]


@pytest.mark.parametrize("content_type", PICKLE_TYPES)
@pytest.mark.parametrize("path", WRITES)
def test_pickled_request_bodies_are_refused_unread(
    path, content_type, make_user, api_for, tmp_path
):
    from accounts.choices import Role

    marker = tmp_path / "pwned"
    api = api_for(make_user(Role.ADMIN, "ada"))
    with _Recorder() as resolved:
        response = api.generic("POST", path, pickle.dumps(Exploit(marker)), content_type)
    assert response.status_code == 415, response.content
    assert "Unsupported media type" in response.json()["error"]["message"]
    assert not marker.exists()
    assert resolved == []


def test_no_api_view_has_a_parser_that_could_unpickle():
    from rest_framework.parsers import FileUploadParser, FormParser, JSONParser, MultiPartParser

    from core.api.parsers import CSVTextParser

    # CSVTextParser (the labels endpoint) decodes UTF-8 text and nothing else.
    safe = (JSONParser, FormParser, MultiPartParser, CSVTextParser)
    checked = 0
    for route in url_routes():
        view = getattr(route.callback, "cls", None)
        if view is None or not hasattr(view, "parser_classes"):
            continue
        for parser in view.parser_classes:
            assert issubclass(parser, safe) and not issubclass(parser, FileUploadParser), (
                route.name,
                parser,
            )
        checked += 1
    assert checked > 20


def test_sessions_tasks_and_signing_use_json_not_pickle():
    from config.celery_app import app

    assert settings.SESSION_SERIALIZER == "django.contrib.sessions.serializers.JSONSerializer"
    assert settings.CELERY_ACCEPT_CONTENT == ["json"] and settings.CELERY_TASK_SERIALIZER == "json"
    assert set(app.conf.accept_content) <= {"json", "application/json"}
    assert app.conf.task_serializer == "json" and app.conf.result_serializer == "json"


def test_a_model_is_validated_without_any_pickle_loaded_in_this_process(
    registered_model, scientist, api_for, sklearn_model, settings
):
    """The web request (upload) and the worker's validation run here; the model is loaded
    and run in the sandbox child, so this process resolves no class from the artifact."""
    from registry.services import version_validate

    with _Recorder() as resolved:
        response = api_for(scientist).post(
            "/api/v1/models/churn/versions/",
            upload_payload(sklearn_model.artifact, reference=sklearn_model.reference_csv),
            format="multipart",
        )
        assert response.status_code == 201, response.content
        version = version_validate(version_id=ModelVersion.objects.get().pk)
    assert version.state == VersionState.VALIDATED, version.validation_report
    assert version.signature  # the child really loaded and ran the model
    assert resolved == [], resolved
    # Control: the hook does see a pickle loaded here.
    import io

    import joblib

    with _Recorder() as control:
        joblib.load(io.BytesIO(sklearn_model.artifact))
    assert any("sklearn" in name for name in control)


def test_a_hostile_artifact_never_runs_in_the_web_or_worker_process(
    registered_model, scientist, api_for, tmp_path
):
    import io

    import joblib

    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    joblib.dump({"model": Exploit(marker)}, buffer)
    for name, payload in (
        ("m.pkl", pickle.dumps(Exploit(marker))),
        ("m.joblib", buffer.getvalue()),
    ):
        with _Recorder() as resolved:
            response = api_for(scientist).post(
                "/api/v1/models/churn/versions/",
                {"file": SimpleUploadedFile(name, payload), "framework": "sklearn"},
                format="multipart",
            )
        assert response.status_code == 422, response.content
        assert resolved == []
    assert not marker.exists()
    assert not ModelVersion.objects.exists()


def test_a_reexported_dangerous_global_is_refused_at_upload_naming_it(
    registered_model, scientist, api_for, tmp_path
):
    """attrgetter('system')(xgboost.core.os)(cmd): every name sits inside an allowed package,
    which a package-prefix rule let through; the exact list does not."""
    marker = tmp_path / "pwned"
    glob = b"csklearn.feature_selection._base\nattrgetter\n(Vsystem\ntR(cxgboost.core\nos\ntR"
    payload = glob + f"(Vtouch {marker}\ntR.".encode()

    with _Recorder() as resolved:
        response = api_for(scientist).post(
            "/api/v1/models/churn/versions/",
            {"file": SimpleUploadedFile("m.pkl", payload), "framework": "sklearn"},
            format="multipart",
        )

    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert "sklearn.feature_selection._base.attrgetter" in error["message"]
    finding = error["details"]["findings"][0]
    assert finding["where"] == "opcode offset 0"
    assert resolved == []
    assert not marker.exists()
    assert not ModelVersion.objects.exists()


# --- source scan ----------------------------------------------------------------------------

# Modules that load model artifacts: each runs only in a child process of its own.
LOADERS_ALLOWED = {
    "registry/validation/_child.py",  # the validation sandbox (rlimits, no network)
    "batch/engine/_child.py",  # long-lived batch inference children
    # The one restricted loader: called only by the two children above and the generated
    # services (model processes); the web process imports it for skops_globals only.
    "registry/modelkit/loading.py",
}
UNPICKLER_BASES = {"Unpickler", "_Unpickler", "NumpyUnpickler"}
PROCESS_PACKAGES = [
    "config",
    "core",
    "accounts",
    "registry",
    "deployments",
    "batch",
    "monitoring",
    "frontend",
    "gateway",
]
DANGEROUS_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("_pickle", "loads"),
    ("cPickle", "loads"),
    ("joblib", "load"),
    ("cloudpickle", "load"),
    ("cloudpickle", "loads"),
    ("dill", "load"),
    ("dill", "loads"),
    ("torch", "load"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("shelve", "open"),
    ("marshal", "loads"),
    ("jsonpickle", "decode"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
}


def _dangerous_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if (owner_name, node.func.attr) in DANGEROUS_CALLS:
                found.append(f"{path}:{node.lineno} {owner_name}.{node.func.attr}")
            if node.func.attr == "load" and owner_name in {"np", "numpy"}:
                allow = [k for k in node.keywords if k.arg == "allow_pickle"]
                if not allow or not (
                    isinstance(allow[0].value, ast.Constant) and allow[0].value.value is False
                ):
                    found.append(f"{path}:{node.lineno} np.load without allow_pickle=False")
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                base_name = (
                    base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                )
                if base_name in UNPICKLER_BASES:
                    found.append(f"{path}:{node.lineno} class {node.name}({base_name})")
        if isinstance(node, ast.ImportFrom) and node.module in {"pickle", "joblib", "dill"}:
            names = {alias.name for alias in node.names}
            if names & {"load", "loads", "Unpickler"}:
                found.append(f"{path}:{node.lineno} from {node.module} import {names}")
    return found


def test_no_module_of_the_web_gateway_or_worker_loads_pickles():
    scanned = 0
    offenders = []
    for package in PROCESS_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if "/migrations/" in relative or relative in LOADERS_ALLOWED:
                continue
            offenders += _dangerous_calls(path)
            scanned += 1
    assert scanned > 50
    assert offenders == []


def test_the_scan_catches_what_it_looks_for(tmp_path):
    """The control case: the scan is not blind."""
    sample = tmp_path / "bad.py"
    sample.write_text(
        "import pickle, joblib, numpy as np\n"
        "pickle.loads(b'')\njoblib.load('m')\nnp.load('a.npy')\nnp.load('b', allow_pickle=True)\n"
        "class U(pickle.Unpickler): pass\n"
    )
    assert len(_dangerous_calls(sample)) == 5


def test_a_pickle_planted_in_the_cache_is_never_unpickled(tmp_path):
    """Whoever can write to Redis must not get code execution in the web process: the cache
    holds JSON only (core/cache.py), so a planted pickle is refused, never loaded."""
    import redis
    from django.core.cache import cache

    marker = tmp_path / "pwned"
    cache.set("planted", {"harmless": True})
    raw_key = cache.make_and_validate_key("planted")
    redis.Redis.from_url(settings.REDIS_URL).set(raw_key, pickle.dumps(Exploit(marker)))
    with _Recorder() as seen, pytest.raises(ValueError):
        cache.get("planted")
    assert seen == []
    assert not marker.exists()
    cache.set("plain", {"version": 3, "counts": [1, 2]})
    assert cache.get("plain") == {"version": 3, "counts": [1, 2]}
    cache.set("counter", 1)
    assert cache.incr("counter") == 2
