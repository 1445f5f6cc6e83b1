"""Drift reads a version's reference, and its sampled live rows, through the model contract.

A real pipeline (string categoricals, zip codes that look numeric) is validated in the real
sandbox child, which decides its contract; the live rows go through the real gateway sampler
into Redis. pandas alone reads the zip codes as int64: a numeric profile that every live
"02139" would miss.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis

from accounts.choices import Role
from deployments.choices import SlotColor, SlotState
from deployments.models import Deployment, Slot
from deployments.services import deployment_create
from gateway.sampling import samples_key
from monitoring.services import drift_compute_now, drift_profile_ensure
from registry.modelkit.contract import json_safe
from tests.models import contract_cases
from tests.monitoring.conftest import stream_samples
from tests.registry.helpers import upload_version

CASE = "sklearn_pipeline_categorical"


@pytest.fixture(scope="module")
def case():
    return contract_cases()[CASE]


@pytest.fixture
def live_version(registered_model, scientist, case):
    trained = SimpleNamespace(artifact=case.artifact, reference_csv=case.reference_csv(60))
    return upload_version(registered_model, scientist, trained)


@pytest.fixture
def serving(registered_model, make_user, live_version) -> Deployment:
    deployment = deployment_create(
        name=f"{registered_model.name}-prod",
        model=registered_model,
        environment="production",
        actor=make_user(Role.OPERATOR, "olive"),
    )
    # No model process here: the prediction baseline waits for a slot that answers.
    Slot.objects.filter(deployment=deployment, color=SlotColor.GREEN).update(
        version=live_version, state=SlotState.READY, url="http://127.0.0.1:1"
    )
    Deployment.objects.filter(pk=deployment.pk).update(live_slot=SlotColor.GREEN)
    deployment.refresh_from_db()
    return deployment


def _send(settings, deployment, version, frame, *, per_request=30, positional=False) -> int:
    """The rows as a client sends them (objects, or lists in the contract's order), through
    the gateway's own sampler."""
    if positional:
        records = [json_safe(list(row)) for row in frame.itertuples(index=False)]
    else:
        records = [json_safe(row) for row in frame.to_dict(orient="records")]
    return stream_samples(
        settings,
        deployment.name,
        version.number,
        records,
        per_request=per_request,
        predictions=lambda chunk: [],
    )


def _statuses(deployment, rows: int) -> dict[str, tuple[str, str]]:
    [window] = drift_compute_now(deployment=deployment, seconds=600)
    assert window.live_rows == rows
    return {f.feature: (f.kind, f.status) for f in window.features.all()}


def test_zip_codes_are_profiled_as_categories_and_only_a_shifted_category_drifts(
    serving, live_version, monitoring_redis, settings, case
):
    assert {f["name"]: f["type"] for f in live_version.contract["features"]}["zip"] == "string"
    # pandas read the file's zip codes as int64 at upload; validation re-typed the model's
    # features in the version's reference schema by the contract.
    described = {c["name"]: c for c in live_version.reference_schema}
    assert described["zip"]["dtype"] == "string" and described["zip"]["kind"] == "categorical"

    profile = drift_profile_ensure(version=live_version)
    kinds = {f["name"]: f["kind"] for f in profile.features}
    assert kinds == {
        "age": "numeric",
        "income": "numeric",
        "visits": "numeric",
        "score": "numeric",
        "plan": "categorical",
        "zip": "categorical",
    }
    zips = {f["name"]: f for f in profile.features}["zip"]
    assert set(zips["categories"]) <= {"02139", "10001", "94103", "00501"}

    reference = case.rows.head(60)
    same = reference.loc[reference.index.repeat(3)]  # the reference's own rows, 180 of them
    assert _send(settings, serving, live_version, same) == 6
    names = [f["name"] for f in live_version.contract["features"]]
    assert _send(settings, serving, live_version, same[names], positional=True) == 6
    statuses = _statuses(serving, 360)
    assert statuses["zip"] == ("categorical", "ok")
    assert statuses["plan"] == ("categorical", "ok")
    assert all(status == "ok" for _, status in statuses.values()), statuses

    redis.Redis.from_url(settings.REDIS_URL).delete(samples_key(serving.name))
    shifted = same.assign(plan="pro")
    assert _send(settings, serving, live_version, shifted) == 6
    statuses = _statuses(serving, 180)
    assert statuses["plan"] == ("categorical", "drift")
    assert statuses["zip"] == ("categorical", "ok")


def test_a_profile_built_from_pandas_guesses_is_built_again_from_the_contract(live_version):
    profile = drift_profile_ensure(version=live_version)
    stale = [{**f, "kind": "numeric"} if f["name"] == "zip" else f for f in profile.features]
    type(profile).objects.filter(pk=profile.pk).update(features=stale)
    again = drift_profile_ensure(version=live_version)
    assert {f["name"]: f["kind"] for f in again.features}["zip"] == "categorical"
