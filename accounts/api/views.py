from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotAuthenticated
from rest_framework.response import Response

from accounts.api.serializers import ApiTokenCreateSerializer, ApiTokenSerializer
from accounts.models import ApiToken, User
from accounts.selectors import token_list
from accounts.services import token_create, token_revoke
from core.choices import Capability


class ApiTokenViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Your API tokens (an admin sees all). The key is returned once, at creation."""

    serializer_class = ApiTokenSerializer
    lookup_value_regex = "[0-9]+"  # a non-numeric id is an unknown token (404), not a crash
    required_capabilities = {a: Capability.MANAGE_TOKENS for a in ("list", "create", "revoke")}
    filterset_fields = ["name"]

    def get_queryset(self) -> QuerySet[ApiToken]:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no user
            return ApiToken.objects.none()
        user = self.request.user
        if not isinstance(user, User):  # RolePermission lets only a signed-in user this far
            raise NotAuthenticated()
        return token_list(user=user)

    @extend_schema(request=ApiTokenCreateSerializer, responses={201: ApiTokenSerializer})
    def create(self, request) -> Response:
        data = ApiTokenCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = token_create(user=request.user, actor=request.user, **data.validated_data)
        body = ApiTokenSerializer(issued.token).data | {"key": issued.key}
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: ApiTokenSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None) -> Response:
        token = token_revoke(token_id=int(pk), actor=request.user)
        return Response(ApiTokenSerializer(token).data)
