from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower

from deployments.choices import (
    ACTIVE_ROLLOUT_STATES,
    BuildState,
    Environment,
    RolloutKind,
    RolloutState,
    RolloutStrategy,
    SlotColor,
    SlotState,
)
from registry.models import ModelVersion, RegisteredModel, name_validator


class Deployment(models.Model):
    """A named, stable endpoint with two slots; traffic goes to ``live_slot``."""

    name = models.CharField(max_length=100, validators=[name_validator])
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="deployments")
    environment = models.CharField(max_length=16, choices=Environment.choices)
    description = models.TextField(blank=True)
    # How long the previous slot stays warm (and guards watch) after a switch.
    bake_seconds = models.PositiveIntegerField(default=300)
    # Guard thresholds (monitoring reads them): error rate, p99, drift, cost.
    guard_policy = models.JSONField(default=dict, blank=True)
    live_slot = models.CharField(max_length=8, choices=SlotColor.choices, blank=True)
    # A protected alias of the model this deployment follows: when it moves (which only an
    # operator or reviewer may do, to an approved version) a rollout to it starts.
    follow_alias = models.CharField(max_length=64, blank=True)
    # Serving: how each slot runs. ``workers`` BentoML worker processes per server; between
    # ``replicas_min`` and ``replicas_max`` servers per slot (equal: a fixed count, no
    # autoscaling), scaled on in-flight requests per replica against ``scale_target_inflight``
    # -- up after ``scale_up_seconds`` above it, down after ``scale_down_seconds`` below.
    # Concurrent single-row requests are predicted together in batches of up to
    # ``batch_max_size`` rows, waiting at most ``batch_max_latency_ms`` to fill one.
    workers = models.PositiveSmallIntegerField(default=1)
    replicas_min = models.PositiveSmallIntegerField(default=1)
    replicas_max = models.PositiveSmallIntegerField(default=1)
    scale_target_inflight = models.FloatField(default=8.0)
    scale_up_seconds = models.PositiveIntegerField(default=15)
    scale_down_seconds = models.PositiveIntegerField(default=300)
    batch_max_size = models.PositiveIntegerField(default=32)
    batch_max_latency_ms = models.PositiveIntegerField(default=10)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(Lower("name"), name="deployments_name_unique_casefold"),
            models.CheckConstraint(
                condition=models.Q(replicas_min__gte=1, replicas_max__gte=models.F("replicas_min")),
                name="deployments_replicas_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class DeploymentKey(models.Model):
    """A key that clients present to the gateway; only its SHA-256 is stored."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="keys")
    name = models.CharField(max_length=100)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.deployment} / {self.name}"


class Slot(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="slots")
    color = models.CharField(max_length=8, choices=SlotColor.choices)
    version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="slots"
    )
    bento_tag = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=16, choices=SlotState.choices, default=SlotState.STOPPED)
    url = models.CharField(max_length=200, blank=True)
    # The slot's servers as last seen: [{"index": 0, "url": "http://...", "state": "ready"}]
    # (state ready / starting / dead / draining). The route lists the ready ones' URLs; [] for
    # a slot recorded before replicas existed, whose route is ``url`` alone.
    replicas = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["deployment", "color"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "color"], name="deployments_slot_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.deployment.name}.{self.color}"

    @property
    def runtime_key(self) -> str:
        return f"{self.deployment.name}.{self.color}"

    @property
    def ready_urls(self) -> list[str]:
        """Where the slot takes traffic: its ready replicas' URLs (``url`` for an old row)."""
        if not self.replicas:
            return [self.url] if self.url else []
        return [replica["url"] for replica in self.replicas if replica.get("state") == "ready"]


class Build(models.Model):
    """A version turned into a Bento: built once, exported, reused by every rollout."""

    version = models.OneToOneField(ModelVersion, on_delete=models.PROTECT, related_name="build")
    state = models.CharField(max_length=16, choices=BuildState.choices, default=BuildState.PENDING)
    bento_tag = models.CharField(max_length=200, blank=True)
    archive_path = models.CharField(max_length=255, blank=True)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    seconds = models.FloatField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The worker building it ("host/pid") and until when its heartbeat vouches for it
    # (deployments.services.leases): a lapsed lease means the worker died.
    lease_holder = models.CharField(max_length=255, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"build of {self.version}"


class Rollout(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="rollouts")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="rollouts")
    previous_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=RolloutKind.choices, default=RolloutKind.ROLLOUT)
    # The alias the rollout was asked for by, if any: resolved to ``version`` when it started.
    alias = models.CharField(max_length=64, blank=True)
    target_slot = models.CharField(max_length=8, choices=SlotColor.choices)
    state = models.CharField(
        max_length=16, choices=RolloutState.choices, default=RolloutState.PENDING, db_index=True
    )
    steps = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    reason = models.TextField(blank=True)
    bake_until = models.DateTimeField(null=True, blank=True)
    strategy = models.CharField(
        max_length=16, choices=RolloutStrategy.choices, default=RolloutStrategy.BLUE_GREEN
    )
    # A canary's plan (deployments.services.progressive.canary_plan_clean): steps in percent, the
    # minimum time and requests per step, the judge's tolerances, automatic promotion.
    plan = models.JSONField(default=dict, blank=True)
    canary_step = models.PositiveSmallIntegerField(default=0)  # index into plan["steps"]
    step_started_at = models.DateTimeField(null=True, blank=True)
    paused = models.BooleanField(default=False)
    # The judge's latest verdict with its evidence (monitoring.judge.Judgement.as_dict()).
    judgement = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    state_changed_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The worker driving its steps right now, as on Build.
    lease_holder = models.CharField(max_length=255, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Two rollouts on one deployment never run at once, whatever the code does.
            models.UniqueConstraint(
                fields=["deployment"],
                condition=models.Q(state__in=ACTIVE_ROLLOUT_STATES),
                name="deployments_one_active_rollout",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of {self.deployment} to v{self.version.number}"


class DeploymentEvent(models.Model):
    """Something the platform noticed or did by itself: a slot crashed and was restarted, a
    lost route was republished, a stuck rollout was resumed. Shown on the deployment page."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    slot = models.CharField(max_length=8, choices=SlotColor.choices, blank=True)
    kind = models.CharField(max_length=32)
    message = models.TextField()
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.deployment} {self.kind}"
