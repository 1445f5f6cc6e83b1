from django.contrib import admin

from batch.models import BatchChunk, BatchJob, BatchSchedule

# A tuple of names suits both attributes' types (`fields` takes field groups, and a list of
# names is not a list of groups to mypy: lists are invariant).
_CHUNK_FIELDS = (
    "index",
    "row_start",
    "row_stop",
    "state",
    "attempts",
    "seconds",
    "worker",
    "error",
)


class BatchChunkInline(admin.TabularInline):
    model = BatchChunk
    fields = _CHUNK_FIELDS
    readonly_fields = _CHUNK_FIELDS
    extra = 0
    can_delete = False


@admin.register(BatchJob)
class BatchJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "model",
        "version",
        "alias",
        "state",
        "rows_done",
        "total_rows",
        "created_at",
    ]
    list_filter = ["state"]
    search_fields = ["model__name", "input_name"]
    readonly_fields = [f.name for f in BatchJob._meta.fields]
    inlines = [BatchChunkInline]


@admin.register(BatchSchedule)
class BatchScheduleAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "alias", "cron", "enabled", "next_run_at", "last_run_at"]
    list_filter = ["enabled"]
    search_fields = ["name", "model__name"]
    # Created through batch.services (path, alias and cron are checked there); here only
    # switched on or off.
    readonly_fields = [f.name for f in BatchSchedule._meta.fields if f.name != "enabled"]

    def has_add_permission(self, request) -> bool:
        return False
