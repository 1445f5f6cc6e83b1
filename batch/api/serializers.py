from __future__ import annotations

from typing import Any

from rest_framework import serializers

from batch.models import BatchJob, BatchSchedule


class BatchJobSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    version = serializers.IntegerField(source="version.number", allow_null=True, default=None)
    requested_version = serializers.IntegerField(
        source="requested_version.number", allow_null=True, default=None
    )
    schedule = serializers.CharField(source="schedule.name", allow_null=True, default=None)
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    # Null until the job has rows done (rate) and while it is not running (eta).
    rows_per_second = serializers.FloatField(read_only=True, allow_null=True)
    eta_seconds = serializers.FloatField(read_only=True, allow_null=True)
    progress = serializers.SerializerMethodField()

    class Meta:
        model = BatchJob
        fields = [
            "id",
            "model",
            "alias",
            "requested_version",
            "version",
            "bento_tag",
            "schedule",
            "state",
            "input_source",
            "input_name",
            "input_format",
            "id_column",
            "probabilities",
            "chunk_rows",
            "total_rows",
            "rows_done",
            "chunks_total",
            "chunks_done",
            "progress",
            "rows_per_second",
            "eta_seconds",
            "output_rows",
            "output_sha256",
            "error",
            "error_details",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
        ]

    def get_progress(self, job: BatchJob) -> float | None:
        if not job.total_rows:
            return None
        return round(job.rows_done / job.total_rows, 4)


class BatchJobCreateSerializer(serializers.Serializer):
    model = serializers.CharField()
    version = serializers.IntegerField(required=False, min_value=1)
    alias = serializers.CharField(required=False, allow_blank=True, default="")
    file = serializers.FileField(required=False, allow_empty_file=True)
    input_path = serializers.CharField(required=False, allow_blank=True, default="")
    id_column = serializers.CharField(required=False, allow_blank=True, default="")
    chunk_rows = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=10_000_000,
        help_text="rows per chunk; by default about 64 MB of input values, at most 250,000 "
        "rows (MODELYARD_BATCH_CHUNK_MB, MODELYARD_BATCH_CHUNK_ROWS)",
    )
    probabilities = serializers.BooleanField(required=False, default=False)


class BatchJobCancelSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class BatchScheduleSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    created_by = serializers.CharField(source="created_by.username")
    alias_version = serializers.SerializerMethodField(
        help_text="the version the alias points at now: what the next run will use"
    )

    class Meta:
        model = BatchSchedule
        fields = [
            "id",
            "name",
            "model",
            "alias",
            "alias_version",
            "cron",
            "input_path",
            "id_column",
            "probabilities",
            "chunk_rows",
            "enabled",
            "next_run_at",
            "last_run_at",
            "last_error",
            "created_by",
            "created_at",
        ]

    def get_alias_version(self, schedule: BatchSchedule) -> int | None:
        versions = self.context.get("alias_versions")
        if versions is not None:
            return versions.get((schedule.model_id, schedule.alias))
        from registry.models import Alias

        alias = (
            Alias.objects.filter(model_id=schedule.model_id, name=schedule.alias)
            .values_list("version__number", flat=True)
            .first()
        )
        return alias


class _NoUnknownFields(serializers.Serializer):
    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({unknown[0]: "is not a field of a batch schedule."})
        return attrs


class BatchScheduleCreateSerializer(_NoUnknownFields):
    name = serializers.CharField(max_length=100)
    model = serializers.CharField()
    alias = serializers.CharField(max_length=64)
    cron = serializers.CharField(
        max_length=100, help_text="five fields, UTC: minute hour day-of-month month day-of-week"
    )
    input_path = serializers.CharField(max_length=1000)
    id_column = serializers.CharField(required=False, allow_blank=True, default="")
    probabilities = serializers.BooleanField(required=False, default=False)
    chunk_rows = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=10_000_000
    )


class BatchScheduleUpdateSerializer(_NoUnknownFields):
    alias = serializers.CharField(max_length=64, required=False)
    cron = serializers.CharField(max_length=100, required=False)
    input_path = serializers.CharField(max_length=1000, required=False)
    id_column = serializers.CharField(required=False, allow_blank=True)
    probabilities = serializers.BooleanField(required=False)
    chunk_rows = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=10_000_000
    )
    enabled = serializers.BooleanField(required=False)


class BatchScheduleRolloutSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class BatchScheduleRollbackSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class AliasMoveSerializer(serializers.Serializer):
    model = serializers.CharField()
    alias = serializers.CharField()
    version = serializers.IntegerField()
