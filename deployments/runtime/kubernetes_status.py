"""What the Kubernetes API's Deployment and Pod JSON says: readiness, restarts, problems,
annotations.

Pure functions over the dicts the API returned (via ``deployments.integrations.kubernetes``),
kept apart from ``deployments.runtime.kubernetes``, which acts on the cluster (renders,
creates, patches, deletes): reading state needs no client, no settings and no backend, so it
can be read and tested on its own. This module must not import ``runtime.kubernetes``
(which imports it).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from deployments.runtime.base import SlotEvent

# The label and annotation through which a Deployment and its pods are tied back to a slot;
# runtime.kubernetes writes them (and re-exports them), these helpers read them.
LABEL_SLOT_ID = "modelyard.io/slot-id"
ANN_SLOT_KEY = "modelyard.io/slot-key"

# Waiting reasons that mean the image will not arrive by waiting longer.
IMAGE_PULL_FAILURES = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}


def slot_key_of(deployment: dict[str, Any]) -> str:
    return ((deployment.get("metadata") or {}).get("annotations") or {}).get(ANN_SLOT_KEY, "")


def pods_of(name: str, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        pod
        for pod in pods
        if ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_SLOT_ID) == name
        and not (pod.get("metadata") or {}).get("deletionTimestamp")
    ]


def deployment_ready(deployment: dict[str, Any]) -> bool:
    """Every wanted pod runs the current template and is available; no old pods remain."""
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    generation = int((deployment.get("metadata") or {}).get("generation", 0))
    return (
        wanted > 0
        and int(status.get("observedGeneration", 0)) >= generation
        and int(status.get("updatedReplicas", 0)) >= wanted
        and int(status.get("availableReplicas", 0)) >= wanted
        and int(status.get("readyReplicas", 0)) >= wanted
        and int(status.get("replicas", 0)) <= wanted
    )


def deployment_condition(deployment: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def container_statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def image_pull_failures(pods: list[dict[str, Any]]) -> str:
    found = []
    for pod in pods:
        for container in container_statuses(pod):
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in IMAGE_PULL_FAILURES:
                detail = waiting.get("message", "")
                found.append(f"{waiting['reason']}" + (f": {detail}" if detail else ""))
    return "; ".join(dict.fromkeys(found))


def restart_count(pods: list[dict[str, Any]]) -> int:
    return sum(int(c.get("restartCount", 0)) for pod in pods for c in container_statuses(pod))


def pod_state(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    parts = [status.get("phase", "Unknown")]
    for container in container_statuses(pod):
        state = container.get("state") or {}
        for key in ("waiting", "terminated"):
            if state.get(key):
                reason = state[key].get("reason", key)
                message = state[key].get("message", "")
                parts.append(
                    f"{container.get('name')} {reason}" + (f": {message}" if message else "")
                )
        if container.get("restartCount"):
            parts.append(f"{container['restartCount']} restart(s)")
        if not container.get("ready") and "running" in state:
            parts.append(f"{container.get('name')} running, not ready")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            parts.append(f"unschedulable: {condition.get('message', '')}")
    return ", ".join(parts)


def pods_problem(pods: list[dict[str, Any]]) -> str:
    """Why a slot's pods cannot serve (crash loop, pull failure, unschedulable), or ""."""
    problems = []
    for pod in pods:
        for container in container_statuses(pod):
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason", "")
            if reason == "CrashLoopBackOff" or reason in IMAGE_PULL_FAILURES:
                problems.append(f"{reason}: {waiting.get('message', '')}".rstrip(": "))
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                problems.append(f"Unschedulable: {condition.get('message', '')}")
    return "; ".join(dict.fromkeys(problems))


def last_termination(pods: list[dict[str, Any]]) -> str:
    for pod in pods:
        for container in container_statuses(pod):
            terminated = (container.get("lastState") or {}).get("terminated") or {}
            if terminated:
                return (
                    f"; last exit: {terminated.get('reason', 'terminated')} "
                    f"(exit code {terminated.get('exitCode', '?')})"
                )
    return ""


def deployment_summary(deployment: dict[str, Any], pods: list[dict[str, Any]]) -> str:
    status = deployment.get("status") or {}
    wanted = (deployment.get("spec") or {}).get("replicas", 1)
    text = f"{status.get('availableReplicas', 0) or 0}/{wanted} pods available"
    if pods:
        text += "; " + "; ".join(f"{pod['metadata']['name']}: {pod_state(pod)}" for pod in pods[:3])
    else:
        text += "; no pods were created (check the namespace's quota and events)"
    return text


def json_annotation(deployment: dict[str, Any], key: str) -> dict[str, Any] | None:
    raw = ((deployment.get("metadata") or {}).get("annotations") or {}).get(key)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None  # hand-edited: ignore rather than fail every status read
    return value if isinstance(value, dict) else None


def event_json(event: SlotEvent) -> str:
    return json.dumps({"kind": event.kind, "message": event.message, "at": event.at.isoformat()})


def parse_dt(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
