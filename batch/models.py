from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from batch.choices import ChunkState, InputFormat, InputSource, JobState
from registry.models import ModelVersion, RegisteredModel, name_validator


class BatchSchedule(models.Model):
    """Runs a batch job on whatever ``model@alias`` points at, on a cron-like schedule.

    Moving the alias to another approved version is how a scheduled job is rolled out;
    moving it back is its rollback.
    """

    name = models.CharField(max_length=100, validators=[name_validator])
    model = models.ForeignKey(
        RegisteredModel, on_delete=models.PROTECT, related_name="batch_schedules"
    )
    alias = models.CharField(max_length=64)
    # Five cron fields: minute hour day-of-month month day-of-week (UTC).
    cron = models.CharField(max_length=100)
    input_path = models.CharField(max_length=1000)
    id_column = models.CharField(max_length=200, blank=True)
    probabilities = models.BooleanField(default=False)
    chunk_rows = models.PositiveIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(db_index=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    # Why the last due run could not start a job (alias gone, input missing...).
    last_error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(Lower("name"), name="batch_schedule_name_unique_casefold"),
        ]

    def __str__(self) -> str:
        return self.name


class BatchJob(models.Model):
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="batch_jobs")
    # What was asked for: a version, or an alias resolved when the job starts.
    requested_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    alias = models.CharField(max_length=64, blank=True)
    # What ran: set once, when the job starts, and never changed.
    version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="batch_jobs"
    )
    bento_tag = models.CharField(max_length=200, blank=True)
    schedule = models.ForeignKey(
        BatchSchedule, on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    state = models.CharField(
        max_length=16, choices=JobState.choices, default=JobState.QUEUED, db_index=True
    )
    input_source = models.CharField(max_length=8, choices=InputSource.choices)
    # Storage name of an upload, or the resolved real path under an allowed root.
    input_path = models.CharField(max_length=1000)
    input_name = models.CharField(max_length=1000, blank=True)
    input_format = models.CharField(max_length=8, choices=InputFormat.choices)
    id_column = models.CharField(max_length=200, blank=True)
    probabilities = models.BooleanField(default=False)
    chunk_rows = models.PositiveIntegerField()
    # Storage folder of the staged input: one Arrow IPC file per chunk (files.staged_name).
    staged_path = models.CharField(max_length=255, blank=True)
    total_rows = models.BigIntegerField(null=True, blank=True)
    rows_done = models.BigIntegerField(default=0)
    chunks_total = models.PositiveIntegerField(default=0)
    # Chunks [0, chunks_staged) have their input staged: only those can be claimed. All of
    # them before the job runs when every row has to be read to validate the input (CSV, or
    # a Parquet column that needs a checked cast); otherwise they are staged while the
    # first chunks predict.
    chunks_staged = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0)
    output_path = models.CharField(max_length=255, blank=True)
    output_rows = models.BigIntegerField(null=True, blank=True)
    output_sha256 = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    error_details = models.JSONField(default=dict, blank=True)
    # Claim of the prepare/join step (a worker killed mid-step loses it when it expires).
    step_token = models.UUIDField(null=True, blank=True)
    step_lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    state_changed_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(requested_version__isnull=False) | ~models.Q(alias=""),
                name="batch_job_version_or_alias",
            ),
            models.CheckConstraint(
                condition=models.Q(rows_done__gte=0) & models.Q(chunk_rows__gte=1),
                name="batch_job_counts_sane",
            ),
        ]

    def __str__(self) -> str:
        return f"batch job {self.pk} ({self.model.name})"

    @property
    def rows_per_second(self) -> float | None:
        if not self.started_at or not self.rows_done:
            return None
        end = self.finished_at or timezone.now()
        seconds = (end - self.started_at).total_seconds()
        return self.rows_done / seconds if seconds > 0 else None

    @property
    def eta_seconds(self) -> float | None:
        rate = self.rows_per_second
        if self.state != JobState.RUNNING or not rate or self.total_rows is None:
            return None
        return max(0.0, (self.total_rows - self.rows_done) / rate)


class BatchChunk(models.Model):
    """Rows [row_start, row_stop) of a job: record batch ``index`` of its staged input."""

    job = models.ForeignKey(BatchJob, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    row_start = models.BigIntegerField()
    row_stop = models.BigIntegerField()
    state = models.CharField(max_length=16, choices=ChunkState.choices, default=ChunkState.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    claim_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["job", "index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="batch_chunk_unique_index"),
            models.CheckConstraint(
                condition=models.Q(row_stop__gt=models.F("row_start")),
                name="batch_chunk_rows_nonempty",
            ),
        ]
        indexes = [models.Index(fields=["state", "lease_expires_at"])]

    def __str__(self) -> str:
        return f"chunk {self.index} of job {self.job_id}"

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start
