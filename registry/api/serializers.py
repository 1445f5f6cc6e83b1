from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers

from core.api.parsers import MAX_JSON_DEPTH, json_value_check
from core.errors import InvalidInput
from registry.choices import DatasetRole, Framework, ReviewDecision
from registry.modelkit.contract import labels_note as contract_labels_note
from registry.models import Alias, DatasetReference, ModelVersion, RegisteredModel, Review
from registry.services.versions import DatasetRef, ParentRef, VersionMetadata

# --- models ----------------------------------------------------------------------------


class AliasSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.number")

    class Meta:
        model = Alias
        fields = ["name", "version", "protected", "updated_at"]


class RegisteredModelSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    version_count = serializers.IntegerField(read_only=True)
    latest_version = serializers.IntegerField(read_only=True, allow_null=True)
    aliases = AliasSerializer(many=True, read_only=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=64), required=False)
    card_owners = serializers.ListField(child=serializers.CharField(max_length=150), required=False)

    class Meta:
        model = RegisteredModel
        fields = [
            "name",
            "description",
            "owner",
            "team",
            "tags",
            "intended_use",
            "limitations",
            "card_owners",
            "approvals_required",
            "version_count",
            "latest_version",
            "aliases",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["owner", "created_at", "updated_at"]
        # Name rules and case-folded uniqueness are the service's to enforce (one message).
        extra_kwargs: dict[str, dict[str, Any]] = {"name": {"validators": []}}


class RegisteredModelDetailSerializer(RegisteredModelSerializer):
    versions_by_state = serializers.DictField(child=serializers.IntegerField(), read_only=True)

    class Meta(RegisteredModelSerializer.Meta):
        fields = [*RegisteredModelSerializer.Meta.fields, "versions_by_state"]


class RegisteredModelUpdateSerializer(RegisteredModelSerializer):
    class Meta(RegisteredModelSerializer.Meta):
        read_only_fields = ["name", "owner", "created_at", "updated_at"]


# --- versions --------------------------------------------------------------------------


class DatasetSerializer(serializers.ModelSerializer):
    class Meta:
        model = DatasetReference
        fields = ["name", "role", "uri", "content_hash"]


class ReviewSerializer(serializers.ModelSerializer):
    reviewer = serializers.CharField(source="reviewer.username")

    class Meta:
        model = Review
        fields = ["id", "reviewer", "decision", "comment", "created_at"]


class VersionSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    created_by = serializers.CharField(source="created_by.username")

    class Meta:
        model = ModelVersion
        fields = [
            "model",
            "number",
            "state",
            "state_changed_at",
            "framework",
            "artifact_format",
            "safe_format",
            "artifact_sha256",
            "artifact_size",
            "original_filename",
            "description",
            "tags",
            "metrics",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields


class ParentOutSerializer(serializers.Serializer):
    model = serializers.CharField(source="model.name")
    version = serializers.IntegerField(source="number")


class VersionDetailSerializer(VersionSerializer):
    parents = ParentOutSerializer(many=True)
    datasets = DatasetSerializer(many=True)
    reviews = ReviewSerializer(many=True)
    aliases: serializers.SlugRelatedField[Alias] = serializers.SlugRelatedField(
        many=True, read_only=True, slug_field="name"
    )
    labels_note = serializers.SerializerMethodField()

    def get_labels_note(self, obj: ModelVersion) -> str | None:
        """Says plainly when a model's labels are positions, not the original labels."""
        return contract_labels_note(obj.contract)

    class Meta(VersionSerializer.Meta):
        fields = [
            *VersionSerializer.Meta.fields,
            "params",
            "parents",
            "datasets",
            "code_repo",
            "code_commit",
            "training_run_id",
            "reference_rows",
            "reference_schema",
            "reference_sha256",
            "reference_label_column",
            # Quality on the labelled reference rows (core.quality_metrics), or {}.
            "baseline_quality",
            "signature",
            "contract",
            "labels_note",
            "validation_report",
            "validated_at",
            # The review policy this version entered review under (null before submit).
            "approvals_required",
            "reviews",
            "aliases",
        ]
        read_only_fields = fields


class ParentInSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=100)
    version = serializers.IntegerField(min_value=1)


class DatasetInSerializer(serializers.Serializer):
    uri = serializers.CharField(max_length=2000)
    content_hash = serializers.CharField(max_length=200, required=False, default="")
    name = serializers.CharField(max_length=200, required=False, default="")
    role = serializers.ChoiceField(
        DatasetRole.choices, required=False, default=DatasetRole.TRAINING
    )


class VersionMetadataSerializer(serializers.Serializer):
    """The `metadata` JSON object of an upload. Dataset URIs are recorded, never opened."""

    description = serializers.CharField(required=False, default="", allow_blank=True)
    params = serializers.DictField(required=False, default=dict)
    metrics = serializers.DictField(child=serializers.FloatField(), required=False, default=dict)
    tags = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list, max_length=50
    )
    parents = ParentInSerializer(many=True, required=False, default=list)
    datasets = DatasetInSerializer(many=True, required=False, default=list)
    code_repo = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)
    code_commit = serializers.RegexField(
        r"^[0-9a-fA-F]{7,64}$", required=False, default="", allow_blank=True
    )
    training_run_id = serializers.CharField(
        max_length=200, required=False, default="", allow_blank=True
    )
    feature_names = serializers.ListField(
        child=serializers.CharField(max_length=200),
        required=False,
        allow_null=True,
        default=None,
        max_length=10_000,
    )
    class_labels = serializers.ListField(
        child=serializers.JSONField(),
        required=False,
        allow_null=True,
        default=None,
        max_length=10_000,
    )

    # The reference data's column of true labels (checked against the file by the service).
    label_column = serializers.CharField(
        max_length=200, required=False, allow_null=True, default=None
    )

    def validate_feature_names(self, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise serializers.ValidationError("feature names must be distinct")
        return value

    def validate_class_labels(self, value: list[Any] | None) -> list[Any] | None:
        if value is None:
            return None
        if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
            raise serializers.ValidationError("class labels must be strings or integers")
        if len(set(value)) != len(value):
            raise serializers.ValidationError("class labels must be distinct")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # Dict keys and values escape the fields' own NUL check; PostgreSQL would refuse
        # them at the write (a 500). Named by the top-level key, as the upload form shows it.
        try:
            json_value_check(self.initial_data)
        except InvalidInput as exc:
            path = (exc.details or {}).get("field")
            top = path.split(".", 1)[0].split("[", 1)[0] if path else "non_field_errors"
            raise serializers.ValidationError({top: exc.message}) from None
        return attrs

    def to_metadata(self) -> VersionMetadata:
        data = dict(self.validated_data)
        data["parents"] = [ParentRef(**p) for p in data["parents"]]
        data["datasets"] = [DatasetRef(**d) for d in data["datasets"]]
        return VersionMetadata(**data)


class VersionUploadSerializer(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=True, use_url=False)
    framework = serializers.ChoiceField(
        Framework.choices,
        error_messages={
            "invalid_choice": "Unknown framework {input!r}; choose one of "
            + ", ".join(Framework.values)
            + "."
        },
    )
    metadata = serializers.CharField(required=False, default="{}")
    reference_data = serializers.FileField(required=False, allow_null=True, allow_empty_file=True)

    def validate_metadata(self, value: str) -> VersionMetadata:
        try:
            raw: Any = json.loads(value)
        except json.JSONDecodeError as exc:
            raise serializers.ValidationError(f"metadata is not valid JSON: {exc.msg}.") from exc
        except RecursionError:
            raise InvalidInput(
                f"metadata: JSON nests deeper than {MAX_JSON_DEPTH} levels.",
                code="json_too_deep",
                details={"field": "metadata", "max_depth": MAX_JSON_DEPTH},
            ) from None
        json_value_check(raw, field="metadata")  # NUL characters, depth: 400 naming the field
        if not isinstance(raw, dict):
            raise serializers.ValidationError(
                f"metadata must be a JSON object, not {type(raw).__name__}."
            )
        inner = VersionMetadataSerializer(data=raw)
        if not inner.is_valid():
            raise serializers.ValidationError(inner.errors)
        return inner.to_metadata()


class SubmitSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, default="", allow_blank=True)


class ReviewCreateSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(ReviewDecision.choices)
    comment = serializers.CharField(required=False, default="", allow_blank=True, max_length=10_000)


class AliasSetSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)
    protected = serializers.BooleanField(required=False, allow_null=True, default=None)
    reason = serializers.CharField(required=False, default="", allow_blank=True)
