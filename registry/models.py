from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models.functions import Lower

from registry.choices import DatasetRole, Framework, ReviewDecision, VersionState

# Names appear in URLs, Bento tags and Kubernetes object names: keep them slug-safe.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
name_validator = RegexValidator(
    NAME_PATTERN,
    "Use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit.",
)


class RegisteredModel(models.Model):
    name = models.CharField(max_length=100, validators=[name_validator])
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_models"
    )
    team = models.CharField(max_length=100, blank=True)
    tags = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    # Model card: what the model is for and where it must not be used.
    intended_use = models.TextField(blank=True)
    limitations = models.TextField(blank=True)
    card_owners = ArrayField(models.CharField(max_length=150), default=list, blank=True)
    # Review policy.
    approvals_required = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1)]
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Not a field: the API's detail views set it for RegisteredModelDetailSerializer.
    versions_by_state: dict[str, int]

    class Meta:
        ordering = ["name"]
        constraints = [
            # "Churn" and "churn" would be one model to a person; the database agrees.
            models.UniqueConstraint(Lower("name"), name="registry_model_name_unique_casefold"),
            models.CheckConstraint(
                condition=models.Q(approvals_required__gte=1),
                name="registry_model_approvals_required_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    state = models.CharField(
        max_length=16, choices=VersionState.choices, default=VersionState.UPLOADED, db_index=True
    )
    state_changed_at = models.DateTimeField(auto_now_add=True)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="uploaded_versions"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # Artifact: stored under a server-chosen name; immutable once written.
    framework = models.CharField(max_length=16, choices=Framework.choices)
    artifact_format = models.CharField(max_length=32)
    safe_format = models.BooleanField(help_text="The format cannot execute code when loaded.")
    artifact_path = models.CharField(max_length=255, unique=True)
    artifact_sha256 = models.CharField(max_length=64)
    artifact_size = models.BigIntegerField()
    original_filename = models.CharField(max_length=255, blank=True)

    params = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    tags = ArrayField(models.CharField(max_length=64), default=list, blank=True)

    # Lineage besides parents and datasets.
    parents = models.ManyToManyField("self", symmetrical=False, related_name="children", blank=True)
    code_repo = models.CharField(max_length=500, blank=True)
    code_commit = models.CharField(max_length=64, blank=True)
    training_run_id = models.CharField(max_length=200, blank=True)

    # Reference sample: the drift baseline and the validation smoke input.
    reference_path = models.CharField(max_length=255, blank=True)
    reference_sha256 = models.CharField(max_length=64, blank=True)
    reference_rows = models.PositiveIntegerField(null=True, blank=True)
    reference_schema = models.JSONField(default=list, blank=True)
    # The reference's column of true labels (upload metadata ``label_column``): never a
    # feature (registry.modelkit.contract.reference_split), and the source of the baseline.
    reference_label_column = models.CharField(max_length=200, blank=True)
    # The version's quality on its labelled reference rows, computed at validation by the
    # metric code of live quality (core.quality_metrics), with the label column and row
    # counts; empty without labels. The accuracy and MAE guards' baseline when the previous
    # version has too few live labels.
    baseline_quality = models.JSONField(default=dict, blank=True)

    # Validation.
    signature = models.JSONField(default=dict, blank=True)
    validation_report = models.JSONField(default=dict, blank=True)
    validation_started_at = models.DateTimeField(null=True, blank=True)
    validated_at = models.DateTimeField(null=True, blank=True)
    # Decided once at validation and applied by every process that loads the model
    # (validation child, generated service, batch child): see registry/modelkit/.
    loader = models.JSONField(
        default=dict,
        blank=True,
        help_text="Format, loader, allow-list version and (skops) the reviewed trusted types.",
    )
    contract = models.JSONField(
        default=dict,
        blank=True,
        help_text="Features (names, order, logical types), input form and output of the model.",
    )
    # The model's review policy as it stood when this version entered review: a later
    # change of the policy never applies to a version already in review.
    approvals_required = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["model", "-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "number"], name="registry_version_unique_number"
            ),
        ]
        indexes = [
            models.Index(fields=["model", "state"]),
            # The idempotent push looks versions up by their bytes (version_push).
            models.Index(fields=["model", "artifact_sha256"], name="registry_version_model_sha"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number}"


class DatasetReference(models.Model):
    """A dataset a version was trained or evaluated on: recorded, never fetched or opened."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=200, blank=True)
    role = models.CharField(
        max_length=16, choices=DatasetRole.choices, default=DatasetRole.TRAINING
    )
    uri = models.CharField(max_length=2000)
    content_hash = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name or self.uri


class Review(models.Model):
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews"
    )
    decision = models.CharField(max_length=8, choices=ReviewDecision.choices)
    comment = models.TextField(blank=True)
    # What the reviewer saw: validation report and artifact hash at the time of the decision.
    evidence = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["version", "reviewer"], name="registry_review_one_per_reviewer"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reviewer} {self.decision} {self.version}"


class Alias(models.Model):
    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=64, validators=[name_validator])
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    # A protected alias only ever points at an approved version.
    protected = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["model", "name"]
        verbose_name_plural = "aliases"
        constraints = [
            models.UniqueConstraint(fields=["model", "name"], name="registry_alias_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"
