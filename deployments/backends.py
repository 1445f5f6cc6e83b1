"""The engines deployments talk to, built once per process from settings."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from deployments.runtime.base import RuntimeBackend


def bento_home() -> Path:
    """The one BentoML store of this machine (models + bentos)."""
    path = Path(settings.MODELYARD_BENTOML_HOME)
    path.mkdir(parents=True, exist_ok=True)
    return path


RUNTIME_BACKENDS = ("local", "kubernetes")


@functools.cache
def runtime_backend() -> RuntimeBackend:
    """The backend MODELYARD_RUNTIME_BACKEND names; a wrong setting stops with its name."""
    kind = settings.MODELYARD_RUNTIME_BACKEND
    if kind == "kubernetes":
        return _kubernetes_backend()
    if kind != "local":
        raise ImproperlyConfigured(
            f"MODELYARD_RUNTIME_BACKEND={kind!r} is not one of {', '.join(RUNTIME_BACKENDS)}."
        )
    from deployments.runtime.local import LocalProcessBackend

    return LocalProcessBackend(
        home=bento_home(),
        state_dir=Path(settings.MODELYARD_RUNTIME_STATE_DIR),
        ready_timeout=settings.MODELYARD_SLOT_READY_TIMEOUT_SECONDS,
        workers=settings.MODELYARD_SLOT_WORKERS,
    )


def _kubernetes_backend() -> RuntimeBackend:
    # Imported here: the kubernetes client is only loaded where that backend is chosen.
    from deployments.integrations.kubernetes import KubeClient, KubeConnection, KubeError
    from deployments.runtime.kubernetes import KubernetesBackend

    if not settings.MODELYARD_K8S_IMAGE_REGISTRY:
        raise ImproperlyConfigured(
            "MODELYARD_K8S_IMAGE_REGISTRY is required with MODELYARD_RUNTIME_BACKEND=kubernetes "
            "(the registry the Bento images are pushed to, e.g. registry.example.com/modelyard)."
        )
    resources = _json_setting("MODELYARD_K8S_SLOT_RESOURCES")
    per_deployment = _json_setting("MODELYARD_K8S_DEPLOYMENT_RESOURCES")
    try:
        client = KubeClient(
            KubeConnection(
                in_cluster=settings.MODELYARD_K8S_IN_CLUSTER,
                kubeconfig=settings.MODELYARD_K8S_KUBECONFIG,
                context=settings.MODELYARD_K8S_CONTEXT,
            )
        )
        return KubernetesBackend(
            client,
            namespace=settings.MODELYARD_K8S_NAMESPACE,
            image_registry=settings.MODELYARD_K8S_IMAGE_REGISTRY,
            image_pull_secret=settings.MODELYARD_K8S_IMAGE_PULL_SECRET,
            resources=resources or None,
            deployment_resources=per_deployment or None,
            replicas=settings.MODELYARD_K8S_SLOT_REPLICAS,
            workers=settings.MODELYARD_SLOT_WORKERS,
            ready_timeout=settings.MODELYARD_SLOT_READY_TIMEOUT_SECONDS,
            shadow_cpu_request=settings.MODELYARD_K8S_SHADOW_CPU_REQUEST,
            shadow_priority_class=settings.MODELYARD_K8S_SHADOW_PRIORITY_CLASS,
        )
    except (KubeError, ValueError) as exc:
        raise ImproperlyConfigured(f"Kubernetes runtime backend: {exc}") from exc


def _json_setting(name: str) -> dict[str, Any]:
    raw = getattr(settings, name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object, got {raw!r}")
    return value


@functools.cache
def route_store() -> redis.Redis:
    """The Redis that holds the gateway's route table (see gateway.routes)."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
