"""HTTP adapters over registry services and selectors: parse, call one service, render."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import ApiToken
from accounts.permissions import request_actor
from core.api.parsers import SafeJSONParser, StrictMultiPartParser
from core.choices import Capability
from core.errors import NotFound
from registry import selectors, services
from registry.api.serializers import (
    AliasSerializer,
    AliasSetSerializer,
    RegisteredModelDetailSerializer,
    RegisteredModelSerializer,
    RegisteredModelUpdateSerializer,
    ReviewCreateSerializer,
    ReviewSerializer,
    SubmitSerializer,
    VersionDetailSerializer,
    VersionSerializer,
    VersionUploadSerializer,
)
from registry.choices import Framework, VersionState
from registry.models import ModelVersion, RegisteredModel

C = Capability


def _token(request: Request) -> ApiToken | None:
    """The API token whose scopes narrow this request's role (None for a session)."""
    return request.auth if isinstance(request.auth, ApiToken) else None


class ModelFilter(django_filters.FilterSet):
    tag = django_filters.CharFilter(field_name="tags", lookup_expr="contains", method="filter_tag")
    owner = django_filters.CharFilter(field_name="owner__username")
    team = django_filters.CharFilter()

    class Meta:
        model = RegisteredModel
        fields = ["owner", "team"]

    def filter_tag(self, queryset: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        return queryset.filter(tags__contains=[value])


class RegisteredModelViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    lookup_field = "name"
    lookup_value_regex = r"[^/]+"
    filterset_class = ModelFilter
    search_fields = ["name", "description", "tags", "team"]
    ordering_fields = ["name", "created_at", "updated_at"]
    required_capabilities = {
        "list": C.VIEW,
        "retrieve": C.VIEW,
        "create": C.MANAGE_MODELS,
        # Card fields need manage_models, the review policy needs review: the service
        # decides per field (registry.services.models.model_update).
        "partial_update": (C.MANAGE_MODELS, C.REVIEW),
    }

    def get_queryset(self) -> QuerySet[RegisteredModel]:
        return selectors.model_list()

    def get_object(self) -> RegisteredModel:
        return selectors.model_get(name=self.kwargs["name"])

    def get_serializer_class(self) -> type[RegisteredModelSerializer]:
        return RegisteredModelSerializer

    def retrieve(self, request, name=None) -> Response:
        model = self.get_object()
        model.versions_by_state = selectors.model_version_states(model=model)
        return Response(RegisteredModelDetailSerializer(model).data)

    @extend_schema(
        request=RegisteredModelSerializer, responses={201: RegisteredModelDetailSerializer}
    )
    def create(self, request) -> Response:
        data = RegisteredModelSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        model = services.model_create(owner=request.user, **data.validated_data)
        model = selectors.model_get(name=model.name)
        model.versions_by_state = {}
        return Response(RegisteredModelDetailSerializer(model).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=RegisteredModelUpdateSerializer, responses={200: RegisteredModelDetailSerializer}
    )
    def partial_update(self, request: Request, name: str | None = None) -> Response:
        model = self.get_object()
        data = RegisteredModelUpdateSerializer(model, data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        services.model_update(
            model=model, actor=request_actor(request), token=_token(request), **data.validated_data
        )
        return self.retrieve(request, name=name)


class VersionFilter(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=VersionState.choices)
    framework = django_filters.ChoiceFilter(choices=Framework.choices)
    tag = django_filters.CharFilter(method="filter_tag")
    created_by = django_filters.CharFilter(field_name="created_by__username")

    class Meta:
        model = ModelVersion
        fields = ["state", "framework", "created_by"]

    def filter_tag(self, queryset: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        return queryset.filter(tags__contains=[value])


class VersionViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Versions of one model, addressed by number: /models/{name}/versions/{number}/."""

    lookup_field = "number"
    lookup_value_regex = r"[0-9]+"
    filterset_class = VersionFilter
    search_fields = ["description", "tags", "original_filename"]
    ordering_fields = ["number", "created_at", "state_changed_at"]
    parser_classes = [SafeJSONParser, StrictMultiPartParser, FormParser]
    required_capabilities = {
        "list": C.VIEW,
        "retrieve": C.VIEW,
        "create": C.UPLOAD,
        "submit": C.SUBMIT,
        "reviews": C.REVIEW,
        "lineage": C.VIEW,
        "archive": C.MANAGE_MODELS,
    }

    def get_model(self) -> RegisteredModel:
        if not hasattr(self, "_model"):
            self._model = selectors.model_get(name=self.kwargs["model_name"], summary=False)
        return self._model

    def get_queryset(self) -> QuerySet[ModelVersion]:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no URL kwargs
            return ModelVersion.objects.none()
        return selectors.version_list(model=self.get_model())

    def get_serializer_class(self) -> type[VersionSerializer]:
        return VersionSerializer

    def get_object(self) -> ModelVersion:
        return selectors.version_get(model=self.get_model(), number=int(self.kwargs["number"]))

    def _detail(self, version: ModelVersion, code: int = status.HTTP_200_OK) -> Response:
        version = selectors.version_get(model=version.model, number=version.number)
        return Response(VersionDetailSerializer(version).data, status=code)

    def retrieve(self, request, model_name=None, number=None) -> Response:
        return Response(VersionDetailSerializer(self.get_object()).data)

    @extend_schema(
        request={"multipart/form-data": VersionUploadSerializer},
        responses={201: VersionDetailSerializer, 200: VersionDetailSerializer},
        description=(
            "Idempotent by the artifact's sha256: pushing bytes this model already holds (in a "
            "version that is not archived) answers 200 with that version, unchanged; a new "
            "version answers 201."
        ),
    )
    def create(self, request, model_name=None) -> Response:
        data = VersionUploadSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        pushed = services.version_push(
            model=self.get_model(),
            uploader=request.user,
            artifact=data.validated_data["file"],
            framework=data.validated_data["framework"],
            metadata=data.validated_data["metadata"],
            reference=data.validated_data.get("reference_data"),
        )
        code = status.HTTP_201_CREATED if pushed.created else status.HTTP_200_OK
        return self._detail(pushed.version, code)

    @extend_schema(request=SubmitSerializer, responses={200: VersionDetailSerializer})
    @action(detail=True, methods=["post"])
    def submit(self, request, model_name=None, number=None) -> Response:
        data = SubmitSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.version_submit_for_review(
            version=self.get_object(), actor=request.user, **data.validated_data
        )
        return self._detail(version)

    @extend_schema(request=SubmitSerializer, responses={200: VersionDetailSerializer})
    @action(detail=True, methods=["post"])
    def archive(self, request, model_name=None, number=None) -> Response:
        data = SubmitSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.version_archive(
            version=self.get_object(), actor=request.user, reason=data.validated_data["comment"]
        )
        return self._detail(version)

    @extend_schema(request=ReviewCreateSerializer, responses={201: ReviewSerializer})
    @action(detail=True, methods=["post"])
    def reviews(self, request, model_name=None, number=None) -> Response:
        data = ReviewCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        review = services.version_review(
            version=self.get_object(), reviewer=request.user, **data.validated_data
        )
        return Response(ReviewSerializer(review).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("depth", int, description="hops to follow (1-25)")],
        responses={200: dict},
    )
    @action(detail=True, methods=["get"])
    def lineage(self, request, model_name=None, number=None) -> Response:
        try:
            depth = max(1, min(25, int(request.query_params.get("depth", 10))))
        except ValueError:
            depth = 10
        return Response(selectors.version_lineage(version=self.get_object(), depth=depth))


class AliasViewSet(viewsets.ViewSet):
    # A reviewer may move a protected alias but no other: the service decides per alias
    # (registry.services.aliases).
    required_capabilities = {
        "update": (C.SET_ALIAS, C.REVIEW),
        "destroy": (C.SET_ALIAS, C.REVIEW),
        "retrieve": C.VIEW,
    }
    serializer_class = AliasSerializer

    def retrieve(self, request, model_name=None, alias=None) -> Response:
        model = selectors.model_get(name=model_name)
        for item in model.aliases.all():
            if item.name == alias:
                return Response(AliasSerializer(item).data)
        raise NotFound(f"{model.name} has no alias {alias!r}.")

    @extend_schema(request=AliasSetSerializer, responses={200: AliasSerializer})
    def update(self, request, model_name=None, alias=None) -> Response:
        data = AliasSetSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        item = services.alias_set(
            model=selectors.model_get(name=model_name),
            name=alias,
            version_number=data.validated_data["version"],
            actor=request.user,
            protected=data.validated_data["protected"],
            reason=data.validated_data["reason"],
            token=_token(request),
        )
        return Response(AliasSerializer(item).data)

    def destroy(self, request, model_name=None, alias=None) -> Response:
        services.alias_delete(
            model=selectors.model_get(name=model_name),
            name=alias,
            actor=request.user,
            token=_token(request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
