from __future__ import annotations

from rest_framework import serializers

from core.models import AuditEvent


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "id", "at", "actor_id", "actor_name", "via", "action", "object_type", "object_id",
            "object_repr", "reason", "before", "after",
        ]  # fmt: skip
        read_only_fields = fields
