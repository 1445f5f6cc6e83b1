"""Serving slots as Kubernetes Deployments: one Deployment + one Service per slot.

A slot ``churn-prod.blue`` becomes Deployment and Service ``slot-churn-prod-blue-<hash>``
in the configured namespace. The pods run the Bento's own image,
``<registry>/<bento name>:<bento version>``, built from the context BentoML's containerize
writes (:func:`image_build_context`) and pushed by CI or an operator beforehand: the backend
never builds images, it fails the slot with a clear message when the image cannot be pulled.

Everything the backend knows lives in the cluster (labels and annotations on the
Deployment), never only in memory, so any number of web/worker processes share one view
and a restarted worker needs no state directory. Traffic moves the same way as with the
local backend: the rollout points the gateway's route at the new slot's upstream, here the
slot Service's DNS name ``http://<service>.<namespace>.svc:3000``; the Services never change
selectors, so a slot's URL is stable for its whole life.

Kubernetes restarts crashed containers itself; ``supervise_once`` only observes and reports
what happened (restarts, crash loops, pull failures) once per change, for the audit trail.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from deployments.integrations import bentoml as bentoml_integration
from deployments.integrations.kubernetes import (
    KubeClient,
    KubeError,
    KubeNotFound,
    parse_quantity,
)
from deployments.runtime.base import (
    PRIORITIES,
    PRIORITY_LOW,
    PRIORITY_NORMAL,
    ReplicaStatus,
    ResourceSample,
    RuntimeBackend,
    RuntimeBackendError,
    SlotEvent,
    SlotHandle,
    SlotNotFound,
    SlotStartError,
    SlotStatus,
    validate_slot_key,
)
from deployments.runtime.kubernetes_status import (
    ANN_SLOT_KEY,
    LABEL_SLOT_ID,
    deployment_condition,
    deployment_ready,
    deployment_summary,
    event_json,
    image_pull_failures,
    json_annotation,
    last_termination,
    parse_dt,
    pod_state,
    pods_of,
    pods_problem,
    restart_count,
    slot_key_of,
)
from registry.modelkit import serving as modelkit_serving

BENTO_PORT = 3000  # BentoML's default HTTP port; the generated image EXPOSEs it
# The gateway's gauge of requests in flight per upstream (gateway/prometheus.py exports it).
INFLIGHT_METRIC = "modelyard_gateway_upstream_inflight"
# The generated Dockerfile creates user "bentoml" with this uid/gid (BENTO_USER_UID).
BENTO_UID = 1034
CONTAINER = "bento"
# BentoML writes its Prometheus multiprocess dir and scratch under $BENTOML_HOME; the Bento
# and its models live under $BENTO_PATH (/home/bentoml/bento), so pointing the home at an
# emptyDir lets the root filesystem stay read-only.
BENTOML_HOME = "/var/lib/bentoml"

# LABEL_SLOT_ID and ANN_SLOT_KEY live in kubernetes_status (reading them back needs them)
# and are imported above, so they stay importable from here.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_DEPLOYMENT = "modelyard.io/deployment"
LABEL_SLOT = "modelyard.io/slot"
LABEL_VERSION = "modelyard.io/version"
LABEL_BENTO = "modelyard.io/bento"
ANN_BENTO_TAG = "modelyard.io/bento-tag"
ANN_STARTED_AT = "modelyard.io/started-at"
ANN_LAST_EVENT = "modelyard.io/last-event"
ANN_REPORTED = "modelyard.io/reported"  # restarts + problem last reported by supervise_once
ANN_CPU = "modelyard.io/cpu-seconds"  # CPU counter integrated from the metrics API
ANN_PRIORITY = "modelyard.io/priority"  # PRIORITY_LOW: a shadow's pods (_priority_render)
SLOT_SELECTOR = f"{LABEL_NAME}=modelyard-slot,{LABEL_MANAGED_BY}=modelyard"

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}

_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_NAME_BAD = re.compile(r"[^a-z0-9-]+")
# Docker reference grammar: path components and tag.
_REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_LOG_TAIL_LINES = 40


class ResourceUsageUnknown(RuntimeBackendError):
    """The cluster serves no metrics API, so a slot's CPU and memory cannot be measured."""


@dataclass(frozen=True)
class ImageBuild:
    """How to turn a Bento into the image a slot runs (see README "Running in production")."""

    image: str
    context: Path
    dockerfile: Path

    @property
    def commands(self) -> list[list[str]]:
        return [
            ["docker", "build", "-f", str(self.dockerfile), "-t", self.image, str(self.context)],
            ["docker", "push", self.image],
        ]


class KubernetesBackend(RuntimeBackend):
    """One Deployment (``replicas`` pods of the Bento's image) + one Service per slot."""

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        image_registry: str,
        image_pull_secret: str = "",
        resources: dict[str, dict[str, str]] | None = None,
        deployment_resources: dict[str, dict[str, dict[str, str]]] | None = None,
        replicas: int = 1,
        workers: int = 1,
        ready_timeout: float = 300,
        poll_interval: float = 2.0,
        service_account: str = "",
        shadow_cpu_request: str = "25m",
        shadow_priority_class: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not namespace:
            raise ValueError("namespace must not be empty")
        registry = image_registry.strip().rstrip("/")
        if not registry or "://" in registry:
            raise ValueError(
                f"image registry {image_registry!r} must be a registry host and path without "
                f"a scheme, e.g. 'registry.example.com/modelyard'"
            )
        if replicas < 1 or workers < 1:
            raise ValueError("replicas and workers must be >= 1")
        try:
            parse_quantity(shadow_cpu_request)
        except KubeError:
            raise ValueError(
                f"shadow CPU request {shadow_cpu_request!r} is not a Kubernetes quantity "
                f"(e.g. '25m')"
            ) from None
        self.client = client
        self.namespace = namespace
        self.image_registry = registry
        self.image_pull_secret = image_pull_secret
        self.resources = copy.deepcopy(resources or DEFAULT_RESOURCES)
        self.deployment_resources = copy.deepcopy(deployment_resources or {})
        self.replicas = replicas
        self.workers = workers
        self.ready_timeout = float(ready_timeout)
        self.poll_interval = poll_interval
        self.service_account = service_account
        self.shadow_cpu_request = shadow_cpu_request
        self.shadow_priority_class = shadow_priority_class
        self._clock = clock

    # ------------------------------------------------------------------ naming + rendering

    @staticmethod
    def object_name(slot_key: str) -> str:
        """The Deployment/Service name of a slot: a DNS-1035 label, unique per slot key.

        The hash keeps ``a.b`` and ``a-b`` (which both sanitise to ``a-b``) apart.
        """
        validate_slot_key(slot_key)
        digest = hashlib.sha256(slot_key.encode()).hexdigest()[:8]
        slug = _NAME_BAD.sub("-", slot_key.lower()).strip("-")[:44].rstrip("-")
        return f"slot-{slug}-{digest}" if slug else f"slot-{digest}"

    def image_for(self, bento_tag: str) -> str:
        return image_reference(registry=self.image_registry, bento_tag=bento_tag)

    def url_for(self, slot_key: str) -> str:
        return f"http://{self.object_name(slot_key)}.{self.namespace}.svc:{BENTO_PORT}"

    def resources_for(self, slot_key: str) -> dict[str, dict[str, str]]:
        deployment, _ = _split_slot_key(slot_key)
        return copy.deepcopy(self.deployment_resources.get(deployment, self.resources))

    def render(
        self,
        *,
        slot_key: str,
        bento_tag: str,
        started_at: datetime | None = None,
        replicas: int | None = None,
        workers: int | None = None,
        batch: tuple[int, int] | None = None,
        priority: str = PRIORITY_NORMAL,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The Deployment and Service manifests of a slot serving ``bento_tag`` (``replicas``
        pods of ``workers`` BentoML workers each, batching ``batch`` = (max size, max latency
        ms); None: the backend's defaults) at CPU ``priority`` (_priority_render)."""
        replicas = replicas or self.replicas
        workers = workers or self.workers
        batch_max_size, batch_max_latency_ms = batch or (
            modelkit_serving.DEFAULT_BATCH_MAX_SIZE,
            modelkit_serving.DEFAULT_BATCH_MAX_LATENCY_MS,
        )
        # The one spelling of the serve-time options, the local backend's too.
        config_options = bentoml_integration.serve_environment(
            bentoml_home=Path(BENTOML_HOME),
            workers=workers,
            batch_max_size=batch_max_size,
            batch_max_latency_ms=batch_max_latency_ms,
        )["BENTOML_CONFIG_OPTIONS"]
        name = self.object_name(slot_key)
        image = self.image_for(bento_tag)
        deployment_name, color = _split_slot_key(slot_key)
        bento_name, bento_version = bento_tag.split(":", 1)
        selector = {LABEL_SLOT_ID: name}
        labels = {
            LABEL_NAME: "modelyard-slot",
            LABEL_MANAGED_BY: "modelyard",
            LABEL_SLOT_ID: name,
            LABEL_DEPLOYMENT: _label_value(deployment_name),
            LABEL_SLOT: _label_value(color),
            LABEL_VERSION: _label_value(bento_version),
            LABEL_BENTO: _label_value(bento_name),
        }
        annotations = {
            ANN_SLOT_KEY: slot_key,
            ANN_BENTO_TAG: bento_tag,
            ANN_STARTED_AT: (started_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        }
        probe = {"port": BENTO_PORT, "scheme": "HTTP"}
        container: dict[str, Any] = {
            "name": CONTAINER,
            "image": image,
            # Tags name immutable Bento versions; IfNotPresent avoids a registry round trip
            # per pod start.
            "imagePullPolicy": "IfNotPresent",
            "args": ["serve"],  # the image's entrypoint runs `bentoml serve $BENTO_PATH`
            "ports": [{"name": "http", "containerPort": BENTO_PORT, "protocol": "TCP"}],
            "env": [
                {"name": "BENTOML_HOME", "value": BENTOML_HOME},
                {"name": "BENTOML_DO_NOT_TRACK", "value": "True"},
                {"name": "BENTOML_CONFIG_OPTIONS", "value": config_options},
            ],
            "resources": self.resources_for(slot_key),
            # A model may take a while to load: the startup probe holds the liveness probe
            # off for up to ready_timeout instead of killing a slow first start.
            "startupProbe": {
                "httpGet": {"path": "/livez", **probe},
                "periodSeconds": 5,
                "failureThreshold": max(1, int(self.ready_timeout // 5)),
            },
            "readinessProbe": {
                "httpGet": {"path": "/readyz", **probe},
                "periodSeconds": 5,
                "timeoutSeconds": 3,
                "failureThreshold": 3,
            },
            "livenessProbe": {
                "httpGet": {"path": "/livez", **probe},
                "periodSeconds": 10,
                "timeoutSeconds": 5,
                "failureThreshold": 3,
            },
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [
                {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the pod's own emptyDir
                {"name": "bentoml-home", "mountPath": BENTOML_HOME},
            ],
        }
        pod_spec: dict[str, Any] = {
            # Slots call nothing in the cluster: no API token in the pods, and none of the
            # platform's Secrets or ConfigMap (the env above is all a slot gets). Nor the
            # addresses of every Service in the namespace (PostgreSQL, Redis) as variables.
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": BENTO_UID,
                "runAsGroup": BENTO_UID,
                "fsGroup": BENTO_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationGracePeriodSeconds": 30,
            "containers": [container],
            "volumes": [
                {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                {"name": "bentoml-home", "emptyDir": {"sizeLimit": "256Mi"}},
            ],
        }
        if self.service_account:
            pod_spec["serviceAccountName"] = self.service_account
        if self.image_pull_secret:
            pod_spec["imagePullSecrets"] = [{"name": self.image_pull_secret}]
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": annotations,
            },
            "spec": {
                "replicas": replicas,
                "revisionHistoryLimit": 2,
                # Never fewer ready pods than wanted while a slot's pods are replaced.
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                },
                "progressDeadlineSeconds": max(60, int(self.ready_timeout)),
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": labels, "annotations": {ANN_BENTO_TAG: bento_tag}},
                    "spec": pod_spec,
                },
            },
        }
        self._priority_render(deployment, slot_key=slot_key, priority=priority)
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": {ANN_SLOT_KEY: slot_key},
            },
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [
                    {"name": "http", "port": BENTO_PORT, "targetPort": "http", "protocol": "TCP"}
                ],
            },
        }
        return deployment, service

    def _priority_render(self, deployment: dict[str, Any], *, slot_key: str, priority: str) -> None:
        """Write ``priority`` into a slot's Deployment manifest (in place).

        Kubernetes has no nice value for a pod: a container's CPU weight on a busy node is its
        CPU request, so a shadow's pods request ``shadow_cpu_request`` (limits unchanged: an
        idle node's CPU is theirs) and, when configured, run in a PriorityClass the
        scheduler evicts first. The template changes, so the pods are replaced one by one
        (maxUnavailable 0) -- there is no in-place equivalent of renicing."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
        template = deployment["spec"]["template"]
        pod_spec = template["spec"]
        resources = self.resources_for(slot_key)
        pod_spec.pop("priorityClassName", None)
        if priority == PRIORITY_LOW:
            resources.setdefault("requests", {})["cpu"] = self.shadow_cpu_request
            if self.shadow_priority_class:
                pod_spec["priorityClassName"] = self.shadow_priority_class
        for container in pod_spec["containers"]:
            if container["name"] == CONTAINER:
                container["resources"] = resources
        for metadata in (deployment["metadata"], template["metadata"]):
            metadata.setdefault("annotations", {})[ANN_PRIORITY] = priority

    def image_build_context(self, *, home: Path, bento_tag: str, dest: Path) -> ImageBuild:
        return image_build_context(
            registry=self.image_registry, home=home, bento_tag=bento_tag, dest=dest
        )

    # ------------------------------------------------------------------ public API

    def slot_start(
        self,
        *,
        slot_key: str,
        bento_tag: str,
        replicas: int | None = None,
        workers: int | None = None,
        batch: tuple[int, int] | None = None,
        priority: str = PRIORITY_NORMAL,
    ) -> SlotHandle:
        validate_slot_key(slot_key)
        name = self.object_name(slot_key)
        try:
            self.image_for(bento_tag)
        except ValueError as exc:
            raise SlotStartError(f"slot {slot_key}: {exc}") from None
        deadline = self._clock() + self.ready_timeout
        existing = self._get_deployment(name)
        annotations = (existing or {}).get("metadata", {}).get("annotations") or {}
        if (
            existing is not None
            and annotations.get(ANN_BENTO_TAG) == bento_tag
            and annotations.get(ANN_PRIORITY, PRIORITY_NORMAL) == priority
        ):
            # Already serving this Bento: a no-op apart from making sure the Service exists
            # and handing the slot out only once it is ready.
            started_at = parse_dt(annotations.get(ANN_STARTED_AT))
            deployment, service = self.render(
                slot_key=slot_key,
                bento_tag=bento_tag,
                started_at=started_at,
                replicas=replicas,
                workers=workers,
                batch=batch,
                priority=priority,
            )
            self._kube(f"slot {slot_key}", self.client.service_apply, body=service)
            self._wait_ready(slot_key, bento_tag, deadline)
            return self._handle(slot_key, bento_tag, started_at)
        started_at = datetime.now(UTC)
        deployment, service = self.render(
            slot_key=slot_key,
            bento_tag=bento_tag,
            started_at=started_at,
            replicas=replicas,
            workers=workers,
            batch=batch,
            priority=priority,
        )
        replaced = annotations.get(ANN_BENTO_TAG) if existing is not None else None
        self._kube(f"slot {slot_key}", self.client.deployment_apply, body=deployment)
        self._kube(f"slot {slot_key}", self.client.service_apply, body=service)
        self._wait_ready(slot_key, bento_tag, deadline)
        message = f"serving {bento_tag} at {self.url_for(slot_key)} (deployment {name})"
        if replaced:
            message += f"; replaced {replaced}"
        self._record_event(name, SlotEvent.now(slot_key, "started", message))
        return self._handle(slot_key, bento_tag, started_at)

    def slot_priority(self, *, slot_key: str, priority: str) -> None:
        """Re-render the running Deployment at ``priority`` (_priority_render) and return
        once its replaced pods are ready; the old ones serve until then. A no-op when it
        already runs at it."""
        validate_slot_key(slot_key)
        name = self.object_name(slot_key)
        existing = self._get_deployment(name)
        if existing is None:
            raise SlotNotFound(f"no slot {slot_key!r} (Deployment {self.namespace}/{name})")
        annotations = existing["metadata"].get("annotations") or {}
        if annotations.get(ANN_PRIORITY, PRIORITY_NORMAL) == priority:
            return
        self._priority_render(existing, slot_key=slot_key, priority=priority)
        existing.pop("status", None)
        self._kube(f"slot {slot_key}", self.client.deployment_apply, body=existing)
        bento_tag = annotations.get(ANN_BENTO_TAG, "")
        self._wait_ready(slot_key, bento_tag, self._clock() + self.ready_timeout)
        self._record_event(
            name, SlotEvent.now(slot_key, "restarted", f"pods replaced at {priority} priority")
        )

    def slot_scale(self, *, slot_key: str, replicas: int, timeout: float = 30) -> SlotHandle:
        """Set the Deployment's ``spec.replicas``; returns once every pod is ready.

        Kubernetes drains a removed pod itself: it leaves the Service's endpoints first, then
        gets SIGTERM (BentoML finishes what is in flight) within the grace period.
        """
        validate_slot_key(slot_key)
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        name = self.object_name(slot_key)
        existing = self._get_deployment(name)
        if existing is None:
            raise SlotNotFound(f"no slot {slot_key!r} (Deployment {self.namespace}/{name})")
        annotations = existing["metadata"].get("annotations") or {}
        bento_tag = annotations.get(ANN_BENTO_TAG, "")
        self._kube(
            f"slot {slot_key}",
            self.client.deployment_patch,
            name=name,
            patch={"spec": {"replicas": int(replicas)}},
        )
        self._wait_ready(slot_key, bento_tag, self._clock() + self.ready_timeout)
        return self._handle(slot_key, bento_tag, parse_dt(annotations.get(ANN_STARTED_AT)))

    def replica_repair(self, *, slot_key: str, url: str) -> SlotEvent | None:
        """Nothing to do by hand: the kubelet restarts a dead container and the readiness
        probe takes its pod out of the Service meanwhile; supervise_once reports it."""
        validate_slot_key(slot_key)
        return None

    def render_autoscaler(
        self,
        *,
        slot_key: str,
        replicas_min: int,
        replicas_max: int,
        target_inflight: float,
        scale_up_seconds: int,
        scale_down_seconds: int,
    ) -> dict[str, Any]:
        """An autoscaling/v2 HPA on the gateway's in-flight gauge per pod of the slot.

        ``modelyard_gateway_upstream_inflight`` is exported by the gateway per upstream; the
        HPA reads it as a Pods metric only through a metrics adapter (prometheus-adapter with
        a rule mapping the series to the slot's pods) -- without one it reports
        FailedGetPodsMetric and keeps the replica count. The stabilisation windows are the
        deployment's, one replica per step as the local autoscaler does.
        """
        name = self.object_name(slot_key)
        return {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {LABEL_MANAGED_BY: "modelyard", LABEL_SLOT_ID: name},
                "annotations": {ANN_SLOT_KEY: slot_key},
            },
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": int(replicas_min),
                "maxReplicas": int(replicas_max),
                "metrics": [
                    {
                        "type": "Pods",
                        "pods": {
                            "metric": {"name": INFLIGHT_METRIC},
                            "target": {
                                "type": "AverageValue",
                                "averageValue": f"{int(target_inflight * 1000)}m",
                            },
                        },
                    }
                ],
                "behavior": {
                    "scaleUp": {
                        "stabilizationWindowSeconds": int(scale_up_seconds),
                        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}],
                    },
                    "scaleDown": {
                        "stabilizationWindowSeconds": int(scale_down_seconds),
                        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                    },
                },
            },
        }

    def slot_stop(self, *, slot_key: str, timeout: float = 10) -> None:
        validate_slot_key(slot_key)
        name = self.object_name(slot_key)
        # Pods get SIGTERM, then SIGKILL after the grace period: BentoML drains in-flight
        # requests on SIGTERM.
        self._kube(
            f"slot {slot_key}",
            self.client.deployment_delete,
            name=name,
            grace_seconds=max(0, int(timeout)),
        )
        self._kube(f"slot {slot_key}", self.client.service_delete, name=name)

    def slot_status(self, *, slot_key: str) -> SlotStatus:
        validate_slot_key(slot_key)
        name = self.object_name(slot_key)
        deployment = self._get_deployment(name)
        if deployment is None:
            raise SlotNotFound(f"no slot {slot_key!r} (Deployment {self.namespace}/{name})")
        pods = self._kube(
            f"slot {slot_key}",
            self.client.pod_list,
            label_selector=f"{LABEL_SLOT_ID}={name}",
        )
        return self._status(deployment, pods)

    def slot_serving(self, *, slot_key: str, bento_tag: str) -> bool:
        """One read of the Deployment: it runs ``bento_tag`` and all its pods are ready."""
        validate_slot_key(slot_key)
        deployment = self._get_deployment(self.object_name(slot_key))
        if deployment is None:
            return False
        annotations = deployment["metadata"].get("annotations") or {}
        return annotations.get(ANN_BENTO_TAG) == bento_tag and deployment_ready(deployment)

    def slot_resources(self, *, slot_key: str) -> ResourceSample:
        """Memory (working set) and a CPU-seconds counter from the metrics API.

        The metrics API reports CPU as a rate averaged over a short window; the counter
        integrates it between the API's own sample timestamps and is kept on the
        Deployment, so every process reading it sees one series. It starts at zero on the
        first sample (and again when the slot is restarted), which consumers treat as a
        reset. Without the metrics API (no metrics-server), usage is unknown and this
        raises ResourceUsageUnknown rather than report made-up numbers.
        """
        validate_slot_key(slot_key)
        name = self.object_name(slot_key)
        deployment = self._get_deployment(name)
        if deployment is None:
            raise SlotNotFound(f"no slot {slot_key!r} (Deployment {self.namespace}/{name})")
        try:
            items = self.client.pod_metrics(
                namespace=self.namespace, label_selector=f"{LABEL_SLOT_ID}={name}"
            )
        except KubeNotFound:
            raise ResourceUsageUnknown(
                f"slot {slot_key}: resource usage is unknown: the cluster does not serve the "
                f"metrics.k8s.io API (install metrics-server)"
            ) from None
        except KubeError as exc:
            raise RuntimeBackendError(f"slot {slot_key}: {exc}") from None
        cores, memory, containers, newest = Decimal(0), 0, 0, None
        for item in items:
            stamp = parse_dt(item.get("timestamp"))
            if stamp is not None and (newest is None or stamp > newest):
                newest = stamp
            for entry in item.get("containers") or []:
                usage = entry.get("usage") or {}
                cores += parse_quantity(usage.get("cpu", "0"))
                memory += int(parse_quantity(usage.get("memory", "0")))
                containers += 1
        taken_at = newest or datetime.now(UTC)
        cpu_seconds = self._advance_cpu_counter(deployment, cores, taken_at) if containers else 0.0
        return ResourceSample(
            slot_key=slot_key,
            cpu_seconds=cpu_seconds,
            rss_bytes=memory,
            process_count=containers,
            taken_at=taken_at,
        )

    def slots(self) -> list[SlotStatus]:
        deployments = self._kube(
            "listing slots", self.client.deployment_list, label_selector=SLOT_SELECTOR
        )
        pods = self._kube("listing slots", self.client.pod_list, label_selector=SLOT_SELECTOR)
        return [self._status(d, pods) for d in deployments if slot_key_of(d)]

    def supervise_once(self) -> list[SlotEvent]:
        """Report, once per change, container restarts and pods that cannot become ready.

        Kubernetes does the restarting (with its own backoff); the last reported state is
        kept on the Deployment, so several supervisors, or a restarted one, report each
        change once.
        """
        events: list[SlotEvent] = []
        deployments = self._kube(
            "supervising", self.client.deployment_list, label_selector=SLOT_SELECTOR
        )
        pods = self._kube("supervising", self.client.pod_list, label_selector=SLOT_SELECTOR)
        for deployment in deployments:
            slot_key = slot_key_of(deployment)
            if not slot_key:
                continue
            name = deployment["metadata"]["name"]
            own = pods_of(name, pods)
            reported = json_annotation(deployment, ANN_REPORTED) or {}
            restarts = restart_count(own)
            seen = int(reported.get("restarts", 0))
            problem = pods_problem(own)
            found: list[SlotEvent] = []
            if restarts > seen:
                found.append(
                    SlotEvent.now(
                        slot_key,
                        "restarted",
                        f"Kubernetes restarted the server {restarts - seen} "
                        f"time(s) (total {restarts}){last_termination(own)}",
                    )
                )
            if problem and problem != reported.get("problem", ""):
                kind = "crashed" if "CrashLoopBackOff" in problem else "unavailable"
                found.append(SlotEvent.now(slot_key, kind, problem))
            if found or restarts != seen or problem != reported.get("problem", ""):
                patch = {
                    "metadata": {
                        "annotations": {
                            ANN_REPORTED: json.dumps({"restarts": restarts, "problem": problem})
                        }
                    }
                }
                if found:
                    patch["metadata"]["annotations"][ANN_LAST_EVENT] = event_json(found[-1])
                try:
                    self.client.deployment_patch(namespace=self.namespace, name=name, patch=patch)
                except KubeNotFound:
                    continue  # stopped meanwhile
                except KubeError as exc:
                    raise RuntimeBackendError(f"slot {slot_key}: {exc}") from None
            events.extend(found)
        return events

    # ------------------------------------------------------------------ readiness

    def _wait_ready(self, slot_key: str, bento_tag: str, deadline: float) -> None:
        """Poll until the slot's Deployment is fully available; on failure delete it."""
        name = self.object_name(slot_key)
        image = self.image_for(bento_tag)
        selector = f"{LABEL_SLOT_ID}={name}"
        while True:
            deployment = self._get_deployment(name)
            if deployment is None:
                raise SlotStartError(f"slot {slot_key}: Deployment {name} vanished while starting")
            pods = self._kube(f"slot {slot_key}", self.client.pod_list, label_selector=selector)
            pulls = image_pull_failures(pods)
            if pulls:
                self._fail_start(
                    slot_key,
                    f"slot {slot_key}: image {image} cannot be pulled ({pulls}); build the "
                    f"Bento's image and push it to {self.image_registry} first (README: "
                    f"'Running in production')",
                    pods,
                )
            if deployment_ready(deployment):
                return
            refused = deployment_condition(deployment, "ReplicaFailure")
            if refused and refused.get("status") == "True":
                # The API server refused its pods (admission: a quota, a policy, an unknown
                # PriorityClass): waiting will not change that, so the start fails now, saying
                # what the cluster said rather than "not ready" at the deadline.
                self._fail_start(
                    slot_key,
                    f"slot {slot_key}: the cluster refused to create its pods: "
                    f"{refused.get('message', refused.get('reason', ''))}"
                    + self._refusal_hint(deployment),
                    pods,
                )
            stalled = deployment_condition(deployment, "Progressing")
            if stalled and stalled.get("reason") == "ProgressDeadlineExceeded":
                self._fail_start(
                    slot_key,
                    f"slot {slot_key}: {bento_tag} made no progress: {stalled.get('message', '')}",
                    pods,
                )
            if self._clock() >= deadline:
                self._fail_start(
                    slot_key,
                    f"slot {slot_key}: {bento_tag} was not ready within "
                    f"{self.ready_timeout:.0f} s ({deployment_summary(deployment, pods)})",
                    pods,
                )
            time.sleep(self.poll_interval)

    def _refusal_hint(self, deployment: dict[str, Any]) -> str:
        """Which of our settings put the refused field in the pods, when one did."""
        named = deployment["spec"]["template"]["spec"].get("priorityClassName")
        if named and named == self.shadow_priority_class:
            return (
                f" (MODELYARD_K8S_SHADOW_PRIORITY_CLASS names {named!r}: create that "
                "PriorityClass, or unset the setting)"
            )
        return ""

    def _fail_start(self, slot_key: str, message: str, pods: list[dict[str, Any]]) -> None:
        """Leave nothing running, then raise with the pods' states and log tail."""
        tail = self._pod_report(pods)
        self.slot_stop(slot_key=slot_key, timeout=5)
        raise SlotStartError(message, log_tail=tail)

    def _pod_report(self, pods: list[dict[str, Any]]) -> str:
        lines = []
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            lines.append(f"pod {pod_name}: {pod_state(pod)}")
            try:
                log = self.client.pod_log_tail(
                    namespace=self.namespace,
                    name=pod_name,
                    container=CONTAINER,
                    lines=_LOG_TAIL_LINES,
                )
            except KubeError:
                log = ""
            lines.extend(line for line in log.splitlines() if line.strip())
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    # ------------------------------------------------------------------ helpers

    def _get_deployment(self, name: str) -> dict[str, Any] | None:
        try:
            return self.client.deployment_get(namespace=self.namespace, name=name)
        except KubeNotFound:
            return None
        except KubeError as exc:
            raise RuntimeBackendError(str(exc)) from None

    def _kube(self, context: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(namespace=self.namespace, **kwargs)
        except KubeError as exc:
            raise RuntimeBackendError(f"{context}: {exc}") from None

    def _record_event(self, name: str, event: SlotEvent) -> None:
        patch = {"metadata": {"annotations": {ANN_LAST_EVENT: event_json(event)}}}
        try:
            self.client.deployment_patch(namespace=self.namespace, name=name, patch=patch)
        except KubeError as exc:
            raise RuntimeBackendError(f"slot {event.slot_key}: {exc}") from None

    def _advance_cpu_counter(
        self, deployment: dict[str, Any], cores: Decimal, taken_at: datetime
    ) -> float:
        state = json_annotation(deployment, ANN_CPU) or {}
        total = float(state.get("cpu_seconds", 0.0))
        last = parse_dt(state.get("at"))
        if last is not None and taken_at <= last:
            return total  # the metrics API has no newer sample yet
        if last is not None:
            total += float(cores) * (taken_at - last).total_seconds()
        patch = {
            "metadata": {
                "annotations": {
                    ANN_CPU: json.dumps(
                        {"cpu_seconds": round(total, 6), "at": taken_at.isoformat()}
                    )
                }
            }
        }
        try:
            self.client.deployment_patch(
                namespace=self.namespace, name=deployment["metadata"]["name"], patch=patch
            )
        except KubeError as exc:
            raise RuntimeBackendError(str(exc)) from None
        return total

    def _handle(self, slot_key: str, bento_tag: str, started_at: datetime | None) -> SlotHandle:
        return SlotHandle(
            slot_key=slot_key,
            bento_tag=bento_tag,
            url=self.url_for(slot_key),
            identifier=f"deployment:{self.namespace}/{self.object_name(slot_key)}",
            pid=None,
            port=BENTO_PORT,
            started_at=started_at or datetime.now(UTC),
        )

    def _status(self, deployment: dict[str, Any], pods: list[dict[str, Any]]) -> SlotStatus:
        metadata = deployment["metadata"]
        annotations = metadata.get("annotations") or {}
        slot_key = annotations.get(ANN_SLOT_KEY, "")
        own = pods_of(metadata["name"], pods)
        last = json_annotation(deployment, ANN_LAST_EVENT)
        return SlotStatus(
            slot_key=slot_key,
            bento_tag=annotations.get(ANN_BENTO_TAG, ""),
            url=self.url_for(slot_key),
            running=any((pod.get("status") or {}).get("phase") == "Running" for pod in own),
            ready=deployment_ready(deployment),
            restarts=restart_count(own),
            last_event=(
                SlotEvent(
                    slot_key=slot_key,
                    kind=last["kind"],
                    message=last["message"],
                    at=datetime.fromisoformat(last["at"]),
                )
                if last
                else None
            ),
            pid=None,
            started_at=parse_dt(annotations.get(ANN_STARTED_AT)),
            # The gateway reaches a slot through its Service, which kube-proxy balances over
            # the pods whose readiness probe passes: one address, ready while any pod is.
            replicas=(
                ReplicaStatus(
                    index=0,
                    url=self.url_for(slot_key),
                    state=(
                        "ready"
                        if int((deployment.get("status") or {}).get("readyReplicas", 0)) > 0
                        else "starting"
                    ),
                ),
            ),
        )


# ---------------------------------------------------------------------- pure helpers


def image_reference(*, registry: str, bento_tag: str) -> str:
    """``<registry>/<bento name>:<bento version>``; ValueError for a tag no image can have."""
    name, sep, version = bento_tag.partition(":")
    if not sep or not _REPO_COMPONENT.match(name) or not _IMAGE_TAG.match(version):
        raise ValueError(
            f"Bento tag {bento_tag!r} cannot name an image: the name must be a Docker "
            f"repository component and the version a Docker tag"
        )
    return f"{registry.strip().rstrip('/')}/{name}:{version}"


def image_build_context(*, registry: str, home: Path, bento_tag: str, dest: Path) -> ImageBuild:
    """Write the Bento's Docker build context to ``dest``; the image and how to build it."""
    image = image_reference(registry=registry, bento_tag=bento_tag)
    context = bentoml_integration.bento_image_context(home=home, bento_tag=bento_tag, dest=dest)
    return ImageBuild(
        image=image, context=context, dockerfile=context / "env" / "docker" / "Dockerfile"
    )


def _split_slot_key(slot_key: str) -> tuple[str, str]:
    """``churn-prod.blue`` -> (``churn-prod``, ``blue``); a key without a dot is its own name."""
    deployment, sep, color = slot_key.rpartition(".")
    return (deployment, color) if sep and deployment else (slot_key, "")


def _label_value(value: str) -> str:
    """A valid label value (<= 63 chars, alphanumeric at both ends); full values live in
    annotations."""
    cleaned = _LABEL_VALUE_BAD.sub("-", value)[:63]
    return cleaned.strip("-._")
