from django.contrib import admin

from monitoring.models import (
    Alert,
    DriftWindow,
    GuardBreach,
    MonitoringPolicy,
    WebhookDelivery,
    WebhookEndpoint,
)


@admin.register(MonitoringPolicy)
class MonitoringPolicyAdmin(admin.ModelAdmin):
    list_display = ["deployment", "drift_window_seconds", "price_cpu_hour", "price_gb_hour"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records of what happened: written by the platform only."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(DriftWindow)
class DriftWindowAdmin(ReadOnlyAdmin):
    list_display = ["deployment", "version", "kind", "start", "end", "status", "live_rows"]
    list_filter = ["status", "kind"]


@admin.register(GuardBreach)
class GuardBreachAdmin(ReadOnlyAdmin):
    list_display = ["deployment", "version", "rules", "action", "at"]


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ["kind", "deployment", "message", "created_at"]
    list_filter = ["kind"]


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["name", "url", "deployment", "active"]
    exclude = ["secret"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["alert", "endpoint", "state", "attempts", "last_status_code", "delivered_at"]
    list_filter = ["state"]
