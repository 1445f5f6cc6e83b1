"""Drift reads a version's reference, and its sampled live rows, through the model contract.

A real pipeline (string categoricals, zip codes that look numeric) is validated in the real
sandbox child, which decides its contract; the live rows go through the real gateway sampler
into Redis. pandas alone reads the zip codes as int64: a numeric profile that every live
"02139" would miss.
"""

from __future__ import annotations

import redis

from gateway.sampling import samples_key
from monitoring.services import drift_compute_now, drift_profile_ensure
from tests.monitoring.conftest import send_rows


def _statuses(deployment, rows: int) -> dict[str, tuple[str, str]]:
    [window] = drift_compute_now(deployment=deployment, seconds=600)
    assert window.live_rows == rows
    return {f.feature: (f.kind, f.status) for f in window.features.all()}


def test_zip_codes_are_profiled_as_categories_and_only_a_shifted_category_drifts(
    pipeline_serving, pipeline_version, monitoring_redis, settings, pipeline_case
):
    assert {f["name"]: f["type"] for f in pipeline_version.contract["features"]}["zip"] == "string"
    # pandas read the file's zip codes as int64 at upload; validation re-typed the model's
    # features in the version's reference schema by the contract.
    described = {c["name"]: c for c in pipeline_version.reference_schema}
    assert described["zip"]["dtype"] == "string" and described["zip"]["kind"] == "categorical"

    profile = drift_profile_ensure(version=pipeline_version)
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

    reference = pipeline_case.rows.head(60)
    same = reference.loc[reference.index.repeat(3)]  # the reference's own rows, 180 of them
    assert send_rows(settings, pipeline_serving, pipeline_version, same) == 6
    names = [f["name"] for f in pipeline_version.contract["features"]]
    assert (
        send_rows(settings, pipeline_serving, pipeline_version, same[names], positional=True) == 6
    )
    statuses = _statuses(pipeline_serving, 360)
    assert statuses["zip"] == ("categorical", "ok")
    assert statuses["plan"] == ("categorical", "ok")
    assert all(status == "ok" for _, status in statuses.values()), statuses

    redis.Redis.from_url(settings.REDIS_URL).delete(samples_key(pipeline_serving.name))
    shifted = same.assign(plan="pro")
    assert send_rows(settings, pipeline_serving, pipeline_version, shifted) == 6
    statuses = _statuses(pipeline_serving, 180)
    assert statuses["plan"] == ("categorical", "drift")
    assert statuses["zip"] == ("categorical", "ok")


def test_a_profile_built_from_pandas_guesses_is_built_again_from_the_contract(pipeline_version):
    profile = drift_profile_ensure(version=pipeline_version)
    stale = [{**f, "kind": "numeric"} if f["name"] == "zip" else f for f in profile.features]
    type(profile).objects.filter(pk=profile.pk).update(features=stale)
    again = drift_profile_ensure(version=pipeline_version)
    assert {f["name"]: f["kind"] for f in again.features}["zip"] == "categorical"
