"""HTTP adapters over monitoring selectors and services."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.parsers import CSVTextParser, SafeJSONParser, StrictMultiPartParser
from core.choices import Capability
from core.errors import InvalidInput, NotFound
from deployments.selectors import deployment_get
from monitoring import selectors, services
from monitoring.api.serializers import (
    AlertSerializer,
    DriftComputeSerializer,
    GuardBreachSerializer,
    LabelsSerializer,
    MonitoringPolicyResponseSerializer,
    MonitoringPolicySerializer,
    QualityQuerySerializer,
    WebhookDeliverySerializer,
    WebhookEndpointCreateSerializer,
    WebhookEndpointSecretSerializer,
    WebhookEndpointSerializer,
    WebhookEndpointUpdateSerializer,
    WindowQuerySerializer,
)
from monitoring.models import WebhookEndpoint

C = Capability


class DeploymentMetricsView(APIView):
    """Latency percentiles, throughput, errors, cost per prediction and drift, per version."""

    required_capabilities = {"get": C.VIEW}

    @extend_schema(parameters=[WindowQuerySerializer], responses={200: dict})
    def get(self, request, name: str) -> Response:
        query = WindowQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        deployment = deployment_get(name=name)
        return Response(
            selectors.deployment_metrics(
                deployment=deployment, window=query.validated_data["window"]
            )
        )


class DeploymentDriftView(APIView):
    """GET: each feature's drift status over the window (a time series); POST: compute now."""

    required_capabilities = {"get": C.VIEW, "post": C.DEPLOY}

    @extend_schema(parameters=[WindowQuerySerializer], responses={200: dict})
    def get(self, request, name: str) -> Response:
        query = WindowQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        deployment = deployment_get(name=name)
        start, end = selectors.window_bounds(query.validated_data["window"])
        series: dict[str, list[dict]] = {}
        for row in selectors.drift_feature_series(
            deployment=deployment, start=start, end=end, feature=request.query_params.get("feature")
        ):
            series.setdefault(row.feature, []).append(
                {
                    "end": row.window.end,
                    "version": row.window.version,
                    "kind": row.window.kind,
                    "status": row.status,
                    "psi": row.psi,
                    "ks": row.ks,
                    "js": row.js,
                    "live_rows": row.live_rows,
                }
            )
        return Response(
            {"deployment": deployment.name, "start": start, "end": end, "features": series}
        )

    @extend_schema(request=DriftComputeSerializer, responses={202: dict})
    def post(self, request, name: str) -> Response:
        data = DriftComputeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        deployment = deployment_get(name=name)
        from monitoring.tasks import drift_compute_task

        result = drift_compute_task.delay(deployment.pk, data.validated_data.get("seconds"))
        return Response({"task_id": result.id}, status=status.HTTP_202_ACCEPTED)


class DeploymentGuardBreachesView(APIView):
    required_capabilities = {"get": C.VIEW}

    @extend_schema(responses={200: GuardBreachSerializer(many=True)})
    def get(self, request, name: str) -> Response:
        deployment = deployment_get(name=name)
        breaches = selectors.guard_breach_list(deployment=deployment)[:100]
        return Response(GuardBreachSerializer(breaches, many=True).data)


class DeploymentAlertsView(APIView):
    required_capabilities = {"get": C.VIEW}

    @extend_schema(responses={200: AlertSerializer(many=True)})
    def get(self, request, name: str) -> Response:
        alerts = selectors.alert_list(deployment=deployment_get(name=name))[:100]
        return Response(AlertSerializer(alerts, many=True).data)


class WebhookListView(APIView):
    """Webhook endpoints are admin business: they make the platform call out."""

    required_capabilities = {"get": C.ADMIN, "post": C.ADMIN}

    @extend_schema(responses={200: WebhookEndpointSerializer(many=True)})
    def get(self, request) -> Response:
        return Response(
            WebhookEndpointSerializer(selectors.webhook_endpoint_list(), many=True).data
        )

    @extend_schema(
        request=WebhookEndpointCreateSerializer, responses={201: WebhookEndpointSecretSerializer}
    )
    def post(self, request) -> Response:
        data = WebhookEndpointCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        name = fields.pop("deployment")
        endpoint = services.webhook_endpoint_create(
            actor=request.user, deployment=deployment_get(name=name) if name else None, **fields
        )
        # The secret is shown once, at creation; receivers need it to check signatures.
        body = {**WebhookEndpointSerializer(endpoint).data, "secret": endpoint.secret}
        return Response(body, status=status.HTTP_201_CREATED)


def _webhook_get(pk: int) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.select_related("deployment").filter(pk=pk).first()
    if endpoint is None:
        raise NotFound(f"No webhook {pk}.")
    return endpoint


class WebhookDetailView(APIView):
    """One endpoint: read, change (URL checked again; secret rotation shown once), delete."""

    required_capabilities = {"get": C.ADMIN, "patch": C.ADMIN, "delete": C.ADMIN}

    @extend_schema(responses={200: WebhookEndpointSerializer})
    def get(self, request, pk: int) -> Response:
        return Response(WebhookEndpointSerializer(_webhook_get(pk)).data)

    @extend_schema(
        request=WebhookEndpointUpdateSerializer, responses={200: WebhookEndpointSecretSerializer}
    )
    def patch(self, request, pk: int) -> Response:
        endpoint = _webhook_get(pk)
        data = WebhookEndpointUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        if "deployment" in fields:
            name = fields.pop("deployment")
            fields["deployment"] = deployment_get(name=name) if name else None
        endpoint, secret = services.webhook_endpoint_update(
            endpoint=endpoint, actor=request.user, **fields
        )
        return Response({**WebhookEndpointSerializer(endpoint).data, "secret": secret})

    @extend_schema(responses={204: None})
    def delete(self, request, pk: int) -> Response:
        services.webhook_endpoint_delete(endpoint=_webhook_get(pk), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookDeliveriesView(APIView):
    required_capabilities = {"get": C.ADMIN}

    @extend_schema(responses={200: WebhookDeliverySerializer(many=True)})
    def get(self, request, pk: int) -> Response:
        endpoint = _webhook_get(pk)
        deliveries = selectors.webhook_delivery_list(endpoint=endpoint)[:200]
        return Response(WebhookDeliverySerializer(deliveries, many=True).data)


class DeploymentMonitoringPolicyView(APIView):
    """GET: the stored overrides and the effective policy; PATCH: a JSON merge patch of the
    overrides (null removes one), every value checked before anything is written."""

    required_capabilities = {"get": C.VIEW, "patch": C.DEPLOY}

    def _body(self, deployment) -> dict:
        return {
            "deployment": deployment.name,
            "policy": services.monitoring_policy_document(deployment=deployment),
            "effective": services.monitoring_policy_effective(deployment=deployment),
        }

    @extend_schema(responses={200: MonitoringPolicyResponseSerializer})
    def get(self, request, name: str) -> Response:
        return Response(self._body(deployment_get(name=name)))

    @extend_schema(
        request=MonitoringPolicySerializer, responses={200: MonitoringPolicyResponseSerializer}
    )
    def patch(self, request, name: str) -> Response:
        deployment = deployment_get(name=name)
        # The service checks every value and names the field; the raw body keeps the
        # difference between a key that is absent and one that is null.
        services.monitoring_policy_update(
            deployment=deployment, actor=request.user, changes=request.data
        )
        return Response(self._body(deployment_get(name=name)))


class DeploymentLabelsView(APIView):
    """POST ground-truth labels of logged predictions: JSON ``{"labels": [{"id", "label",
    "at"?}]}``, a ``text/csv`` body, or a CSV file as multipart ``file`` (large uploads).
    Idempotent by id; bad rows are reported and the rest kept."""

    required_capabilities = {"post": C.LABEL}
    parser_classes = [SafeJSONParser, CSVTextParser, StrictMultiPartParser]

    @extend_schema(request=LabelsSerializer, responses={200: dict})
    def post(self, request, name: str) -> Response:
        deployment = deployment_get(name=name)
        upload = request.FILES.get("file") if hasattr(request, "FILES") else None
        if upload is not None:
            try:
                text = upload.read().decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"The CSV file is not UTF-8 text (byte {exc.start}).", code="invalid_csv"
                ) from None
            labels = services.labels_parse_csv(text)
        elif (
            isinstance(request.data, dict)
            and "csv" in request.data
            and "labels" not in request.data
        ):
            labels = services.labels_parse_csv(request.data["csv"])
        elif isinstance(request.data, dict) and "labels" in request.data:
            labels = request.data["labels"]
        else:
            raise InvalidInput(
                'Send {"labels": [...]}, a text/csv body, or a CSV file as multipart "file".',
                code="invalid_labels",
            )
        result = services.labels_ingest(deployment=deployment, labels=labels)
        return Response(result.as_dict())


class DeploymentQualityView(APIView):
    """GET live quality per version over a window: metrics of the labelled predictions."""

    required_capabilities = {"get": C.VIEW}

    @extend_schema(parameters=[QualityQuerySerializer], responses={200: dict})
    def get(self, request, name: str) -> Response:
        query = QualityQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        deployment = deployment_get(name=name)
        start, end = selectors.window_bounds(query.validated_data["window"])
        versions = (
            [query.validated_data["version"]]
            if query.validated_data.get("version")
            else selectors.prediction_log_versions(deployment=deployment, start=start, end=end)
        )
        arm = query.validated_data.get("arm") or None
        return Response(
            {
                "deployment": deployment.name,
                "window": query.validated_data["window"],
                "versions": [
                    selectors.quality_compute(
                        deployment=deployment, version=v, start=start, end=end, arm=arm
                    )
                    for v in versions
                ],
            }
        )
