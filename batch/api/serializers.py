from __future__ import annotations

from rest_framework import serializers

from batch.models import BatchJob


class BatchJobSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    version = serializers.IntegerField(source="version.number", allow_null=True, default=None)
    requested_version = serializers.IntegerField(
        source="requested_version.number", allow_null=True, default=None
    )
    schedule = serializers.CharField(source="schedule.name", allow_null=True, default=None)
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    rows_per_second = serializers.FloatField(read_only=True)
    eta_seconds = serializers.FloatField(read_only=True)
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
    chunk_rows = serializers.IntegerField(required=False, min_value=1, max_value=10_000_000)
    probabilities = serializers.BooleanField(required=False, default=False)


class BatchJobCancelSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="")
