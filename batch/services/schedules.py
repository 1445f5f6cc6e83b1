"""Batch schedules: cron-like runs of a job on whatever an alias points at.

A beat task looks for due schedules every ``MODELYARD_BATCH_SCHEDULE_TICK_SECONDS``; each
due schedule is claimed by a conditional UPDATE of its ``next_run_at`` (so two beats, or a
redelivered tick, start one job, not two). Cron fields are parsed by Celery's own crontab,
in UTC. Moving the alias is the batch rollout, moving it back the rollback; both audited.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import User
from batch.choices import JobState
from batch.models import BatchJob, BatchSchedule
from batch.services import inputs
from batch.services.jobs import batch_job_create
from core.choices import AuditAction
from core.errors import Conflict, DomainError, InvalidInput, InvalidState, NotFound
from core.services import audit_record
from registry.choices import VersionState
from registry.models import Alias, RegisteredModel, name_validator
from registry.services.aliases import alias_set

logger = logging.getLogger(__name__)


def cron_next(cron: str, *, after: datetime) -> datetime:
    """The first time after ``after`` that the five-field cron expression names (UTC)."""
    from celery.schedules import crontab

    fields = cron.split()
    if len(fields) != 5:
        raise InvalidInput(
            "cron needs five fields: minute hour day-of-month month day-of-week.", code="bad_cron"
        )
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        schedule = crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month,
            day_of_week=day_of_week,
            nowfun=lambda: after,
        )
        # Celery answers "how long from now until the run after last_run_at".
        remaining: timedelta = schedule.remaining_estimate(after)
        return after + remaining
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"cron {cron!r} is not valid: {exc}", code="bad_cron") from exc


@transaction.atomic
def batch_schedule_create(
    *,
    name: str,
    model: RegisteredModel,
    alias: str,
    cron: str,
    input_path: str,
    actor: User,
    id_column: str = "",
    probabilities: bool = False,
    chunk_rows: int | None = None,
) -> BatchSchedule:
    """A schedule that runs a job on ``model@alias`` over a path under the allowed roots."""
    try:
        name_validator(name)
    except ValidationError as exc:
        raise InvalidInput(f"name: {exc.messages[0]}") from exc
    _alias_check(model, alias)
    _chunk_rows_check(chunk_rows)
    next_run = cron_next(cron, after=timezone.now())
    inputs.input_path_resolve(input_path)
    try:
        with transaction.atomic():
            schedule = BatchSchedule.objects.create(
                name=name,
                model=model,
                alias=alias,
                cron=cron,
                input_path=input_path,
                id_column=id_column,
                probabilities=probabilities,
                chunk_rows=chunk_rows,
                next_run_at=next_run,
                created_by=actor,
            )
    except IntegrityError as exc:
        raise Conflict(f"A batch schedule named {name!r} exists.", code="name_taken") from exc
    audit_record(
        actor=actor,
        action=AuditAction.BATCH_SCHEDULE_CREATED,
        obj=schedule,
        after=_schedule_document(schedule),
    )
    return schedule


def _schedule_document(schedule: BatchSchedule) -> dict[str, Any]:
    return {
        "name": schedule.name,
        "model": schedule.model.name,
        "alias": schedule.alias,
        "cron": schedule.cron,
        "input_path": schedule.input_path,
        "id_column": schedule.id_column,
        "probabilities": schedule.probabilities,
        "chunk_rows": schedule.chunk_rows,
        "enabled": schedule.enabled,
    }


def _alias_check(model: RegisteredModel, alias: str) -> None:
    if not Alias.objects.filter(model=model, name=alias).exists():
        raise NotFound(f"{model.name} has no alias {alias!r}.", code="unknown_alias")


def _chunk_rows_check(chunk_rows: int | None) -> None:
    if chunk_rows is not None and not 1 <= chunk_rows <= 10_000_000:
        raise InvalidInput(
            f"chunk_rows must be between 1 and 10,000,000, not {chunk_rows}.", code="invalid"
        )


_UNSET: Any = object()


@transaction.atomic
def batch_schedule_update(
    *,
    schedule: BatchSchedule,
    actor: User,
    alias: str | None = None,
    cron: str | None = None,
    input_path: str | None = None,
    id_column: str | None = None,
    probabilities: bool | None = None,
    chunk_rows: int | None = _UNSET,
    enabled: bool | None = None,
) -> BatchSchedule:
    """Change what is given; a new cron (or re-enabling) sets the next run from now."""
    schedule = (
        BatchSchedule.objects.select_for_update(of=("self",))
        .select_related("model", "created_by")
        .get(pk=schedule.pk)
    )
    before = _schedule_document(schedule)
    if alias is not None:
        _alias_check(schedule.model, alias)
        schedule.alias = alias
    if input_path is not None:
        inputs.input_path_resolve(input_path)
        schedule.input_path = input_path
    if id_column is not None:
        schedule.id_column = id_column
    if probabilities is not None:
        schedule.probabilities = probabilities
    if chunk_rows is not _UNSET:
        _chunk_rows_check(chunk_rows)
        schedule.chunk_rows = chunk_rows
    if cron is not None:
        schedule.next_run_at = cron_next(cron, after=timezone.now())
        schedule.cron = cron
    if enabled is not None:
        if enabled and not schedule.enabled:
            # Runs missed while disabled are skipped, not caught up all at once.
            schedule.next_run_at = cron_next(schedule.cron, after=timezone.now())
        schedule.enabled = enabled
    schedule.save()
    after = _schedule_document(schedule)
    if after != before:
        audit_record(
            actor=actor,
            action=AuditAction.BATCH_SCHEDULE_UPDATED,
            obj=schedule,
            before=before,
            after=after,
        )
    return schedule


@transaction.atomic
def batch_schedule_delete(*, schedule: BatchSchedule, actor: User) -> None:
    """Remove a schedule; the jobs it started stay (their ``schedule`` becomes empty)."""
    schedule = (
        BatchSchedule.objects.select_for_update(of=("self",))
        .select_related("model")
        .get(pk=schedule.pk)
    )
    audit_record(
        actor=actor,
        action=AuditAction.BATCH_SCHEDULE_DELETED,
        obj=schedule,
        before=_schedule_document(schedule),
    )
    schedule.delete()


def batch_schedule_run(*, schedule: BatchSchedule, now: datetime | None = None) -> BatchJob | None:
    """Start the schedule's job if it is due and this caller claims the run."""
    now = now or timezone.now()
    following = cron_next(schedule.cron, after=max(now, schedule.next_run_at))
    claimed = BatchSchedule.objects.filter(
        pk=schedule.pk, enabled=True, next_run_at=schedule.next_run_at, next_run_at__lte=now
    ).update(next_run_at=following, last_run_at=now)
    if not claimed:
        return None
    try:
        with transaction.atomic():
            # Locked so the alias cannot move between naming the version and pinning it.
            alias = (
                Alias.objects.select_for_update(of=("self",))
                .select_related("version")
                .filter(model=schedule.model, name=schedule.alias)
                .first()
            )
            job = batch_job_create(
                model=schedule.model,
                actor=schedule.created_by,
                alias=schedule.alias,
                input_path=schedule.input_path,
                id_column=schedule.id_column,
                probabilities=schedule.probabilities,
                chunk_rows=schedule.chunk_rows,
                schedule=schedule,
            )
            # Pin the version the alias names now: the job runs what the audit says it
            # fired, even if the alias moves before a worker prepares it.
            assert alias is not None  # batch_job_create refused a missing alias
            version = alias.version
            BatchJob.objects.filter(pk=job.pk).update(version=version)
            job.version = version
            audit_record(
                actor=None,
                action=AuditAction.BATCH_SCHEDULE_FIRED,
                obj=schedule,
                reason=f"due at {schedule.next_run_at.isoformat()}",
                after={
                    "job": job.pk,
                    "model": schedule.model.name,
                    "alias": schedule.alias,
                    "version": version.number,
                    "version_id": version.pk,
                },
            )
    except DomainError as exc:
        logger.warning("batch schedule %s could not start: %s", schedule.name, exc.message)
        BatchSchedule.objects.filter(pk=schedule.pk).update(last_error=exc.message[:5000])
        return None
    BatchSchedule.objects.filter(pk=schedule.pk).update(last_error="")
    return job


def batch_schedules_due(*, now: datetime | None = None) -> list[BatchJob]:
    """Start every due schedule's job (each at most once per due time)."""
    now = now or timezone.now()
    jobs = []
    for schedule in BatchSchedule.objects.select_related("model", "created_by").filter(
        enabled=True, next_run_at__lte=now
    ):
        job = batch_schedule_run(schedule=schedule, now=now)
        if job is not None:
            jobs.append(job)
    return jobs


def _alias_version_number(schedule: BatchSchedule) -> int | None:
    alias = (
        Alias.objects.select_related("version")
        .filter(model=schedule.model, name=schedule.alias)
        .first()
    )
    return alias.version.number if alias else None


@transaction.atomic
def batch_schedule_rollout(
    *, schedule: BatchSchedule, version_number: int, actor: User, reason: str = ""
) -> Alias:
    """Point the schedule's alias at a new approved version: the next run uses it."""
    version = schedule.model.versions.filter(number=version_number).first()
    if version is None:
        raise NotFound(f"{schedule.model.name} has no version {version_number}.")
    if version.state != VersionState.APPROVED:
        raise InvalidState(
            f"{version} is {version.state}; a batch rollout needs an approved version.",
            code="version_not_approved",
        )
    # alias_set writes the audit event (before/after version); the reason names the rollout.
    return alias_set(
        model=schedule.model,
        name=schedule.alias,
        version_number=version_number,
        actor=actor,
        reason=f"batch rollout (schedule {schedule.name})" + (f": {reason}" if reason else ""),
    )


@transaction.atomic
def batch_schedule_rollback(*, schedule: BatchSchedule, actor: User, reason: str = "") -> Alias:
    """Point the alias back at the version the schedule last ran before the current one."""
    current = _alias_version_number(schedule)
    previous = (
        BatchJob.objects.filter(schedule=schedule, state=JobState.SUCCEEDED, version__isnull=False)
        .filter(~Q(version__number=current))
        .select_related("version")
        .order_by("-created_at", "-id")
        .first()
    )
    if previous is None:
        raise InvalidState(
            f"Schedule {schedule.name} has not run any version but v{current}; "
            "there is nothing to roll back to."
        )
    assert previous.version is not None  # filtered on version__isnull=False
    return alias_set(
        model=schedule.model,
        name=schedule.alias,
        version_number=previous.version.number,
        actor=actor,
        reason=f"batch rollback (schedule {schedule.name}, back to the version of job "
        f"{previous.pk})" + (f": {reason}" if reason else ""),
    )
