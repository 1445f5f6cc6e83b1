from django.db import models


class JobState(models.TextChoices):
    QUEUED = "queued"  # created; waiting for a worker to resolve the version and stage input
    PREPARING = "preparing"  # input validated and staged, one record batch per chunk
    RUNNING = "running"  # chunks run on the `batch` queue
    JOINING = "joining"  # every chunk done; joining them into the output file
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.PREPARING, JobState.RUNNING, JobState.JOINING)
CANCELLABLE_JOB_STATES = (JobState.QUEUED, JobState.PREPARING, JobState.RUNNING)


class ChunkState(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class InputSource(models.TextChoices):
    UPLOAD = "upload"
    PATH = "path"


class InputFormat(models.TextChoices):
    CSV = "csv"
    PARQUET = "parquet"
