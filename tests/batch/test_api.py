from __future__ import annotations

import io

import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.choices import Role
from batch.models import BatchJob
from tests.batch.conftest import csv_upload, input_frame, run_job_inline

URL = "/api/v1/batch-jobs/"


def _post(api, **fields):
    data = {"model": "batchmodel", "version": 1, **fields}
    return api.post(URL, data, format="multipart")


def test_submit_poll_and_download(batch_setup, api_for):
    api = api_for(batch_setup["owner"])
    frame = input_frame(1_200)
    created = _post(api, file=csv_upload(frame), id_column="row_id", chunk_rows=500)
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["state"] == "queued" and body["requested_version"] == 1
    assert body["input_name"] == "input.csv" and body["input_format"] == "csv"
    not_ready = api.get(f"{URL}{body['id']}/output/")
    assert not_ready.status_code == 409
    assert not_ready.json()["error"]["code"] == "output_not_ready"

    run_job_inline(BatchJob.objects.get(pk=body["id"]))
    detail = api.get(f"{URL}{body['id']}/").json()
    assert detail["state"] == "succeeded" and detail["version"] == 1
    assert (detail["rows_done"], detail["chunks_done"], detail["progress"]) == (1200, 3, 1.0)
    output = api.get(f"{URL}{body['id']}/output/")
    assert output.status_code == 200
    assert output["Content-Disposition"].endswith(f'filename="batch-job-{body["id"]}.parquet"')
    table = pd.read_parquet(io.BytesIO(b"".join(output.streaming_content)))
    assert len(table) == 1200


def test_list_is_filtered_and_queries_are_bounded(
    batch_setup, api_for, django_assert_max_num_queries
):
    api = api_for(batch_setup["owner"])
    for _ in range(3):
        assert _post(api, file=csv_upload(input_frame(20))).status_code == 201
    with django_assert_max_num_queries(6):
        listed = api.get(URL, {"state": "queued", "model__name": "batchmodel"})
    assert listed.status_code == 200 and listed.json()["count"] == 3


def test_cancel_over_the_api(batch_setup, api_for):
    api = api_for(batch_setup["owner"])
    job_id = _post(api, file=csv_upload(input_frame(20))).json()["id"]
    cancelled = api.post(f"{URL}{job_id}/cancel/", {"reason": "oops"}, format="json")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = api.post(f"{URL}{job_id}/cancel/", {}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"


def test_viewer_and_reviewer_cannot_run_jobs(batch_setup, api_for, make_user):
    for role in (Role.VIEWER, Role.REVIEWER):
        api = api_for(make_user(role))
        refused = _post(api, file=csv_upload(input_frame(5)))
        assert refused.status_code == 403
        assert refused.json()["error"]["message"].endswith("(needs the 'run_batch' capability).")
        assert api.get(URL).status_code == 200
    assert not BatchJob.objects.exists()


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({}, 400, "input_required"),
        ({"version": "", "alias": ""}, 400, "version_or_alias"),
        ({"alias": "nope", "version": "", "file": True}, 404, "not_found"),
        ({"version": 9, "file": True}, 404, "not_found"),
        ({"input_path": "/etc/passwd"}, 403, "path_input_disabled"),
    ],
)
def test_bad_requests_use_the_shared_error_body(batch_setup, api_for, fields, status, code):
    api = api_for(batch_setup["owner"])
    data = {"model": "batchmodel", "version": 1, **fields}
    data = {k: v for k, v in data.items() if v != ""}
    if data.pop("file", None):
        data["file"] = csv_upload(input_frame(5))
    response = api.post(URL, data, format="multipart")
    assert response.status_code == status, response.json()
    assert response.json()["error"]["code"] == code


def test_unapproved_version_is_refused(batch_setup, api_for):
    from registry.choices import VersionState

    batch_setup["versions"][2].state = VersionState.VALIDATED
    batch_setup["versions"][2].save()
    api = api_for(batch_setup["owner"])
    response = _post(api, version=2, file=csv_upload(input_frame(5)))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "version_not_approved"


def test_schema_error_over_the_api(batch_setup, api_for):
    api = api_for(batch_setup["owner"])
    upload = SimpleUploadedFile("in.csv", b"age,income\n1,2\n")
    response = _post(api, file=upload)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "missing_columns" and error["details"]["missing"] == ["visits", "score"]
