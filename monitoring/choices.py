from django.db import models

# Resolutions a roll-up row can have: minute rows are downsampled to hour rows with age.
PERIOD_MINUTE = 60
PERIOD_HOUR = 3600


class DriftStatus(models.TextChoices):
    OK = "ok"
    WARN = "warn"
    DRIFT = "drift"
    NO_DATA = "no_data"  # too few live rows in the window to say anything


# Worst first is what a summary wants; order lets code compare statuses.
DRIFT_SEVERITY = {
    DriftStatus.NO_DATA: 0,
    DriftStatus.OK: 1,
    DriftStatus.WARN: 2,
    DriftStatus.DRIFT: 3,
}


class FeatureKind(models.TextChoices):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


class DriftWindowKind(models.TextChoices):
    SCHEDULED = "scheduled"  # a closed window of the configured length
    ON_DEMAND = "on_demand"  # asked for over the API
    GUARD = "guard"  # since the switch, for a guard during the bake


class GuardRule(models.TextChoices):
    ERROR_RATE = "error_rate"
    P99_LATENCY = "p99_ms"
    DRIFT = "drift"
    COST_PER_PREDICTION = "cost_per_prediction"
    ACCURACY = "accuracy"
    MAE = "mae"
    MISSING_RATE = "missing_rate_increase"
    OUT_OF_RANGE = "out_of_range_rate"
    NEW_CATEGORY = "new_category_rate"


class GuardAction(models.TextChoices):
    ROLLED_BACK = "rolled_back"
    ROLLBACK_REFUSED = "rollback_refused"  # nothing to roll back to, or a rollout in flight


class AlertKind(models.TextChoices):
    ROLLOUT_DONE = "rollout.done"
    ROLLOUT_FAILED = "rollout.failed"
    ROLLBACK = "rollback"
    DRIFT_DETECTED = "drift.detected"
    PREDICTION_DRIFT = "prediction.drift"
    DATA_QUALITY = "data_quality.breach"
    GUARD_BREACH = "guard.breach"
    RETRAIN_REQUESTED = "retrain.requested"


class DeliveryState(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # gave up after the last attempt
