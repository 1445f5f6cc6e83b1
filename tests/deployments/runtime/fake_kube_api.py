"""A small real HTTP server speaking the slice of the Kubernetes API the runtime backend uses.

Used only where no cluster is reachable: the official ``kubernetes`` client talks to it over
HTTP with a kubeconfig and a bearer token, exactly as it would to a real API server.

What it implements, with the API server's own semantics where the backend depends on them:

- apps/v1 Deployments and v1 Services: create (409 if it exists), get, list by label
  selector, replace (409 on a stale ``resourceVersion``; a Service keeps its cluster IP),
  JSON merge patch, delete. Every written object is validated against the Kubernetes 1.36
  OpenAPI schema (kubernetes-validate, strict), and rejected with 422 like the real server
  rejects unknown or mistyped fields.
- A tiny Deployment controller + kubelet, run on every request: a Deployment gets
  ``replicas`` pods of its template; a pod's fate depends on its image, as on a real node:
  an image the "registry" does not hold ends in ErrImagePull/ImagePullBackOff, a crashing one
  in CrashLoopBackOff with growing restart counts, an unready one runs but never passes its
  readiness probe; others become ready ``ready_after`` seconds after they were created.
  The Deployment's status (observedGeneration, updated/ready/available replicas, conditions)
  follows from its pods.
- pods list and pod logs; metrics.k8s.io PodMetrics only when ``metrics_enabled``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import yaml

SCHEMA_VERSION = "1.36"

_KINDS = {
    ("apps/v1", "deployments"): ("Deployment", "apps/v1"),
    ("v1", "services"): ("Service", "v1"),
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


class FakeKubeAPI:
    def __init__(self, *, token: str = "fake-token", ready_after: float = 0.3) -> None:
        self.token = token
        self.ready_after = ready_after
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, ns, name)
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.available_images: set[str] = set()  # what the registry holds
        self.crashing_images: set[str] = set()
        self.unready_images: set[str] = set()
        self.logs: dict[str, str] = {}  # image -> what its containers print
        self.metrics_enabled = False
        # The cluster's PriorityClasses (a real one has these two built in): a pod naming
        # another is refused at admission, and its Deployment reports ReplicaFailure.
        self.priority_classes = {"system-cluster-critical", "system-node-critical"}
        self.usage = {"cpu": "250m", "memory": "300Mi"}
        self.requests: list[tuple[str, str]] = []
        self._rv = 1000
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeKubeAPI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

            def _handle(self) -> None:
                fake._dispatch(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path, *, context: str = "fake") -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "modelyard", "user": {"token": self.token}}],
                    "contexts": [
                        {
                            "name": context,
                            "context": {
                                "cluster": "fake",
                                "user": "modelyard",
                                "namespace": "modelyard",
                            },
                        }
                    ],
                    "current-context": context,
                }
            )
        )
        return path

    # ------------------------------------------------------------------ test helpers

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            self._reconcile()
            found = self.objects.get((kind, namespace, name))
            return copy.deepcopy(found) if found else None

    def pods_of(self, namespace: str, deployment: str) -> list[dict[str, Any]]:
        with self.lock:
            self._reconcile()
            return [
                copy.deepcopy(pod)
                for (ns, _), pod in self.pods.items()
                if ns == namespace and pod["metadata"]["ownerDeployment"] == deployment
            ]

    def restart_container(self, namespace: str, deployment: str, reason: str = "OOMKilled") -> None:
        """What the kubelet does after a container died: restartCount + 1, lastState set."""
        with self.lock:
            for (ns, _), pod in self.pods.items():
                if ns == namespace and pod["metadata"]["ownerDeployment"] == deployment:
                    status = pod["status"]["containerStatuses"][0]
                    status["restartCount"] += 1
                    status["lastState"] = {
                        "terminated": {"reason": reason, "exitCode": 137, "finishedAt": _now()}
                    }

    # ------------------------------------------------------------------ HTTP

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        method = handler.command
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((method, parts.path))
        try:
            if handler.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            body = json.loads(raw) if raw else None
            with self.lock:
                self._reconcile()
                result = self._route(method, parts.path, query, body, handler.headers)
                self._reconcile()
            if isinstance(result, str):
                self._send(handler, 200, result.encode(), "text/plain")
            else:
                self._send(handler, 201 if method == "POST" else 200, json.dumps(result).encode())
        except ApiError as exc:
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": exc.message,
                "reason": exc.reason,
                "code": exc.code,
            }
            self._send(handler, exc.code, json.dumps(status).encode())

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, code: int, data: bytes, ctype: str = "application/json"
    ) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _route(self, method: str, path: str, query: dict, body: Any, headers: Any) -> Any:
        seg = [s for s in path.split("/") if s]
        # /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods
        if seg[:3] == ["apis", "metrics.k8s.io", "v1beta1"]:
            if not self.metrics_enabled:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if len(seg) == 6 and seg[3] == "namespaces" and seg[5] == "pods" and method == "GET":
                return self._pod_metrics(seg[4], query.get("labelSelector", ""))
        if seg[:1] == ["apis"] and len(seg) >= 5:
            group_version, rest = f"{seg[1]}/{seg[2]}", seg[3:]
        elif seg[:1] == ["api"] and len(seg) >= 4:
            group_version, rest = seg[1], seg[2:]
        else:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource {path}"
            )
        if rest[0] != "namespaces" or len(rest) < 3:
            raise ApiError(404, "NotFound", f"unsupported path {path}")
        namespace, plural, tail = rest[1], rest[2], rest[3:]
        if (group_version, plural) == ("v1", "pods"):
            return self._pods(method, namespace, tail, query)
        if (group_version, plural) not in _KINDS:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource {path}"
            )
        kind, api_version = _KINDS[(group_version, plural)]
        if not tail:
            if method == "GET":
                return self._list(kind, api_version, namespace, query.get("labelSelector", ""))
            if method == "POST":
                return self._create(kind, api_version, namespace, body)
        elif len(tail) == 1:
            name = tail[0]
            if method == "GET":
                return copy.deepcopy(self._existing(kind, namespace, name))
            if method == "PUT":
                return self._replace(kind, api_version, namespace, name, body)
            if method == "PATCH":
                ctype = headers.get("Content-Type", "")
                if ctype != "application/merge-patch+json":
                    raise ApiError(
                        415, "UnsupportedMediaType", f"fake supports merge patch only, got {ctype}"
                    )
                return self._patch(kind, namespace, name, body)
            if method == "DELETE":
                return self._delete(kind, namespace, name)
        raise ApiError(405, "MethodNotAllowed", f"{method} {path} is not supported")

    # ------------------------------------------------------------------ objects

    def _existing(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.lower()}s "{name}" not found')
        return obj

    def _validate(self, obj: dict[str, Any]) -> None:
        try:
            kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise ApiError(422, "Invalid", f"{obj.get('kind')} is invalid: {exc.message}") from None

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _create(self, kind: str, api_version: str, namespace: str, body: dict) -> dict:
        if body.get("kind") != kind or body.get("apiVersion") != api_version:
            raise ApiError(400, "BadRequest", f"expected {api_version} {kind}")
        name = body["metadata"]["name"]
        if (kind, namespace, name) in self.objects:
            raise ApiError(409, "AlreadyExists", f'{kind.lower()}s "{name}" already exists')
        if body["metadata"].get("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match")
        self._validate(body)
        obj = copy.deepcopy(body)
        obj["metadata"].update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            creationTimestamp=_now(),
            generation=1,
        )
        if kind == "Service":
            obj["spec"]["clusterIP"] = f"10.96.{len(self.objects) % 250}.{self._rv % 250}"
            obj["spec"]["clusterIPs"] = [obj["spec"]["clusterIP"]]
        obj["status"] = {}
        self.objects[(kind, namespace, name)] = obj
        return copy.deepcopy(obj)

    def _replace(self, kind: str, api_version: str, namespace: str, name: str, body: dict) -> dict:
        current = self._existing(kind, namespace, name)
        if body["metadata"]["name"] != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the URL")
        wanted_rv = body["metadata"].get("resourceVersion")
        if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.lower()}s "{name}": the object has '
                f"been modified; please apply your changes to the latest version and try again",
            )
        self._validate(body)
        obj = copy.deepcopy(body)
        if kind == "Service":
            ip = current["spec"]["clusterIP"]
            if obj["spec"].get("clusterIP", ip) != ip:
                raise ApiError(422, "Invalid", "spec.clusterIP: Invalid value: field is immutable")
            obj["spec"]["clusterIP"], obj["spec"]["clusterIPs"] = ip, [ip]
        if kind == "Deployment" and obj["spec"]["selector"] != current["spec"]["selector"]:
            raise ApiError(422, "Invalid", "spec.selector: Invalid value: field is immutable")
        self._store_update(current, obj)
        return copy.deepcopy(obj)

    def _patch(self, kind: str, namespace: str, name: str, patch: dict) -> dict:
        current = self._existing(kind, namespace, name)
        merged = merge_patch(current, patch)
        self._validate({k: v for k, v in merged.items() if k != "status"})
        self._store_update(current, merged)
        return copy.deepcopy(merged)

    def _store_update(self, current: dict, obj: dict) -> None:
        meta = obj["metadata"]
        for key in ("uid", "creationTimestamp", "namespace", "generation"):
            meta[key] = current["metadata"][key]
        if obj.get("spec") != current.get("spec"):
            meta["generation"] = current["metadata"]["generation"] + 1
        meta["resourceVersion"] = self._next_rv()
        obj["status"] = current.get("status", {})
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj

    def _delete(self, kind: str, namespace: str, name: str) -> dict:
        self._existing(kind, namespace, name)
        del self.objects[(kind, namespace, name)]
        return {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}

    def _list(self, kind: str, api_version: str, namespace: str, selector: str) -> dict:
        items = [
            copy.deepcopy(obj)
            for (k, ns, _), obj in sorted(self.objects.items())
            if k == kind and ns == namespace and _matches(obj, selector)
        ]
        return {
            "kind": f"{kind}List",
            "apiVersion": api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    # ------------------------------------------------------------------ pods

    def _pods(self, method: str, namespace: str, tail: list[str], query: dict) -> Any:
        if method == "GET" and not tail:
            items = [
                _public_pod(pod)
                for (ns, _), pod in sorted(self.pods.items())
                if ns == namespace and _matches(pod, query.get("labelSelector", ""))
            ]
            return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        if method == "GET" and len(tail) == 2 and tail[1] == "log":
            pod = self.pods.get((namespace, tail[0]))
            if pod is None:
                raise ApiError(404, "NotFound", f'pods "{tail[0]}" not found')
            image = pod["spec"]["containers"][0]["image"]
            if image not in self.available_images:
                raise ApiError(
                    400, "BadRequest", f'container "bento" in pod "{tail[0]}" is waiting to start'
                )
            lines = self.logs.get(image, "").splitlines()
            count = int(query.get("tailLines", len(lines) or 1))
            return "\n".join(lines[-count:])
        raise ApiError(405, "MethodNotAllowed", "only listing pods and reading logs is supported")

    def _pod_metrics(self, namespace: str, selector: str) -> dict:
        items = []
        for (ns, name), pod in sorted(self.pods.items()):
            if ns != namespace or not _matches(pod, selector):
                continue
            if pod["status"]["phase"] != "Running":
                continue
            items.append(
                {
                    "metadata": {
                        "name": name,
                        "namespace": ns,
                        "labels": pod["metadata"]["labels"],
                    },
                    "timestamp": _now(),
                    "window": "15s",
                    "containers": [{"name": "bento", "usage": dict(self.usage)}],
                }
            )
        return {"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "items": items}

    def _reconcile(self) -> None:
        """The Deployment controller and the kubelet, in one pass."""
        now = time.monotonic()
        live = {(ns, name) for (kind, ns, name) in self.objects if kind == "Deployment"}
        for key, pod in list(self.pods.items()):
            if (key[0], pod["metadata"]["ownerDeployment"]) not in live:
                del self.pods[key]  # garbage collection of a deleted Deployment's pods
        for (kind, ns, name), dep in self.objects.items():
            if kind != "Deployment":
                continue
            template = dep["spec"]["template"]
            template_hash = hashlib.sha256(
                json.dumps(template, sort_keys=True).encode()
            ).hexdigest()[:10]
            own = {
                k: p
                for k, p in self.pods.items()
                if k[0] == ns and p["metadata"]["ownerDeployment"] == name
            }
            for key, pod in own.items():
                if pod["metadata"]["templateHash"] != template_hash:
                    del self.pods[key]  # rolled: the new template replaces old pods
            current = [
                p
                for p in self.pods.values()
                if p["metadata"]["ownerDeployment"] == name and p["metadata"]["namespace"] == ns
            ]
            refused = None
            priority_class = template["spec"].get("priorityClassName")
            if priority_class and priority_class not in self.priority_classes:
                refused = (
                    f'pods "{name}-{template_hash}-" is forbidden: no PriorityClass with name '
                    f"{priority_class} was found"
                )
            wanted = 0 if refused else int(dep["spec"].get("replicas", 1))
            for _ in range(len(current), wanted):
                pod_name = f"{name}-{template_hash}-{uuid.uuid4().hex[:5]}"
                self.pods[(ns, pod_name)] = {
                    "metadata": {
                        "name": pod_name,
                        "namespace": ns,
                        "labels": dict(template["metadata"]["labels"]),
                        "ownerDeployment": name,
                        "templateHash": template_hash,
                        "createdAt": now,
                    },
                    "spec": copy.deepcopy(template["spec"]),
                    "status": {
                        "phase": "Pending",
                        "containerStatuses": [
                            {
                                "name": "bento",
                                "image": template["spec"]["containers"][0]["image"],
                                "ready": False,
                                "restartCount": 0,
                                "state": {"waiting": {"reason": "ContainerCreating"}},
                                "lastState": {},
                            }
                        ],
                    },
                }
            ready = 0
            for pod in self.pods.values():
                if pod["metadata"]["ownerDeployment"] != name or pod["metadata"]["namespace"] != ns:
                    continue
                self._kubelet(pod, now)
                ready += pod["status"]["containerStatuses"][0]["ready"]
            pods = [
                p
                for p in self.pods.values()
                if p["metadata"]["ownerDeployment"] == name and p["metadata"]["namespace"] == ns
            ]
            dep["status"] = {
                "observedGeneration": dep["metadata"]["generation"],
                "replicas": len(pods),
                "updatedReplicas": len(pods),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "unavailableReplicas": len(pods) - ready,
                "conditions": [
                    {
                        "type": "Available",
                        "status": "True" if ready >= dep["spec"].get("replicas", 1) else "False",
                        "reason": "MinimumReplicasAvailable"
                        if ready >= dep["spec"].get("replicas", 1)
                        else "MinimumReplicasUnavailable",
                    },
                    {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
                ]
                + (
                    [
                        {
                            "type": "ReplicaFailure",
                            "status": "True",
                            "reason": "FailedCreate",
                            "message": refused,
                        }
                    ]
                    if refused
                    else []
                ),
            }

    def _kubelet(self, pod: dict[str, Any], now: float) -> None:
        container = pod["status"]["containerStatuses"][0]
        image = container["image"]
        age = now - pod["metadata"]["createdAt"]
        if image not in self.available_images:
            reason = "ErrImagePull" if age < 1.0 else "ImagePullBackOff"
            pod["status"]["phase"] = "Pending"
            container["state"] = {
                "waiting": {
                    "reason": reason,
                    "message": f'failed to pull image "{image}": {image}: not found',
                }
            }
            return
        if image in self.crashing_images:
            pod["status"]["phase"] = "Running"
            container["restartCount"] = max(container["restartCount"], int(age / 0.2))
            container["lastState"] = {"terminated": {"reason": "Error", "exitCode": 1}}
            container["state"] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": "back-off 10s restarting failed container=bento",
                }
            }
            container["ready"] = False
            return
        pod["status"]["phase"] = "Running"
        container["state"] = {"running": {"startedAt": _now()}}
        container["ready"] = image not in self.unready_images and age >= self.ready_after


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, sep, value = term.partition("=")
        if not sep:
            if key not in labels:
                return False
        elif labels.get(key) != value:
            return False
    return True


def _public_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """A pod as the API shows it (without the fake's bookkeeping fields)."""
    shown = copy.deepcopy(pod)
    for key in ("ownerDeployment", "templateHash", "createdAt"):
        shown["metadata"].pop(key, None)
    shown["kind"], shown["apiVersion"] = "Pod", "v1"
    return shown
