"""Path traversal wherever a path or a name enters: artifact upload names (model file,
reference data, batch input upload), lineage/dataset URIs, batch input paths, and output
download ids. Tried over real HTTP (Django test client) against real files."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest
from django.core.files.storage import default_storage

from batch.models import BatchJob
from registry.models import ModelVersion
from tests.batch.conftest import input_frame
from tests.registry.helpers import raw_multipart

pytestmark = pytest.mark.django_db
UPLOAD = "/api/v1/models/churn/versions/"
BATCH = "/api/v1/batch-jobs/"

# Names that try to be a path: refused with a 400 naming the problem.
HOSTILE_NAMES = [
    "../evil.joblib",
    "../../../../etc/cron.d/evil",
    "..\\..\\evil.joblib",
    "/etc/passwd",
    "/tmp/evil.joblib",
    "C:\\Windows\\evil.joblib",
    "c:evil.joblib",
    "model.joblib\x00.png",
    "..",
    ".",
    "...joblib",
    "~root/evil.joblib",
    "x.joblib#/../../../etc/passwd",
    "x.joblib?name=/../../etc/passwd",
    "sub/../../evil.joblib",
    "\uff0e\uff0e\uff0fevil.joblib",  # full-width "../"
]
# Names that only look like paths once someone decodes them again: kept as labels, never
# decoded, never used as a path.
ENCODED_NAMES = [
    "%2e%2e%2fevil.joblib",
    "%252e%252e%252fevil.joblib",
    "..%2fevil.joblib",
    "..%255cevil.joblib",
    "evil.joblib%00.png",
]


def _artifact_files_outside_storage(before: set[Path]) -> set[Path]:
    root = Path(default_storage.location).resolve()
    found = set()
    for base in (root.parent, Path("/tmp"), Path("/etc/cron.d")):
        if base.exists():
            for path in base.glob("*evil*"):
                if root not in path.resolve().parents:
                    found.add(path)
    return found - before


@pytest.fixture
def outside_before():
    return _artifact_files_outside_storage(set())


def _refused(response, storage_snapshot):
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["message"]
    assert storage_snapshot() == set()
    assert not ModelVersion.objects.exists()
    return error


@pytest.mark.parametrize("filename", HOSTILE_NAMES, ids=repr)
def test_hostile_artifact_names_are_refused(
    filename, registered_model, scientist, api_for, sklearn_model, storage_snapshot, outside_before
):
    body, content_type = raw_multipart(
        {"framework": "sklearn"}, {"file": (filename, sklearn_model.artifact)}
    )
    response = api_for(scientist).generic("POST", UPLOAD, body, content_type=content_type)
    error = _refused(response, storage_snapshot)
    assert "name" in error["message"].lower()
    assert _artifact_files_outside_storage(outside_before) == set()


@pytest.mark.parametrize("filename", HOSTILE_NAMES[:6], ids=repr)
def test_hostile_reference_data_names_are_refused(
    filename, registered_model, scientist, api_for, sklearn_model, storage_snapshot
):
    body, content_type = raw_multipart(
        {"framework": "sklearn"},
        {
            "file": ("model.joblib", sklearn_model.artifact),
            "reference_data": (filename, sklearn_model.reference_csv),
        },
    )
    response = api_for(scientist).generic("POST", UPLOAD, body, content_type=content_type)
    _refused(response, storage_snapshot)


@pytest.mark.parametrize(
    "encoded",
    ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..%5C..%5Cevil.joblib", "x%00.joblib"],
)
def test_rfc2231_encoded_names_are_decoded_then_refused(
    encoded, registered_model, scientist, api_for, sklearn_model, storage_snapshot
):
    """filename*=UTF-8''..%2F..: the one encoding the multipart standard defines is
    decoded before the check, so it cannot smuggle a path past it."""
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="framework"\r\n\r\nsklearn\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f"filename*=UTF-8''{encoded}\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + sklearn_model.artifact
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = api_for(scientist).generic(
        "POST", UPLOAD, body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    _refused(response, storage_snapshot)


# U+2215 DIVISION SLASH looks like "/" but is no separator on any file system.
@pytest.mark.parametrize("filename", [*ENCODED_NAMES, "..\u2215evil.joblib"], ids=repr)
def test_encoded_names_stay_labels_and_files_get_server_names(
    filename, registered_model, scientist, api_for, sklearn_model, storage_snapshot
):
    body, content_type = raw_multipart(
        {"framework": "sklearn"}, {"file": (filename, sklearn_model.artifact)}
    )
    response = api_for(scientist).generic("POST", UPLOAD, body, content_type=content_type)
    if response.status_code == 400:  # refusing is as good as keeping it a label
        _refused(response, storage_snapshot)
        return
    assert response.status_code == 201, response.content
    assert response.json()["original_filename"] == filename  # shown, never decoded
    version = ModelVersion.objects.get()
    root = Path(default_storage.location).resolve()
    stored = Path(default_storage.path(version.artifact_path)).resolve()
    assert root in stored.parents and stored.is_file()
    assert "evil" not in version.artifact_path and "%" not in version.artifact_path
    assert all("evil" not in path for path in storage_snapshot())


# --- dataset and source URIs: recorded, never opened --------------------------------------


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("TOP-SECRET-9f2c\n")
    return path


@pytest.fixture
def opened_paths(monkeypatch):
    """Every path the web process opens during the request (builtins, io and os)."""
    import builtins
    import io

    seen: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *args, **kwargs):
        seen.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):
        seen.append(str(path))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    return seen


@pytest.mark.parametrize(
    "uri_of",
    [
        lambda p: f"file://{p}",
        lambda p: str(p),
        lambda p: f"{p.parent}/../{p.parent.name}/{p.name}",
        lambda p: f"file://localhost{p}#fragment",
        lambda p: f"{p}?download=1",
        lambda p: "file://" + quote(quote(str(p))),
        lambda p: "\\\\fileserver\\share\\..\\..\\secret.txt",
        lambda p: "/etc/passwd",
    ],
    ids=["file-uri", "absolute", "dotdot", "fragment", "query", "double-encoded", "unc", "passwd"],
)
def test_dataset_and_code_uris_are_recorded_never_opened(
    uri_of, secret_file, opened_paths, registered_model, scientist, api_for, sklearn_model
):
    import json

    uri = uri_of(secret_file)
    metadata = {
        "datasets": [{"uri": uri, "name": "train"}],
        "code_repo": uri[:500],
    }
    body, content_type = raw_multipart(
        {"framework": "sklearn", "metadata": json.dumps(metadata)},
        {"file": ("model.joblib", sklearn_model.artifact)},
    )
    api = api_for(scientist)
    response = api.generic("POST", UPLOAD, body, content_type=content_type)
    assert response.status_code == 201, response.content
    assert response.json()["datasets"][0]["uri"] == uri
    lineage = api.get(f"{UPLOAD}1/lineage/")
    assert lineage.status_code == 200
    for content in (response.content, lineage.content):
        assert b"TOP-SECRET" not in content and b"root:x:" not in content
    assert not [p for p in opened_paths if "secret.txt" in p or p == "/etc/passwd"]


def test_nul_byte_in_a_dataset_uri_is_refused(registered_model, scientist, api_for, sklearn_model):
    import json

    body, content_type = raw_multipart(
        {"framework": "sklearn", "metadata": json.dumps({"datasets": [{"uri": "/etc/x\x00y"}]})},
        {"file": ("model.joblib", sklearn_model.artifact)},
    )
    response = api_for(scientist).generic("POST", UPLOAD, body, content_type=content_type)
    assert response.status_code == 400
    assert not ModelVersion.objects.exists()


# --- batch input paths ----------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path, settings):
    inside, outside = tmp_path / "inbox", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    settings.MODELYARD_BATCH_ALLOWED_ROOTS = [str(inside)]
    secret = outside / "secret.csv"
    input_frame(10).to_csv(secret, index=False)
    good = inside / "good.csv"
    input_frame(10).to_csv(good, index=False)
    return inside, outside


def _batch_paths(inside: Path, outside: Path) -> dict[str, str]:
    secret = outside / "secret.csv"
    os.symlink(secret, inside / "link.csv")
    os.symlink(outside, inside / "subdir")
    os.link(inside / "good.csv", inside / "hardlink.csv")
    return {
        "outside": str(secret),
        "dotdot": f"{inside}/../elsewhere/secret.csv",
        "dotdot-deep": f"{inside}/good.csv/../../../../../../etc/passwd",
        "backslash": f"{inside}\\..\\elsewhere\\secret.csv",
        "relative": "elsewhere/secret.csv",
        "home": "~/secret.csv",
        "nul": f"{inside}/good.csv\x00/../../elsewhere/secret.csv",
        "fragment": f"{inside}/good.csv#/../../elsewhere/secret.csv",
        "query": f"{inside}/good.csv?/../../elsewhere/secret.csv",
        "encoded": f"{inside}/%2e%2e/elsewhere/secret.csv",
        "double-encoded": f"{inside}/%252e%252e%252felsewhere%252fsecret.csv",
        "file-uri": f"file://{secret}",
        "symlink-file": str(inside / "link.csv"),
        "symlink-dir": str(inside / "subdir" / "secret.csv"),
        "root-itself": str(inside),
        "etc-passwd": "/etc/passwd",
        "proc": "/proc/self/environ",
    }


BATCH_CASES = [
    "outside",
    "dotdot",
    "dotdot-deep",
    "backslash",
    "relative",
    "home",
    "nul",
    "fragment",
    "query",
    "encoded",
    "double-encoded",
    "file-uri",
    "symlink-file",
    "symlink-dir",
    "root-itself",
    "etc-passwd",
    "proc",
]


@pytest.mark.parametrize("case", BATCH_CASES)
def test_batch_input_paths_cannot_leave_the_allowed_roots(case, batch_setup, roots, api_for):
    inside, outside = roots
    raw = _batch_paths(inside, outside)[case]
    api = api_for(batch_setup["owner"])
    response = api.post(
        BATCH, {"model": "batchmodel", "version": 1, "input_path": raw}, format="json"
    )
    assert 400 <= response.status_code < 500, (case, response.status_code, response.content)
    error = response.json()["error"]
    assert error["code"] in {
        "path_not_allowed",
        "invalid_path",
        "input_not_found",
        "invalid",
        "nul_character",  # refused by the JSON parser already (core.api.parsers)
    }
    assert not BatchJob.objects.exists()


def test_a_path_inside_the_roots_is_accepted(batch_setup, roots, api_for):
    """The control case: the refusals above are about the paths, not the request."""
    inside, _ = roots
    response = api_for(batch_setup["owner"]).post(
        BATCH,
        {"model": "batchmodel", "version": 1, "input_path": str(inside / "good.csv")},
        format="json",
    )
    assert response.status_code == 201, response.content


def test_batch_errors_do_not_reveal_which_files_exist_outside_the_roots(
    batch_setup, roots, api_for
):
    api = api_for(batch_setup["owner"])
    answers = []
    for raw in ("/etc/passwd", "/etc/no-such-file-here", "/root/.ssh/id_rsa"):
        response = api.post(
            BATCH, {"model": "batchmodel", "version": 1, "input_path": raw}, format="json"
        )
        answers.append((response.status_code, response.json()["error"]["code"]))
    assert len(set(answers)) == 1, answers
    assert answers[0] == (403, "path_not_allowed")


@pytest.mark.parametrize(
    "filename", ["../../inbox/evil.csv", "/etc/evil.csv", "..\\evil.csv", "a\x00.csv"], ids=repr
)
def test_batch_upload_names_are_refused(filename, batch_setup, api_for, storage_snapshot):
    body, content_type = raw_multipart(
        {"model": "batchmodel", "version": "1"},
        {"file": (filename, input_frame(5).to_csv(index=False).encode())},
    )
    response = api_for(batch_setup["owner"]).generic("POST", BATCH, body, content_type=content_type)
    assert response.status_code == 400, response.content
    assert not BatchJob.objects.exists()
    assert not [path for path in storage_snapshot() if "batch-inputs" in path]


# --- output download ids ------------------------------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    [
        "..",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "%252e%252e%252f",
        "..%5C..%5Cetc",
        "1%00",
        "1%23",
        "1%3F",
        "-1",
        "0",
        "abc",
        "999999999999999999999999",
        "%2Fetc%2Fpasswd",
    ],
)
def test_output_download_ids_cannot_name_a_file(job_id, batch_setup, api_for):
    api = api_for(batch_setup["owner"])
    response = api.get(f"{BATCH}{job_id}/output/")
    assert response.status_code in (400, 404), (job_id, response.status_code)
    assert b"root:" not in response.content
