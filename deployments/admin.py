from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from deployments.models import Build, Deployment, DeploymentKey, Rollout, Slot


class SlotInline(admin.TabularInline):
    model = Slot
    fields = readonly_fields = ("color", "version", "state", "bento_tag", "url", "updated_at")
    extra = 0
    can_delete = False


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "environment", "live_slot", "bake_seconds"]
    list_filter = ["environment"]
    search_fields = ["name"]
    readonly_fields = ["live_slot", "created_by", "created_at"]
    inlines = [SlotInline]


@admin.register(Rollout)
class RolloutAdmin(admin.ModelAdmin):
    """Read-only: rollouts change only through the state machine."""

    list_display = ["id", "deployment", "kind", "version", "state", "created_at"]
    list_filter = ["state", "kind"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Rollout | None = None) -> bool:
        return False


@admin.register(Build)
class BuildAdmin(admin.ModelAdmin):
    list_display = ["version", "state", "bento_tag", "seconds", "finished_at"]
    readonly_fields = [
        "version",
        "state",
        "bento_tag",
        "archive_path",
        "log",
        "error",
        "seconds",
        "started_at",
        "finished_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(DeploymentKey)
class DeploymentKeyAdmin(admin.ModelAdmin):
    list_display = ["deployment", "name", "created_at", "revoked_at"]
    readonly_fields = ["deployment", "name", "digest", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
