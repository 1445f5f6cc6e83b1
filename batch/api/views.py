"""HTTP adapters over batch services: parse, call one service, render."""

from __future__ import annotations

from django.core.files.storage import default_storage
from django.http import FileResponse
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser
from rest_framework.response import Response

from batch import selectors, services
from batch.api.serializers import (
    BatchJobCancelSerializer,
    BatchJobCreateSerializer,
    BatchJobSerializer,
)
from batch.choices import JobState
from core.api.parsers import StrictMultiPartParser
from core.choices import Capability
from core.errors import InvalidState
from registry.selectors import model_get

C = Capability


class BatchJobViewSet(viewsets.GenericViewSet):
    serializer_class = BatchJobSerializer
    parser_classes = [JSONParser, StrictMultiPartParser, FormParser]
    filterset_fields = ["state", "model__name"]
    ordering_fields = ["created_at", "id"]
    required_capabilities = {
        "list": C.VIEW,
        "retrieve": C.VIEW,
        "output": C.VIEW,
        "create": C.RUN_BATCH,
        "cancel": C.RUN_BATCH,
    }

    def get_queryset(self):
        return selectors.batch_job_list()

    def get_object(self):
        return selectors.batch_job_get(job_id=int(self.kwargs["pk"]))

    def list(self, request):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(BatchJobSerializer(page, many=True).data)

    def retrieve(self, request, pk=None):
        return Response(BatchJobSerializer(self.get_object()).data)

    @extend_schema(
        request={
            "multipart/form-data": BatchJobCreateSerializer,
            "application/json": BatchJobCreateSerializer,
        },
        responses={201: BatchJobSerializer},
    )
    def create(self, request):
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
    def cancel(self, request, pk=None):
        data = BatchJobCancelSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = services.batch_job_cancel(
            job=self.get_object(), actor=request.user, reason=data.validated_data["reason"]
        )
        return Response(BatchJobSerializer(selectors.batch_job_get(job_id=job.pk)).data)

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @action(detail=True, methods=["get"])
    def output(self, request, pk=None):
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
