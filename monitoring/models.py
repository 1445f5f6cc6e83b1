from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models

from deployments.models import Deployment, Rollout
from monitoring.choices import (
    PERIOD_HOUR,
    PERIOD_MINUTE,
    AlertKind,
    DeliveryState,
    DriftStatus,
    DriftWindowKind,
    FeatureKind,
    GuardAction,
    GuardRule,
)
from registry.models import ModelVersion


class HistogramField(ArrayField):
    """``bigint[]`` of bucket counts.

    Django prepares every element of an ArrayField through its base field (149 calls per
    row); the counts are ints already. The roll-up's hot path writes with raw SQL anyway.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("base_field", models.BigIntegerField())
        super().__init__(**kwargs)

    def get_db_prep_value(self, value, connection, prepared=False):
        return None if value is None else list(map(int, value))


class MetricRollup(models.Model):
    """Gateway totals of one (deployment, version, HTTP status) over one minute or hour.

    ``histogram`` has ``gateway.metrics.BUCKET_COUNT`` counts over the fixed log buckets of
    ``gateway.metrics.BUCKET_BOUNDS_MS``, so any set of rows merges by adding bucket by bucket.
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    version = models.PositiveIntegerField(help_text="version number; 0 = nothing was live")
    status = models.PositiveSmallIntegerField()
    period_seconds = models.PositiveIntegerField(default=PERIOD_MINUTE)
    start = models.DateTimeField()
    count = models.BigIntegerField(default=0)
    rows = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    latency_us_sum = models.BigIntegerField(default=0)
    histogram = HistogramField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "version", "status", "period_seconds", "start"],
                name="monitoring_rollup_unique_cell",
            ),
            models.CheckConstraint(
                condition=models.Q(period_seconds__in=[PERIOD_MINUTE, PERIOD_HOUR]),
                name="monitoring_rollup_known_period",
            ),
        ]
        indexes = [models.Index(fields=["deployment", "start"])]

    def __str__(self) -> str:
        return f"{self.deployment_id} v{self.version} {self.status} @{self.start:%Y-%m-%d %H:%M}"


class SlotResourceSample(models.Model):
    """CPU-seconds (cumulative) and RSS of one slot's process tree at one moment."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    slot = models.CharField(max_length=8)
    version = models.PositiveIntegerField()
    cpu_seconds = models.FloatField()
    rss_bytes = models.BigIntegerField()
    process_count = models.PositiveIntegerField()
    taken_at = models.DateTimeField()

    class Meta:
        ordering = ["taken_at"]
        indexes = [models.Index(fields=["deployment", "slot", "taken_at"])]

    def __str__(self) -> str:
        return f"{self.deployment_id}.{self.slot} v{self.version} @{self.taken_at:%H:%M:%S}"


class MonitoringPolicy(models.Model):
    """Per-deployment overrides of the monitoring settings (empty = the settings' defaults).

    Guard rules live in ``Deployment.guard_policy`` (set with the deployment); this holds what
    only monitoring reads: drift thresholds and window, and resource prices.
    """

    deployment = models.OneToOneField(
        Deployment, on_delete=models.CASCADE, related_name="monitoring_policy"
    )
    drift_thresholds = models.JSONField(default=dict, blank=True)
    drift_window_seconds = models.PositiveIntegerField(null=True, blank=True)
    price_cpu_hour = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    price_gb_hour = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "monitoring policies"

    def __str__(self) -> str:
        return f"monitoring policy of {self.deployment_id}"


class DriftProfile(models.Model):
    """A version's reference sample, pre-binned once: what every live window is compared to.

    ``features`` (JSON) holds per feature its kind, bin edges or categories and reference
    counts; ``arrays`` (an ``.npz``) holds per numeric feature the distinct sorted reference
    values and their cumulative counts, which is all an exact two-sample KS needs.
    """

    version = models.OneToOneField(ModelVersion, on_delete=models.CASCADE, related_name="+")
    reference_sha256 = models.CharField(max_length=64)
    reference_rows = models.PositiveIntegerField()
    features = models.JSONField(default=list)
    arrays = models.BinaryField()
    # The version's own predictions on its reference sample (asked of a serving slot, since
    # a model is never loaded in a platform process); empty until one answered.
    prediction = models.JSONField(null=True, blank=True)
    prediction_arrays = models.BinaryField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"drift profile of version {self.version_id}"


class DriftWindow(models.Model):
    """Live inputs and outputs of one window compared with the version's profile."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    version = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=DriftWindowKind.choices)
    start = models.DateTimeField()
    end = models.DateTimeField()
    live_rows = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=8, choices=DriftStatus.choices)
    prediction = models.JSONField(null=True, blank=True)
    # monitoring.data_quality.WindowQuality.as_dict(): status, missing/extra fields, issues.
    data_quality = models.JSONField(null=True, blank=True)
    thresholds = models.JSONField(default=dict)
    seconds = models.FloatField(default=0)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-end", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "version", "kind", "start", "end"],
                name="monitoring_drift_window_unique",
            ),
        ]
        indexes = [models.Index(fields=["deployment", "version", "-end"])]

    def __str__(self) -> str:
        return f"drift of {self.deployment_id} v{self.version} {self.start:%H:%M}-{self.end:%H:%M}"


class DriftFeature(models.Model):
    """One feature's drift in one window: the time series a feature's chart shows."""

    window = models.ForeignKey(DriftWindow, on_delete=models.CASCADE, related_name="features")
    feature = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=FeatureKind.choices)
    status = models.CharField(max_length=8, choices=DriftStatus.choices)
    live_rows = models.PositiveIntegerField(default=0)
    missing_rate = models.FloatField(null=True, blank=True)
    psi = models.FloatField(null=True, blank=True)
    ks = models.FloatField(null=True, blank=True)
    ks_pvalue = models.FloatField(null=True, blank=True)
    chi2 = models.FloatField(null=True, blank=True)
    chi2_pvalue = models.FloatField(null=True, blank=True)
    js = models.FloatField(null=True, blank=True)
    # Data quality of the same rows (monitoring.data_quality.FeatureQuality).
    type_mismatch_rate = models.FloatField(null=True, blank=True)
    out_of_range_rate = models.FloatField(null=True, blank=True)
    new_category_rate = models.FloatField(null=True, blank=True)
    quality_issues = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["window", "feature"]
        constraints = [
            models.UniqueConstraint(
                fields=["window", "feature"], name="monitoring_drift_feature_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.feature}: {self.status}"


class GuardBreach(models.Model):
    """A guard rule that tripped, with the figures that tripped it."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    rollout = models.ForeignKey(
        Rollout, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    rollback = models.ForeignKey(
        Rollout, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    version = models.PositiveIntegerField()
    rules = ArrayField(models.CharField(max_length=32, choices=GuardRule.choices))
    evidence = models.JSONField(default=dict)
    action = models.CharField(max_length=24, choices=GuardAction.choices)
    message = models.TextField(blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "guard breaches"

    def __str__(self) -> str:
        return f"guard breach on {self.deployment_id} v{self.version}: {', '.join(self.rules)}"


class WebhookEndpoint(models.Model):
    """Where alerts are POSTed (HMAC-SHA256 signed with ``secret``)."""

    name = models.CharField(max_length=100)
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=128)
    # Empty = every kind; otherwise the AlertKind values wanted.
    kinds = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    # Null = every deployment.
    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Alert(models.Model):
    """Something worth telling people, recorded once (``key`` makes re-detection harmless)."""

    key = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=32, choices=AlertKind.choices)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    message = models.TextField()
    payload = models.JSONField(default=dict)
    emailed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message[:60]}"


class WebhookDelivery(models.Model):
    """One alert to one endpoint: its attempts and outcome (the delivery log)."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    state = models.CharField(
        max_length=16, choices=DeliveryState.choices, default=DeliveryState.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    log = models.JSONField(default=list, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["alert", "endpoint"], name="monitoring_delivery_once_per_endpoint"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.alert} → {self.endpoint} ({self.state})"


class PredictionRecord(models.Model):
    """One row's answer in the prediction log (``gateway.prediction_log``), joined to labels.

    The table is partitioned by day on ``ts`` (created by migration 0003 with raw SQL: Django
    has no declarative partitioning), so months of traffic stay cheap to write and old days are
    dropped whole (``monitoring.services.prediction_log.partitions_drop``). Unmanaged: the
    ingester writes it with COPY; the ORM only reads. The key includes ``ts`` because a
    partitioned table's unique keys must hold the partition column; an id is unique per
    deployment because the ingester keeps the first row of an id and counts the rest.
    """

    pk = models.CompositePrimaryKey("deployment_id", "row_id", "ts")
    deployment = models.ForeignKey(Deployment, on_delete=models.DO_NOTHING, related_name="+")
    row_id = models.CharField(max_length=104)
    ts = models.DateTimeField()
    version = models.PositiveIntegerField()
    arm = models.CharField(max_length=16)
    prediction = models.JSONField()
    probabilities = ArrayField(models.FloatField(), null=True)
    sampled = models.BooleanField(default=False)

    class Meta:
        managed = False
        db_table = "monitoring_prediction"

    def __str__(self) -> str:
        return f"{self.row_id} v{self.version}"


class PredictionLabel(models.Model):
    """The ground truth of one logged row, posted later (``POST /deployments/<name>/labels/``).

    One per (deployment, row id): posting the same pair again changes nothing, a different
    label for the id replaces it (a correction). Kept independently of the log, so a label that
    arrives before its prediction was ingested still joins once it is.
    """

    # The key is the one index: a bulk upload of a million labels maintains one b-tree
    # (an id column, a unique constraint and the foreign key's index made it three, and the
    # upload ~3x slower). No foreign-key constraint in the database either: its deferred
    # check ran once per label at commit (2.9 s of a million-label upload, measured), for a
    # deployment the upload has already looked up and locked. Deleting a deployment deletes
    # its labels still (Django's cascade: one DELETE by deployment id).
    pk = models.CompositePrimaryKey("deployment_id", "row_id")
    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    row_id = models.CharField(max_length=104)
    label = models.JSONField()
    labelled_at = models.DateTimeField(help_text="when the truth was known (default: received)")
    received_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.row_id}: {self.label}"
