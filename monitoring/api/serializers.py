from __future__ import annotations

from rest_framework import serializers

from deployments.models import Deployment, Rollout
from monitoring.choices import AlertKind
from monitoring.models import Alert, GuardBreach, WebhookDelivery, WebhookEndpoint
from monitoring.selectors import WINDOWS


class WindowQuerySerializer(serializers.Serializer):
    window = serializers.ChoiceField(choices=list(WINDOWS), default="1h")


class QualityQuerySerializer(WindowQuerySerializer):
    version = serializers.IntegerField(min_value=1, required=False)
    arm = serializers.CharField(max_length=16, required=False, allow_blank=True)


class LabelsSerializer(serializers.Serializer):
    labels = serializers.ListField(
        child=serializers.DictField(), help_text='[{"id": "<inference id>", "label": ..., "at"?}]'
    )


class DriftComputeSerializer(serializers.Serializer):
    seconds = serializers.IntegerField(min_value=60, max_value=7 * 86400, required=False)


class GuardBreachSerializer(serializers.ModelSerializer):
    rollback: serializers.PrimaryKeyRelatedField[Rollout] = serializers.PrimaryKeyRelatedField(
        read_only=True
    )

    class Meta:
        model = GuardBreach
        fields = ["id", "version", "rules", "action", "message", "evidence", "rollback", "at"]


class AlertSerializer(serializers.ModelSerializer):
    class Meta:
        model = Alert
        fields = ["id", "kind", "message", "payload", "created_at", "emailed_at"]


class WebhookEndpointSerializer(serializers.ModelSerializer):
    deployment: serializers.SlugRelatedField[Deployment] = serializers.SlugRelatedField(
        slug_field="name", read_only=True
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "name", "url", "kinds", "deployment", "active", "created_at"]


class WebhookEndpointCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    url = serializers.URLField(max_length=500)
    kinds = serializers.ListField(
        child=serializers.ChoiceField(choices=AlertKind.values), required=False, default=list
    )
    deployment = serializers.CharField(required=False, allow_blank=True, default="")


class WebhookDeliverySerializer(serializers.ModelSerializer):
    alert = AlertSerializer(read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "alert",
            "state",
            "attempts",
            "next_attempt_at",
            "last_status_code",
            "last_error",
            "log",
            "delivered_at",
            "created_at",
        ]


class WebhookEndpointUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    url = serializers.URLField(max_length=500, required=False)
    kinds = serializers.ListField(
        child=serializers.ChoiceField(choices=AlertKind.values), required=False
    )
    deployment = serializers.CharField(
        required=False, allow_blank=True, help_text="a deployment name; blank = every deployment"
    )
    active = serializers.BooleanField(required=False)
    rotate_secret = serializers.BooleanField(
        required=False, default=False, help_text="new secret, shown once in the answer"
    )

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({unknown[0]: "is not a webhook field."})
        return attrs


class WebhookEndpointSecretSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(
        read_only=True, allow_null=True, help_text="only when created or rotated"
    )

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]


# --- monitoring policy (shapes for the schema; monitoring_policy_update checks values) ------


class GuardRulesSerializer(serializers.Serializer):
    max_error_rate = serializers.FloatField(required=False, allow_null=True)
    max_p99_ms = serializers.FloatField(required=False, allow_null=True)
    drift = serializers.ChoiceField(choices=["drift", "warn"], required=False, allow_null=True)
    max_cost_per_prediction = serializers.FloatField(required=False, allow_null=True)
    min_requests = serializers.IntegerField(required=False, allow_null=True)
    window_seconds = serializers.IntegerField(required=False, allow_null=True)
    always = serializers.BooleanField(required=False, allow_null=True)
    max_accuracy_drop = serializers.FloatField(required=False, allow_null=True)
    max_mae_increase = serializers.FloatField(required=False, allow_null=True)
    min_labels = serializers.IntegerField(required=False, allow_null=True)
    max_missing_rate_increase = serializers.FloatField(required=False, allow_null=True)
    max_out_of_range_rate = serializers.FloatField(required=False, allow_null=True)
    max_new_category_rate = serializers.FloatField(required=False, allow_null=True)
    min_rows = serializers.IntegerField(required=False, allow_null=True)


class DriftThresholdsSerializer(serializers.Serializer):
    psi_warn = serializers.FloatField(required=False, allow_null=True)
    psi_drift = serializers.FloatField(required=False, allow_null=True)
    ks_warn = serializers.FloatField(required=False, allow_null=True)
    ks_drift = serializers.FloatField(required=False, allow_null=True)
    js_warn = serializers.FloatField(required=False, allow_null=True)
    js_drift = serializers.FloatField(required=False, allow_null=True)
    alpha = serializers.FloatField(required=False, allow_null=True)


class MonitoringPolicySerializer(serializers.Serializer):
    """A JSON merge patch: given keys replace, null removes an override."""

    guards = GuardRulesSerializer(required=False, allow_null=True)
    drift_thresholds = DriftThresholdsSerializer(required=False, allow_null=True)
    drift_window_seconds = serializers.IntegerField(required=False, allow_null=True)
    price_cpu_hour = serializers.DecimalField(
        max_digits=12, decimal_places=6, required=False, allow_null=True
    )
    price_gb_hour = serializers.DecimalField(
        max_digits=12, decimal_places=6, required=False, allow_null=True
    )


class EffectivePricesSerializer(serializers.Serializer):
    cpu_hour = serializers.FloatField()
    gb_hour = serializers.FloatField()


class EffectivePolicySerializer(serializers.Serializer):
    guards = serializers.DictField()
    guards_always = serializers.BooleanField()
    drift_thresholds = serializers.DictField(child=serializers.FloatField())
    drift_window_seconds = serializers.IntegerField()
    prices = EffectivePricesSerializer()


class MonitoringPolicyResponseSerializer(serializers.Serializer):
    deployment = serializers.CharField()
    policy = MonitoringPolicySerializer(help_text="the stored overrides")
    effective = EffectivePolicySerializer(help_text="what monitoring uses: overrides + defaults")
