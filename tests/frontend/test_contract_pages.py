"""The pages say what the model contract says: the version page names a model's labels (and
says plainly when they are only 0..k-1); the "try a prediction" example is the contract's
features, in its order, with a placeholder of each feature's type that the contract accepts.

Real models, validated in the real sandbox child (which decides the contract).
"""

from __future__ import annotations

import html
import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.choices import Role
from deployments.choices import SlotColor, SlotState
from deployments.models import Deployment, Slot
from deployments.services import deployment_create
from registry import services
from registry.choices import VersionState
from registry.modelkit import contract as model_contract
from registry.services.versions import VersionMetadata
from tests.frontend.conftest import assert_csp_clean
from tests.models import contract_cases


@pytest.fixture(scope="module")
def cases():
    return contract_cases()


def _validated(model, uploader, case, *, artifact=None, metadata=None, reference=None):
    version = services.version_upload(
        model=model,
        uploader=uploader,
        artifact=SimpleUploadedFile(case.filename, artifact or case.artifact),
        framework=case.framework,
        metadata=metadata or VersionMetadata(),
        reference=SimpleUploadedFile("ref.csv", reference) if reference else None,
    )
    version = services.version_validate(version_id=version.pk)
    assert version.state == VersionState.VALIDATED, version.validation_report
    return version


def _page(client, version) -> str:
    response = client.get(f"/models/{version.model.name}/versions/{version.number}/")
    assert response.status_code == 200
    page = response.content.decode()
    assert_csp_clean(page)
    return page


def test_version_page_says_plainly_when_labels_are_only_positions(
    login, registered_model, scientist, cases
):
    booster = cases["lightgbm_text_string_labels"]
    named = _validated(
        registered_model,
        scientist,
        booster,
        metadata=VersionMetadata(class_labels=["churn", "stay"]),
    )
    # The same booster without labels: a trailing newline makes it another file.
    unnamed = _validated(registered_model, scientist, booster, artifact=booster.artifact + b"\n")
    client = login(scientist)

    page = _page(client, unnamed)
    note = re.search(r'<p class="notice" id="labels-note">(.*?)</p>', page)
    assert note and "labels are 0..1" in html.unescape(note.group(1))
    assert "class_labels" in note.group(1)
    assert re.search(
        r'<dt>Labels</dt><dd><span class="tag">0</span> <span class="tag">1</span>', page
    )

    page = _page(client, named)
    assert 'id="labels-note"' not in page
    assert '<span class="tag">churn</span> <span class="tag">stay</span>' in page


@pytest.fixture
def live_pipeline(registered_model, scientist, make_user, cases):
    case = cases["sklearn_pipeline_categorical"]
    version = _validated(registered_model, scientist, case, reference=case.reference_csv(60))
    operator = make_user(Role.OPERATOR, "olive")
    deployment = deployment_create(
        name="churn-prod", model=registered_model, environment="production", actor=operator
    )
    Slot.objects.filter(deployment=deployment, color=SlotColor.GREEN).update(
        version=version, state=SlotState.READY, url="http://127.0.0.1:1"
    )
    Deployment.objects.filter(pk=deployment.pk).update(live_slot=SlotColor.GREEN)
    return {"version": version, "deployment": deployment, "operator": operator}


def test_try_a_prediction_example_is_the_contracts_features_and_types(login, live_pipeline):
    version = live_pipeline["version"]
    client = login(live_pipeline["operator"])
    page = client.get(f"/deployments/{live_pipeline['deployment'].name}/").content.decode()
    assert_csp_clean(page)
    assert "read from its model contract (names, order and types)" in page
    box = re.search(r'<textarea id="try-rows"[^>]*>(.*?)</textarea>', page, re.S)
    [example] = json.loads(html.unescape(box.group(1)))

    contract = version.contract
    assert list(example) == model_contract.feature_names(contract)
    types = {f["name"]: f["type"] for f in contract["features"]}
    # zip codes look numeric, but the model takes them as categories: the example says so,
    # with the values of the first row validation proved the model on (a reference row).
    assert types["zip"] == types["plan"] == "string"
    assert isinstance(example["zip"], str) and example["zip"].isdigit() and example["plan"]
    smoke = version.validation_report["load"]["smoke_rows"][0]
    assert example == {name: smoke[name] for name in example}
    assert all(isinstance(example[n], int | float) for n, t in types.items() if t == "number")
    # The example as typed passes the checks the model's own process applies.
    model_contract.rows_to_columns(contract, [example])
    curl = re.search(r"-d '(\{\"instances\".*?\})'", html.unescape(page)).group(1)
    assert json.loads(curl)["instances"] == [example]
