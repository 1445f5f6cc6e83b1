from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from deployments.choices import Environment, RolloutState, RolloutStrategy
from deployments.models import Deployment, DeploymentKey, Rollout, Slot
from deployments.services.progressive import ShadowPlanSerializer, canary_weight
from deployments.services.serving import SERVING_FIELDS, serving_settings


class SlotReplicaSerializer(serializers.Serializer):
    """One server of a slot as last seen (``Slot.replicas``); only ``ready`` ones get traffic."""

    index = serializers.IntegerField()
    url = serializers.CharField()
    state = serializers.ChoiceField(choices=["ready", "starting", "dead", "draining"])


class SlotSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.number", allow_null=True, default=None)
    replicas = SlotReplicaSerializer(many=True, read_only=True)

    class Meta:
        model = Slot
        fields = ["color", "version", "state", "bento_tag", "url", "replicas", "updated_at"]


class RolloutSerializer(serializers.ModelSerializer):
    deployment = serializers.CharField(source="deployment.name")
    version = serializers.IntegerField(source="version.number")
    previous_version = serializers.IntegerField(
        source="previous_version.number", allow_null=True, default=None
    )
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    canary_weight = serializers.SerializerMethodField()

    class Meta:
        model = Rollout
        fields = [
            "id",
            "deployment",
            "kind",
            "version",
            "alias",
            "previous_version",
            "target_slot",
            "state",
            "steps",
            "error",
            "reason",
            "bake_until",
            "strategy",
            "plan",
            "canary_step",
            "canary_weight",
            "paused",
            "judgement",
            "created_by",
            "created_at",
            "state_changed_at",
            "finished_at",
        ]

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_canary_weight(self, rollout: Rollout) -> int | None:
        """Percent of requests on the canary now; null unless it is taking traffic."""
        if rollout.state != RolloutState.CANARY:  # a shadow promoted to a canary too
            return None
        return canary_weight(rollout) // 100


class DeploymentSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    slots = SlotSerializer(many=True, read_only=True)
    live_version = serializers.SerializerMethodField()
    endpoint = serializers.SerializerMethodField()
    serving = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "name",
            "model",
            "environment",
            "description",
            "bake_seconds",
            "guard_policy",
            "live_slot",
            "live_version",
            "follow_alias",
            "serving",
            "slots",
            "endpoint",
            "created_at",
        ]

    def get_live_version(self, obj: Deployment) -> int | None:
        for slot in obj.slots.all():
            if slot.color == obj.live_slot and slot.version is not None:
                return slot.version.number
        return None

    def get_serving(self, obj: Deployment) -> dict[str, Any]:
        return serving_settings(obj)

    def get_endpoint(self, obj: Deployment) -> str:
        return f"{settings.MODELYARD_GATEWAY_URL}/d/{obj.name}/predict"


class DeploymentDetailSerializer(DeploymentSerializer):
    current_rollout = RolloutSerializer(read_only=True, allow_null=True)

    class Meta(DeploymentSerializer.Meta):
        fields = [*DeploymentSerializer.Meta.fields, "current_rollout"]


class DeploymentCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    model = serializers.CharField(max_length=100)
    environment = serializers.ChoiceField(Environment.choices)
    description = serializers.CharField(required=False, default="", allow_blank=True)
    bake_seconds = serializers.IntegerField(
        required=False, default=300, min_value=0, max_value=7 * 24 * 3600
    )
    guard_policy = serializers.DictField(required=False, default=dict)
    serving = serializers.DictField(
        required=False,
        default=dict,
        help_text=f"Serving settings, any of: {', '.join(SERVING_FIELDS)}.",
    )


class ServingUpdateSerializer(serializers.Serializer):
    serving = serializers.DictField(help_text=f"Any of: {', '.join(SERVING_FIELDS)}.")


class RolloutCreateSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, required=False, default=None, allow_null=True)
    alias = serializers.CharField(
        max_length=64,
        required=False,
        default="",
        allow_blank=True,
        help_text="Roll out the version this alias points at (instead of 'version').",
    )
    reason = serializers.CharField(required=False, default="", allow_blank=True)
    strategy = serializers.ChoiceField(
        choices=RolloutStrategy.choices, required=False, default=RolloutStrategy.BLUE_GREEN
    )
    plan = ShadowPlanSerializer(
        required=False,
        default=None,
        help_text="For 'canary' and 'shadow': steps, limits, judge; mirror_percent (shadow).",
    )


class CanaryActionSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, default="", allow_blank=True, max_length=500)


class FollowSerializer(serializers.Serializer):
    alias = serializers.CharField(
        max_length=64, allow_blank=True, help_text="A protected alias to follow; '' to stop."
    )
    reason = serializers.CharField(required=False, default="", allow_blank=True, max_length=500)


class RollbackSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, default="", allow_blank=True)


class KeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, default="default")


class KeyRevokeSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, default="", allow_blank=True, max_length=500)


class DeploymentKeySerializer(serializers.ModelSerializer):
    """A key as listed: never its value (only shown once, on create) nor its digest."""

    active = serializers.SerializerMethodField()

    class Meta:
        model = DeploymentKey
        fields = ["id", "name", "created_at", "revoked_at", "active"]

    def get_active(self, obj: DeploymentKey) -> bool:
        return obj.revoked_at is None


class DeploymentKeyCreatedSerializer(DeploymentKeySerializer):
    key = serializers.CharField(help_text="The key itself; shown this once, never again.")

    class Meta(DeploymentKeySerializer.Meta):
        fields = [*DeploymentKeySerializer.Meta.fields, "key"]
