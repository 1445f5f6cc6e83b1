from __future__ import annotations

from rest_framework import serializers

from monitoring.choices import AlertKind
from monitoring.models import Alert, GuardBreach, WebhookDelivery, WebhookEndpoint
from monitoring.selectors import WINDOWS


class WindowQuerySerializer(serializers.Serializer):
    window = serializers.ChoiceField(choices=list(WINDOWS), default="1h")


class DriftComputeSerializer(serializers.Serializer):
    seconds = serializers.IntegerField(min_value=60, max_value=7 * 86400, required=False)


class GuardBreachSerializer(serializers.ModelSerializer):
    rollback = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = GuardBreach
        fields = ["id", "version", "rules", "action", "message", "evidence", "rollback", "at"]


class AlertSerializer(serializers.ModelSerializer):
    class Meta:
        model = Alert
        fields = ["id", "kind", "message", "payload", "created_at", "emailed_at"]


class WebhookEndpointSerializer(serializers.ModelSerializer):
    deployment = serializers.SlugRelatedField(slug_field="name", read_only=True)

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
