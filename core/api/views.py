from __future__ import annotations

import django_filters
from rest_framework import viewsets

from core.api.serializers import AuditEventSerializer
from core.choices import AuditAction, Capability
from core.selectors import audit_event_list


class AuditEventFilter(django_filters.FilterSet):
    action = django_filters.MultipleChoiceFilter(choices=AuditAction.choices)
    actor = django_filters.CharFilter(field_name="actor_name")
    object_type = django_filters.CharFilter()
    object_id = django_filters.CharFilter()
    since = django_filters.IsoDateTimeFilter(field_name="at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="at", lookup_expr="lt")


class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit log, newest first. Readable by every signed-in role; nobody writes here."""

    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    search_fields = ["object_repr", "reason", "actor_name"]
    ordering_fields = ["at"]
    required_capabilities = {"list": Capability.VIEW, "retrieve": Capability.VIEW}

    def get_queryset(self):
        return audit_event_list()
