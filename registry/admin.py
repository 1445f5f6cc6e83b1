from django.contrib import admin

from registry.models import Alias, DatasetReference, ModelVersion, RegisteredModel, Review


class VersionInline(admin.TabularInline):
    model = ModelVersion
    fields = ("number", "state", "framework", "artifact_sha256", "created_by", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "team", "approvals_required", "created_at"]
    search_fields = ["name", "description", "team"]
    inlines = [VersionInline]


class DatasetInline(admin.TabularInline):
    model = DatasetReference
    extra = 0


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["__str__", "state", "framework", "artifact_format", "created_by", "created_at"]
    list_filter = ["state", "framework"]
    search_fields = ["model__name", "description"]
    list_select_related = ["model", "created_by"]
    # State and artifact change only through services (state machine, immutability).
    readonly_fields = [
        "model",
        "number",
        "state",
        "state_changed_at",
        "framework",
        "artifact_format",
        "safe_format",
        "artifact_path",
        "artifact_sha256",
        "artifact_size",
        "original_filename",
        "reference_path",
        "reference_sha256",
        "signature",
        "validation_report",
        "created_by",
        "created_at",
        "validated_at",
        "validation_started_at",
    ]
    inlines = [DatasetInline]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ["version", "reviewer", "decision", "created_at"]
    readonly_fields = ["version", "reviewer", "decision", "comment", "evidence", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Alias)
class AliasAdmin(admin.ModelAdmin):
    list_display = ["__str__", "version", "protected", "updated_by", "updated_at"]
    readonly_fields = ["model", "name", "version", "protected", "updated_by", "updated_at"]

    def has_add_permission(self, request) -> bool:
        return False
