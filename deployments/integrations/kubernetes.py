"""The one door to the Kubernetes API: the official ``kubernetes`` client, nothing else.

No other module imports ``kubernetes``. The runtime backend hands plain dicts in (manifests
it rendered) and gets plain dicts back (the API's JSON), so it never touches the client's
generated model classes: those validate required fields on construction and would reject
partial objects, and dicts are what the manifests and tests compare anyway.

Connection: a kubeconfig file (``~/.kube/config``, ``$KUBECONFIG`` or an explicit path, with
an optional context) from outside the cluster, or the pod's service account from inside it
(``in_cluster=True``). Every call has a request timeout, so an unreachable API server fails
a rollout step instead of hanging a Celery worker.

Deliberately no Django here, like the BentoML integration.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.utils.quantity import parse_quantity as _parse_quantity
from urllib3.exceptions import HTTPError as Urllib3HTTPError

_MERGE_PATCH = "application/merge-patch+json"
METRICS_GROUP = "metrics.k8s.io"
METRICS_VERSION = "v1beta1"


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity (``250m``, ``1Gi``, ``12345n``) as a number (cores, bytes)."""
    try:
        return Decimal(_parse_quantity(value))
    except ValueError as exc:
        raise KubeError(f"{value!r} is not a Kubernetes quantity: {exc}") from None


class KubeError(Exception):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class KubeNotFound(KubeError):
    """The object (or the API group, e.g. metrics.k8s.io) does not exist."""


class KubeConflict(KubeError):
    """The object changed since it was read (or already exists on create)."""


@dataclass(frozen=True)
class KubeConnection:
    """Where the API server is and how to authenticate (see the module docstring)."""

    in_cluster: bool = False
    kubeconfig: str = ""  # empty: $KUBECONFIG or ~/.kube/config
    context: str = ""  # empty: the kubeconfig's current context
    request_timeout: float = 15.0


class KubeClient:
    """Namespaced CRUD on the few kinds the runtime backend uses, as JSON dicts."""

    def __init__(self, connection: KubeConnection) -> None:
        self.connection = connection
        configuration = client.Configuration()
        try:
            if connection.in_cluster:
                config.load_incluster_config(client_configuration=configuration)
            else:
                config.load_kube_config(
                    config_file=connection.kubeconfig or None,
                    context=connection.context or None,
                    client_configuration=configuration,
                    persist_config=False,
                )
        except (ConfigException, OSError) as exc:
            where = (
                "the pod's service account (in-cluster)"
                if connection.in_cluster
                else f"kubeconfig {connection.kubeconfig or '$KUBECONFIG or ~/.kube/config'}"
                + (f", context {connection.context}" if connection.context else "")
            )
            raise KubeError(f"cannot load Kubernetes credentials from {where}: {exc}") from exc
        self.host = configuration.host
        self._api = client.ApiClient(configuration)
        self._apps = client.AppsV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)

    def close(self) -> None:
        self._api.close()

    # ------------------------------------------------------------------ deployments

    def deployment_get(self, *, namespace: str, name: str) -> dict[str, Any]:
        return self._call(
            f"reading Deployment {namespace}/{name}",
            self._apps.read_namespaced_deployment,
            name,
            namespace,
        )

    def deployment_list(self, *, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        result = self._call(
            f"listing Deployments in {namespace}",
            self._apps.list_namespaced_deployment,
            namespace,
            label_selector=label_selector,
        )
        return list(result.get("items") or [])

    def deployment_apply(self, *, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create the Deployment, or replace it whole if it exists (idempotent)."""
        return self._apply(
            "Deployment",
            namespace,
            body,
            read=self._apps.read_namespaced_deployment,
            create=self._apps.create_namespaced_deployment,
            replace=self._apps.replace_namespaced_deployment,
        )

    def deployment_patch(
        self, *, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """JSON merge patch (RFC 7386): e.g. ``{"metadata": {"annotations": {...}}}``."""
        return self._call(
            f"patching Deployment {namespace}/{name}",
            self._apps.patch_namespaced_deployment,
            name,
            namespace,
            patch,
            _content_type=_MERGE_PATCH,
        )

    def deployment_delete(self, *, namespace: str, name: str, grace_seconds: int) -> bool:
        """Delete it and its pods (in the background); False if it did not exist."""
        return self._delete(
            f"Deployment {namespace}/{name}",
            self._apps.delete_namespaced_deployment,
            name,
            namespace,
            grace_seconds,
        )

    # ------------------------------------------------------------------ services

    def service_get(self, *, namespace: str, name: str) -> dict[str, Any]:
        return self._call(
            f"reading Service {namespace}/{name}",
            self._core.read_namespaced_service,
            name,
            namespace,
        )

    def service_apply(self, *, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create the Service, or replace it keeping the cluster IP it was given."""
        return self._apply(
            "Service",
            namespace,
            body,
            read=self._core.read_namespaced_service,
            create=self._core.create_namespaced_service,
            replace=self._core.replace_namespaced_service,
        )

    def service_delete(self, *, namespace: str, name: str) -> bool:
        return self._delete(
            f"Service {namespace}/{name}",
            self._core.delete_namespaced_service,
            name,
            namespace,
            None,
        )

    # ------------------------------------------------------------------ pods + metrics

    def pod_list(self, *, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        result = self._call(
            f"listing pods in {namespace}",
            self._core.list_namespaced_pod,
            namespace,
            label_selector=label_selector,
        )
        return list(result.get("items") or [])

    def pod_log_tail(self, *, namespace: str, name: str, container: str, lines: int) -> str:
        """The last ``lines`` of a container's log; "" when there is none (yet)."""
        try:
            response = self._core.read_namespaced_pod_log(
                name,
                namespace,
                container=container,
                tail_lines=lines,
                _preload_content=False,
                _request_timeout=self.connection.request_timeout,
            )
        except ApiException as exc:
            if exc.status in (400, 404):  # container not started yet, or pod gone
                return ""
            raise self._error(f"reading the log of pod {namespace}/{name}", exc) from None
        except Urllib3HTTPError as exc:
            raise self._unreachable(f"reading the log of pod {namespace}/{name}", exc) from None
        return response.data.decode("utf-8", errors="replace")

    def pod_metrics(self, *, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """PodMetrics of matching pods; KubeNotFound when metrics.k8s.io is not served."""
        result = self._call(
            f"reading pod metrics ({METRICS_GROUP}) in {namespace}",
            self._custom.list_namespaced_custom_object,
            METRICS_GROUP,
            METRICS_VERSION,
            namespace,
            "pods",
            label_selector=label_selector,
        )
        return list(result.get("items") or [])

    # ------------------------------------------------------------------ plumbing

    def _apply(
        self, kind: str, namespace: str, body: dict[str, Any], *, read, create, replace
    ) -> dict[str, Any]:
        name = body["metadata"]["name"]
        what = f"{kind} {namespace}/{name}"
        # Two attempts: a conflict means someone changed it between our read and write.
        for attempt in range(2):
            try:
                current = self._call(f"reading {what}", read, name, namespace)
            except KubeNotFound:
                try:
                    return self._call(f"creating {what}", create, namespace, body)
                except KubeConflict:
                    if attempt:
                        raise
                    continue  # created meanwhile by someone else: replace it
            desired = json.loads(json.dumps(body))
            desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            if kind == "Service":
                # The cluster IP is allocated once and immutable; a replace must repeat it.
                for field in ("clusterIP", "clusterIPs"):
                    if field in current.get("spec", {}):
                        desired["spec"].setdefault(field, current["spec"][field])
            try:
                return self._call(f"replacing {what}", replace, name, namespace, desired)
            except KubeConflict:
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _delete(self, what: str, method, name: str, namespace: str, grace: int | None) -> bool:
        kwargs: dict[str, Any] = {"propagation_policy": "Background"}
        if grace is not None:
            kwargs["grace_period_seconds"] = grace
        try:
            self._call(f"deleting {what}", method, name, namespace, **kwargs)
        except KubeNotFound:
            return False
        return True

    def _call(self, what: str, method, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            response = method(
                *args,
                _preload_content=False,
                _request_timeout=self.connection.request_timeout,
                **kwargs,
            )
        except ApiException as exc:
            raise self._error(what, exc) from None
        except Urllib3HTTPError as exc:
            raise self._unreachable(what, exc) from None
        data = response.data
        return json.loads(data) if data else {}

    def _unreachable(self, what: str, exc: Exception) -> KubeError:
        return KubeError(f"{what}: the API server at {self.host} did not answer: {exc}")

    @staticmethod
    def _error(what: str, exc: ApiException) -> KubeError:
        message = exc.reason or "error"
        # A Status object: its message says which field or permission was wrong.
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            message = json.loads(exc.body).get("message") or message
        text = f"{what} failed ({exc.status}): {message}"
        if exc.status == 404:
            return KubeNotFound(text, 404)
        if exc.status == 409:
            return KubeConflict(text, 409)
        return KubeError(text, exc.status or 0)
