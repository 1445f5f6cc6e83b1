"""Data-quality guard rules (issue 20): a baking version whose live inputs break a rule is rolled
back with the figures as evidence; clean inputs, or too few rows, trip nothing.

The same real pipeline as test_data_quality.py (validated in the sandbox child, which decides
its contract and reference profile); rows go through the gateway's own sampler into the suite's
Redis, and the guard judges them with the drift window's data-quality figures.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import AuditEvent
from deployments.choices import RolloutKind, RolloutState, SlotColor, SlotState
from deployments.models import Rollout, Slot
from monitoring.choices import DriftWindowKind, GuardAction, GuardRule
from monitoring.models import DriftWindow
from monitoring.services import guards_check_deployment, monitoring_policy_update
from tests.models import train_sklearn_joblib
from tests.monitoring.conftest import send_rows
from tests.monitoring.test_data_quality import _broken
from tests.registry.helpers import upload_version


@pytest.fixture
def clean(pipeline_case):
    reference = pipeline_case.rows.head(60)
    return reference.loc[reference.index.repeat(3)].reset_index(drop=True)


@pytest.fixture
def guarded(pipeline_serving, pipeline_version, registered_model, scientist):
    """The pipeline version baking on green since 10 minutes ago, the version before it warm
    on blue (a rollback goes there)."""
    before = upload_version(registered_model, scientist, train_sklearn_joblib(), validate=False)
    Slot.objects.filter(deployment=pipeline_serving, color=SlotColor.BLUE).update(
        version=before, state=SlotState.READY, url="http://127.0.0.1:1"
    )
    switched = timezone.now() - timedelta(minutes=10)
    Rollout.objects.create(
        deployment=pipeline_serving,
        version=before,
        kind=RolloutKind.ROLLOUT,
        target_slot=SlotColor.BLUE,
        state=RolloutState.LIVE,
        finished_at=switched - timedelta(days=2),
    )
    Rollout.objects.create(
        deployment=pipeline_serving,
        version=pipeline_version,
        previous_version=before,
        kind=RolloutKind.ROLLOUT,
        target_slot=SlotColor.GREEN,
        state=RolloutState.BAKING,
        bake_until=switched + timedelta(seconds=900),
        steps=[{"at": switched.isoformat(), "state": "switching", "message": "traffic switched"}],
    )
    return pipeline_serving


def _guard(deployment, operator, rules):
    # Through the policy service, which checks every value the API would.
    monitoring_policy_update(deployment=deployment, actor=operator, changes={"guards": rules})
    deployment.refresh_from_db()


@pytest.mark.parametrize(
    ("broken", "key", "rule", "feature"),
    [
        ("missing", "max_missing_rate_increase", GuardRule.MISSING_RATE, "income"),
        ("range", "max_out_of_range_rate", GuardRule.OUT_OF_RANGE, "income"),
        ("category", "max_new_category_rate", GuardRule.NEW_CATEGORY, "plan"),
    ],
)
def test_each_rule_rolls_back_a_version_whose_inputs_break_it(
    guarded,
    pipeline_version,
    monitoring_redis,
    settings,
    clean,
    operator,
    broken,
    key,
    rule,
    feature,
):
    _guard(guarded, operator, {key: 0.1})
    send_rows(settings, guarded, pipeline_version, _broken(clean, broken))

    breach = guards_check_deployment(deployment=guarded)

    assert breach is not None and breach.rules == [rule]
    assert breach.action == GuardAction.ROLLED_BACK
    assert breach.rollback.version.number != pipeline_version.number
    figures = breach.evidence[rule]
    # Every fourth row broken, in a feature the reference never lacked nor exceeded.
    assert figures["feature"] == feature and figures["value"] == pytest.approx(0.25)
    assert figures["threshold"] == 0.1 and figures["rows"] == len(clean)
    assert figures["features"] == {feature: pytest.approx(0.25)}
    window = DriftWindow.objects.get(pk=figures["window_id"])
    assert window.kind == DriftWindowKind.GUARD
    audit = AuditEvent.objects.get(action="deployment.rollback", object_id=str(breach.rollback.pk))
    assert audit.after["evidence"][rule]["feature"] == feature
    assert audit.reason.startswith(f"guard breached: {rule} on v{pipeline_version.number}")


def test_clean_inputs_trip_no_rule_and_drift_and_quality_share_one_window(
    guarded, pipeline_version, monitoring_redis, settings, clean, operator
):
    from monitoring.services.guards import guard_evaluate

    rules = {
        "max_missing_rate_increase": 0.05,
        "max_out_of_range_rate": 0.01,
        "max_new_category_rate": 0.01,
        "drift": "drift",
    }
    _guard(guarded, operator, rules)
    send_rows(settings, guarded, pipeline_version, clean)

    assert guards_check_deployment(deployment=guarded) is None
    now = timezone.now()
    breached, evidence = guard_evaluate(
        deployment=guarded,
        version_number=pipeline_version.number,
        start=now - timedelta(minutes=10),
        end=now,
    )
    assert breached == []
    for rule in (GuardRule.MISSING_RATE, GuardRule.OUT_OF_RANGE, GuardRule.NEW_CATEGORY):
        assert evidence[rule]["value"] == 0 and evidence[rule]["features"] == {}
    # One guard window per version, read by the drift rule and the three quality rules alike.
    assert DriftWindow.objects.filter(kind=DriftWindowKind.GUARD).count() == 1
    assert {evidence[r]["window_id"] for r in (GuardRule.MISSING_RATE, GuardRule.NEW_CATEGORY)} == {
        evidence["drift"]["window_id"]
    }


def test_too_few_sampled_rows_trip_nothing(
    guarded, pipeline_version, monitoring_redis, settings, clean, operator
):
    _guard(guarded, operator, {"max_new_category_rate": 0.1, "min_rows": len(clean) + 1})
    send_rows(settings, guarded, pipeline_version, _broken(clean, "category"))
    assert guards_check_deployment(deployment=guarded) is None
    _guard(guarded, operator, {"min_rows": len(clean)})
    breach = guards_check_deployment(deployment=guarded)
    assert breach is not None and breach.rules == [GuardRule.NEW_CATEGORY]
