"""HTTP adapters over batch services: parse, call one service, render."""

from __future__ import annotations

from typing import Any

from django.core.files.storage import default_storage
from django.db.models import QuerySet
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser
from rest_framework.response import Response

from batch import selectors, services
from batch.api.serializers import (
    AliasMoveSerializer,
    BatchJobCancelSerializer,
    BatchJobCreateSerializer,
    BatchJobSerializer,
    BatchScheduleCreateSerializer,
    BatchScheduleRollbackSerializer,
    BatchScheduleRolloutSerializer,
    BatchScheduleSerializer,
    BatchScheduleUpdateSerializer,
)
from batch.choices import JobState
from batch.models import BatchJob, BatchSchedule
from core.api.parsers import SafeJSONParser, StrictMultiPartParser
from core.api.schema import ErrorResponseSerializer
from core.choices import Capability
from core.errors import InvalidState, NotFound
from registry.selectors import model_get

C = Capability


class BatchJobViewSet(viewsets.GenericViewSet):
    serializer_class = BatchJobSerializer
    parser_classes = [SafeJSONParser, StrictMultiPartParser, FormParser]
    filterset_fields = ["state", "model__name"]
    ordering_fields = ["created_at", "id"]
    required_capabilities = {
        "list": C.VIEW,
        "retrieve": C.VIEW,
        "output": C.VIEW,
        "create": C.RUN_BATCH,
        "cancel": C.RUN_BATCH,
    }

    def get_queryset(self) -> QuerySet[BatchJob]:
        return selectors.batch_job_list()

    def get_object(self) -> BatchJob:
        raw = self.kwargs["pk"]
        if not raw.isascii() or not raw.isdigit():  # "abc", "1\x00": no such job, not a 500
            raise NotFound(f"No batch job {raw!r}.")
        return selectors.batch_job_get(job_id=int(raw))

    def list(self, request) -> Response:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(BatchJobSerializer(page, many=True).data)

    def retrieve(self, request, pk=None) -> Response:
        return Response(BatchJobSerializer(self.get_object()).data)

    @extend_schema(
        request={
            "multipart/form-data": BatchJobCreateSerializer,
            "application/json": BatchJobCreateSerializer,
        },
        responses={201: BatchJobSerializer},
    )
    def create(self, request) -> Response:
        data = BatchJobCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        job = services.batch_job_create(
            model=model_get(name=fields["model"], summary=False),
            actor=request.user,
            version_number=fields.get("version"),
            alias=fields["alias"],
            upload=fields.get("file"),
            input_path=fields["input_path"],
            id_column=fields["id_column"],
            chunk_rows=fields.get("chunk_rows"),
            probabilities=fields["probabilities"],
        )
        job = selectors.batch_job_get(job_id=job.pk)
        return Response(BatchJobSerializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=BatchJobCancelSerializer, responses={200: BatchJobSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None) -> Response:
        data = BatchJobCancelSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = services.batch_job_cancel(
            job=self.get_object(), actor=request.user, reason=data.validated_data["reason"]
        )
        return Response(BatchJobSerializer(selectors.batch_job_get(job_id=job.pk)).data)

    @extend_schema(
        responses={
            (200, "application/vnd.apache.parquet"): OpenApiTypes.BINARY,
            409: OpenApiResponse(ErrorResponseSerializer, "The job has not succeeded (yet)"),
        },
        description="The job's output as a Parquet file (an attachment).",
    )
    @action(detail=True, methods=["get"])
    def output(self, request, pk=None) -> FileResponse:
        job = self.get_object()
        if job.state != JobState.SUCCEEDED or not job.output_path:
            raise InvalidState(
                f"Batch job {job.pk} is {job.state}; its output exists once it has succeeded.",
                code="output_not_ready",
            )
        return FileResponse(
            default_storage.open(job.output_path, "rb"),
            as_attachment=True,
            filename=f"batch-job-{job.pk}.parquet",
            content_type="application/vnd.apache.parquet",
        )


class BatchScheduleViewSet(viewsets.GenericViewSet):
    """Cron-like schedules of a batch job on ``model@alias``. Rolling a schedule out (or
    back) moves its alias, so those two actions need the capability to set aliases."""

    lookup_value_regex = "[0-9]+"  # "abc" is no schedule: 404 from the router, not a 500

    serializer_class = BatchScheduleSerializer
    parser_classes = [SafeJSONParser]
    filterset_fields = ["enabled", "model__name"]
    ordering_fields = ["name", "next_run_at", "id"]
    required_capabilities = {
        "list": C.VIEW,
        "retrieve": C.VIEW,
        "create": C.RUN_BATCH,
        "partial_update": C.RUN_BATCH,
        "destroy": C.RUN_BATCH,
        "rollout": C.SET_ALIAS,
        "rollback": C.SET_ALIAS,
    }

    def get_queryset(self) -> QuerySet[BatchSchedule]:
        return selectors.batch_schedule_list()

    def get_object(self) -> BatchSchedule:
        schedule = self.get_queryset().filter(pk=int(self.kwargs["pk"])).first()
        if schedule is None:
            raise NotFound(f"No batch schedule {self.kwargs['pk']}.")
        return schedule

    def _render(self, schedule: BatchSchedule) -> dict[str, Any]:
        return BatchScheduleSerializer(self.get_queryset().get(pk=schedule.pk)).data

    def list(self, request) -> Response:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        assert page is not None  # DEFAULT_PAGINATION_CLASS paginates every list
        versions = selectors.alias_versions(schedules=page)
        return self.get_paginated_response(
            BatchScheduleSerializer(page, many=True, context={"alias_versions": versions}).data
        )

    def retrieve(self, request, pk=None) -> Response:
        return Response(BatchScheduleSerializer(self.get_object()).data)

    @extend_schema(request=BatchScheduleCreateSerializer, responses={201: BatchScheduleSerializer})
    def create(self, request) -> Response:
        data = BatchScheduleCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        schedule = services.batch_schedule_create(
            model=model_get(name=fields.pop("model"), summary=False), actor=request.user, **fields
        )
        return Response(self._render(schedule), status=status.HTTP_201_CREATED)

    @extend_schema(request=BatchScheduleUpdateSerializer, responses={200: BatchScheduleSerializer})
    def partial_update(self, request, pk=None) -> Response:
        data = BatchScheduleUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        schedule = services.batch_schedule_update(
            schedule=self.get_object(), actor=request.user, **data.validated_data
        )
        return Response(self._render(schedule))

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None) -> Response:
        services.batch_schedule_delete(schedule=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=BatchScheduleRolloutSerializer, responses={200: AliasMoveSerializer})
    @action(detail=True, methods=["post"])
    def rollout(self, request, pk=None) -> Response:
        """Point the schedule's alias at another approved version: the next run uses it."""
        data = BatchScheduleRolloutSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        alias = services.batch_schedule_rollout(
            schedule=self.get_object(),
            version_number=data.validated_data["version"],
            actor=request.user,
            reason=data.validated_data["reason"],
        )
        return Response(_alias_body(alias))

    @extend_schema(request=BatchScheduleRollbackSerializer, responses={200: AliasMoveSerializer})
    @action(detail=True, methods=["post"])
    def rollback(self, request, pk=None) -> Response:
        """Point the alias back at the version the schedule last ran before the current one."""
        data = BatchScheduleRollbackSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        alias = services.batch_schedule_rollback(
            schedule=self.get_object(), actor=request.user, reason=data.validated_data["reason"]
        )
        return Response(_alias_body(alias))


def _alias_body(alias) -> dict[str, Any]:
    return {"model": alias.model.name, "alias": alias.name, "version": alias.version.number}
