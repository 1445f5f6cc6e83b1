"""HTTP adapters over deployment services: parse, call one service, render."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.permissions import request_actor
from core.choices import Capability
from deployments import follow, selectors, services
from deployments.api.serializers import (
    CanaryActionSerializer,
    DeploymentCreateSerializer,
    DeploymentDetailSerializer,
    DeploymentKeyCreatedSerializer,
    DeploymentKeySerializer,
    DeploymentSerializer,
    FollowSerializer,
    KeyCreateSerializer,
    KeyRevokeSerializer,
    RollbackSerializer,
    RolloutCreateSerializer,
    RolloutSerializer,
    ServingUpdateSerializer,
)
from deployments.models import Deployment
from deployments.services.serving import deployment_serving_update
from registry.selectors import model_get

C = Capability


class DeploymentViewSet(viewsets.GenericViewSet):
    lookup_field = "name"
    lookup_value_regex = r"[^/]+"
    serializer_class = DeploymentSerializer
    filterset_fields = ["environment"]
    search_fields = ["name", "description", "model__name"]
    required_capabilities = {
        "list": C.VIEW,
        "retrieve": C.VIEW,
        "create": C.DEPLOY,
        "rollouts": C.VIEW,
        "rollout_detail": C.VIEW,
        "rollback": C.DEPLOY,
        "rollout_promote": C.DEPLOY,
        "rollout_abort": C.DEPLOY,
        "rollout_to_canary": C.DEPLOY,
        "rollout_pause": C.DEPLOY,
        "rollout_resume": C.DEPLOY,
        "follow": C.DEPLOY,
        "serving": C.DEPLOY,
        # Keys open the prediction endpoint: listing them is as sensitive as issuing them.
        "keys": C.DEPLOY,
        "key_revoke": C.DEPLOY,
    }

    def get_queryset(self) -> QuerySet[Deployment]:
        return selectors.deployment_list()

    def get_object(self) -> Deployment:
        return selectors.deployment_get(name=self.kwargs["name"])

    def _detail(self, deployment: Deployment, code: int = status.HTTP_200_OK) -> Response:
        deployment = selectors.deployment_get(name=deployment.name)
        # Read by DeploymentDetailSerializer: the rollout in flight, if any.
        deployment.current_rollout = selectors.deployment_current_rollout(deployment)  # type: ignore[attr-defined]
        return Response(DeploymentDetailSerializer(deployment).data, status=code)

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(DeploymentSerializer(page, many=True).data)

    def retrieve(self, request: Request, name: str = "") -> Response:
        return self._detail(self.get_object())

    @extend_schema(request=DeploymentCreateSerializer, responses={201: DeploymentDetailSerializer})
    def create(self, request: Request) -> Response:
        data = DeploymentCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        model = model_get(name=fields.pop("model"), summary=False)
        deployment = services.deployment_create(model=model, actor=request_actor(request), **fields)
        return self._detail(deployment, status.HTTP_201_CREATED)

    @extend_schema(request=RolloutCreateSerializer, responses={202: RolloutSerializer})
    @action(detail=True, methods=["get", "post"])
    def rollouts(self, request: Request, name: str = "") -> Response:
        deployment = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(selectors.rollout_list(deployment=deployment))
            return self.get_paginated_response(RolloutSerializer(page, many=True).data)
        if not self._can(C.DEPLOY):
            role = request_actor(request).role
            return self.permission_denied(
                request, message=f"Your role '{role}' does not allow rollouts (needs 'deploy')."
            )
        data = RolloutCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rollout = services.rollout_start(
            deployment=deployment,
            version_number=data.validated_data["version"],
            alias=data.validated_data["alias"],
            actor=request_actor(request),
            reason=data.validated_data["reason"],
            strategy=data.validated_data["strategy"],
            plan=data.validated_data["plan"],
        )
        return Response(RolloutSerializer(rollout).data, status=status.HTTP_202_ACCEPTED)

    def _canary_action(self, request: Request, name: str, rollout_id: str, what: str) -> Response:
        data = CanaryActionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rollout = services.canary_act(
            deployment=selectors.deployment_ref(name=name),
            rollout_id=int(rollout_id),
            action=what,
            actor=request_actor(request),
            reason=data.validated_data["reason"],
        )
        return Response(RolloutSerializer(rollout).data)

    @extend_schema(
        operation_id="deployments_rollout_promote",
        request=CanaryActionSerializer,
        responses={200: RolloutSerializer},
    )
    @action(detail=True, methods=["post"], url_path=r"rollouts/(?P<rollout_id>[0-9]+)/promote")
    def rollout_promote(self, request: Request, name: str = "", rollout_id: str = "") -> Response:
        """A canary's or shadow's version takes all traffic now (switch, then bake)."""
        return self._canary_action(request, name, rollout_id, "promote")

    @extend_schema(
        operation_id="deployments_rollout_to_canary",
        request=CanaryActionSerializer,
        responses={200: RolloutSerializer},
    )
    @action(detail=True, methods=["post"], url_path=r"rollouts/(?P<rollout_id>[0-9]+)/canary")
    def rollout_to_canary(self, request: Request, name: str = "", rollout_id: str = "") -> Response:
        """A shadow starts answering requests: a canary at its plan's first step."""
        return self._canary_action(request, name, rollout_id, "canary")

    @extend_schema(
        operation_id="deployments_rollout_abort",
        request=CanaryActionSerializer,
        responses={200: RolloutSerializer},
    )
    @action(detail=True, methods=["post"], url_path=r"rollouts/(?P<rollout_id>[0-9]+)/abort")
    def rollout_abort(self, request: Request, name: str = "", rollout_id: str = "") -> Response:
        """End a canary or shadow: all traffic on the live version alone, at once."""
        return self._canary_action(request, name, rollout_id, "abort")

    @extend_schema(
        operation_id="deployments_rollout_pause",
        request=CanaryActionSerializer,
        responses={200: RolloutSerializer},
    )
    @action(detail=True, methods=["post"], url_path=r"rollouts/(?P<rollout_id>[0-9]+)/pause")
    def rollout_pause(self, request: Request, name: str = "", rollout_id: str = "") -> Response:
        """Hold a canary at its step (its judge still aborts a failing one)."""
        return self._canary_action(request, name, rollout_id, "pause")

    @extend_schema(
        operation_id="deployments_rollout_resume",
        request=CanaryActionSerializer,
        responses={200: RolloutSerializer},
    )
    @action(detail=True, methods=["post"], url_path=r"rollouts/(?P<rollout_id>[0-9]+)/resume")
    def rollout_resume(self, request: Request, name: str = "", rollout_id: str = "") -> Response:
        """Let a paused canary advance again."""
        return self._canary_action(request, name, rollout_id, "resume")

    @extend_schema(request=FollowSerializer, responses={200: DeploymentDetailSerializer})
    @action(detail=True, methods=["put"])
    def follow(self, request: Request, name: str = "") -> Response:
        data = FollowSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        deployment = follow.deployment_follow_set(
            deployment=selectors.deployment_ref(name=name),
            alias=data.validated_data["alias"],
            actor=request_actor(request),
            reason=data.validated_data["reason"],
        )
        return self._detail(deployment)

    @extend_schema(request=ServingUpdateSerializer, responses={200: DeploymentDetailSerializer})
    @action(detail=True, methods=["patch"])
    def serving(self, request: Request, name: str = "") -> Response:
        data = ServingUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        deployment = deployment_serving_update(
            deployment=selectors.deployment_ref(name=name),
            changes=data.validated_data["serving"],
            actor=request_actor(request),
        )
        return self._detail(deployment)

    @extend_schema(operation_id="deployments_rollout_detail", responses={200: RolloutSerializer})
    @action(detail=True, methods=["get"], url_path=r"rollouts/(?P<rollout_id>[0-9]+)")
    def rollout_detail(self, request: Request, name: str = "", rollout_id: str = "") -> Response:
        rollout = selectors.rollout_get(deployment=self.get_object(), rollout_id=int(rollout_id))
        return Response(RolloutSerializer(rollout).data)

    @extend_schema(request=RollbackSerializer, responses={202: RolloutSerializer})
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, name: str = "") -> Response:
        data = RollbackSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rollout = services.deployment_rollback(
            deployment=selectors.deployment_ref(name=name),
            actor=request_actor(request),
            reason=data.validated_data["reason"],
        )
        return Response(RolloutSerializer(rollout).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        methods=["GET"], responses={200: DeploymentKeySerializer(many=True)}, request=None
    )
    @extend_schema(
        methods=["POST"],
        request=KeyCreateSerializer,
        responses={201: DeploymentKeyCreatedSerializer},
    )
    @action(detail=True, methods=["get", "post"])
    def keys(self, request: Request, name: str = "") -> Response:
        deployment = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(selectors.deployment_key_list(deployment=deployment))
            return self.get_paginated_response(DeploymentKeySerializer(page, many=True).data)
        data = KeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        record, key = services.deployment_key_create(
            deployment=deployment, name=data.validated_data["name"], actor=request_actor(request)
        )
        record.key = key  # type: ignore[attr-defined]  # shown once, never stored
        return Response(DeploymentKeyCreatedSerializer(record).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="deployments_key_revoke",
        request=KeyRevokeSerializer,
        responses={200: DeploymentKeySerializer},
    )
    @action(detail=True, methods=["post"], url_path=r"keys/(?P<key_id>[0-9]+)/revoke")
    def key_revoke(self, request: Request, name: str = "", key_id: str = "") -> Response:
        data = KeyRevokeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = services.deployment_key_revoke(
            deployment=self.get_object(),
            key_id=int(key_id),
            actor=request_actor(request),
            reason=data.validated_data["reason"],
        )
        return Response(DeploymentKeySerializer(key).data)

    def _can(self, capability: str) -> bool:
        from accounts.permissions import user_has_capability

        token = self.request.auth if hasattr(self.request.auth, "scopes") else None
        return user_has_capability(self.request.user, capability, token)
