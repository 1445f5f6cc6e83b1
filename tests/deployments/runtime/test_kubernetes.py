"""The Kubernetes runtime backend, driven with the real ``kubernetes`` client.

No cluster is reachable here, so the client talks HTTP to ``FakeKubeAPI`` (a small real API
server: see its docstring); the manifests the backend renders for real built Bentos are
validated offline against the Kubernetes 1.36 schema, strictly (unknown fields fail).
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import kubernetes_validate
import pytest
import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from core.model_process import SECRET_NAME
from deployments import backends
from deployments.integrations.kubernetes import KubeClient, KubeConnection, KubeError
from deployments.runtime.base import RuntimeBackendError, SlotNotFound, SlotStartError
from deployments.runtime.kubernetes import (
    BENTO_UID,
    DEFAULT_RESOURCES,
    LABEL_SLOT_ID,
    KubernetesBackend,
    ResourceUsageUnknown,
)
from gateway.routes import Route, route_publish, route_remove, routes_read_all

from .fake_kube_api import SCHEMA_VERSION, FakeKubeAPI

NAMESPACE = "modelyard"
REGISTRY = "registry.example.com/modelyard"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture
def fake():
    api = FakeKubeAPI(ready_after=0.3).start()
    yield api
    api.stop()


@pytest.fixture
def kubeconfig(fake, tmp_path) -> Path:
    return fake.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def make_k8s(kubeconfig):
    clients = []

    def make(**options) -> KubernetesBackend:
        client = KubeClient(KubeConnection(kubeconfig=str(kubeconfig), request_timeout=5))
        clients.append(client)
        options.setdefault("ready_timeout", 5)
        options.setdefault("poll_interval", 0.05)
        return KubernetesBackend(client, namespace=NAMESPACE, image_registry=REGISTRY, **options)

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def k8s(make_k8s) -> KubernetesBackend:
    return make_k8s()


def image(tag: str) -> str:
    name, version = tag.split(":")
    return f"{REGISTRY}/{name}:{version}"


# --------------------------------------------------------------------------- rendering


def test_slot_pod_gets_no_platform_secrets_and_runs_confined(store, make_k8s):
    """A slot pod runs an uploaded model: nothing of the platform's may reach it."""
    backend = make_k8s(service_account="slot-runner", image_pull_secret="registry-credentials")
    deployment, _ = backend.render(slot_key="churn-prod.blue", bento_tag=store["v1"])
    assert kubernetes_validate.validate(deployment, SCHEMA_VERSION, strict=True)
    pod = deployment["spec"]["template"]["spec"]

    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # no PostgreSQL/Redis addresses as variables
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
    # Writable places are the pod's own emptyDirs; no Secret, ConfigMap, PVC or host path.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert all(set(volume) == {"name", "emptyDir"} for volume in volumes.values()), volumes
    for container in [*pod["containers"], *pod.get("initContainers", [])]:
        assert "envFrom" not in container
        for variable in container["env"]:
            assert set(variable) == {"name", "value"}, variable  # no secretKeyRef/valueFrom
            assert not SECRET_NAME.search(variable["name"]), variable
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert not security.get("privileged")
        assert {mount["name"] for mount in container["volumeMounts"]} <= volumes.keys()


def test_rendered_manifests_for_a_built_bento_validate_strictly(store, make_k8s):
    backend = make_k8s(
        image_pull_secret="registry-credentials",
        deployment_resources={
            "churn-prod": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
        },
    )
    deployment, service = backend.render(slot_key="churn-prod.blue", bento_tag=store["v1"])
    for manifest in (deployment, service):
        assert kubernetes_validate.validate(manifest, SCHEMA_VERSION, strict=True)

    name = backend.object_name("churn-prod.blue")
    assert DNS_1035.match(name) and len(name) <= 63
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["modelyard.io/deployment"] == "churn-prod"
    assert labels["modelyard.io/slot"] == "blue"
    assert labels["modelyard.io/version"] == "v1"
    assert deployment["spec"]["selector"]["matchLabels"] == {LABEL_SLOT_ID: name}
    assert service["spec"]["selector"] == {LABEL_SLOT_ID: name}
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == f"{REGISTRY}/scorer:v1"
    assert container["ports"][0]["containerPort"] == 3000
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert backend.url_for("churn-prod.blue") == f"http://{name}.{NAMESPACE}.svc:3000"
    # Another deployment gets the default resources.
    other, _ = backend.render(slot_key="fraud.green", bento_tag=store["v2"])
    assert other["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "cpu": "1",
        "memory": "1Gi",
    }


def test_image_build_context_is_what_bentoml_containerize_builds(store, k8s, tmp_path):
    build = k8s.image_build_context(
        home=store["home"], bento_tag=store["v1"], dest=tmp_path / "ctx"
    )
    assert build.image == f"{REGISTRY}/scorer:v1"
    dockerfile = build.dockerfile.read_text()
    # The model travels inside the image; the pods never read the platform's store.
    assert (build.context / "models" / "scorer" / "v1" / "model.joblib").is_file()
    assert (build.context / "src" / "service.py").is_file()
    assert "EXPOSE 3000" in dockerfile
    assert "USER bentoml" in dockerfile
    # The pods' runAsUser is the uid BentoML's Dockerfile gives its user.
    assert f"ARG BENTO_USER_UID={BENTO_UID}" in dockerfile
    assert build.commands[0][:2] == ["docker", "build"] and build.commands[1][-1] == build.image


def test_object_names_are_dns_labels_and_unique_per_slot_key(k8s):
    keys = ["a.b", "a-b", "A.b", "x" * 128, "churn_prod.blue"]
    names = [k8s.object_name(key) for key in keys]
    assert len(set(names)) == len(keys)
    for name in names:
        assert DNS_1035.match(name) and len(name) <= 63, name
    with pytest.raises(ValueError, match="slot key"):
        k8s.object_name("../etc")


def test_a_bento_tag_that_cannot_name_an_image_fails_the_start_clearly(k8s, fake):
    with pytest.raises(SlotStartError, match="cannot name an image"):
        k8s.slot_start(slot_key="churn-prod.blue", bento_tag="Scorer:v1")
    assert fake.objects == {}


# --------------------------------------------------------------------------- lifecycle


def test_slot_start_ready_route_switch_stop(k8s, fake):
    fake.available_images |= {image("scorer:v1"), image("scorer:v2")}
    routes = redis.Redis.from_url(settings.REDIS_URL)
    deployment = "k8s-e2e"
    route_remove(routes, deployment)
    try:
        blue = k8s.slot_start(slot_key=f"{deployment}.blue", bento_tag="scorer:v1")
        assert blue.url == k8s.url_for(f"{deployment}.blue")
        assert blue.identifier == f"deployment:{NAMESPACE}/{k8s.object_name(f'{deployment}.blue')}"
        status = k8s.slot_status(slot_key=f"{deployment}.blue")
        assert status.ready and status.running and status.bento_tag == "scorer:v1"
        assert status.last_event.kind == "started"
        route_publish(
            routes,
            Route(deployment=deployment, version=1, slot="blue", upstream=blue.url, key_hashes=()),
        )

        green = k8s.slot_start(slot_key=f"{deployment}.green", bento_tag="scorer:v2")
        route_publish(
            routes,
            Route(
                deployment=deployment, version=2, slot="green", upstream=green.url, key_hashes=()
            ),
        )
        assert routes_read_all(routes)[deployment].upstream == green.url != blue.url

        # Each slot's Service selects exactly its own pods.
        for slot, tag in (("blue", "scorer:v1"), ("green", "scorer:v2")):
            name = k8s.object_name(f"{deployment}.{slot}")
            service = fake.get("Service", NAMESPACE, name)
            pods = fake.pods_of(NAMESPACE, name)
            assert pods and all(
                pod["metadata"]["labels"][LABEL_SLOT_ID]
                == service["spec"]["selector"][LABEL_SLOT_ID]
                and pod["spec"]["containers"][0]["image"] == image(tag)
                for pod in pods
            )

        k8s.slot_stop(slot_key=f"{deployment}.blue")
        blue_name = k8s.object_name(f"{deployment}.blue")
        assert fake.get("Deployment", NAMESPACE, blue_name) is None
        assert fake.get("Service", NAMESPACE, blue_name) is None
        assert fake.pods_of(NAMESPACE, blue_name) == []
        with pytest.raises(SlotNotFound):
            k8s.slot_status(slot_key=f"{deployment}.blue")
        k8s.slot_stop(slot_key=f"{deployment}.blue")  # idempotent
        assert [s.slot_key for s in k8s.slots()] == [f"{deployment}.green"]
    finally:
        route_remove(routes, deployment)


def test_starting_the_same_bento_again_changes_nothing(k8s, fake):
    fake.available_images.add(image("scorer:v1"))
    first = k8s.slot_start(slot_key="churn-prod.blue", bento_tag="scorer:v1")
    name = k8s.object_name("churn-prod.blue")
    generation = fake.get("Deployment", NAMESPACE, name)["metadata"]["generation"]
    pods = {p["metadata"]["name"] for p in fake.pods_of(NAMESPACE, name)}
    fake.requests.clear()
    again = k8s.slot_start(slot_key="churn-prod.blue", bento_tag="scorer:v1")
    assert again.url == first.url
    assert fake.get("Deployment", NAMESPACE, name)["metadata"]["generation"] == generation
    assert {p["metadata"]["name"] for p in fake.pods_of(NAMESPACE, name)} == pods
    assert not [r for r in fake.requests if r[0] in ("POST", "DELETE")]


def test_another_bento_in_a_slot_replaces_its_pods_and_keeps_its_service(k8s, fake):
    fake.available_images |= {image("scorer:v1"), image("scorer:v2")}
    k8s.slot_start(slot_key="churn-prod.blue", bento_tag="scorer:v1")
    name = k8s.object_name("churn-prod.blue")
    cluster_ip = fake.get("Service", NAMESPACE, name)["spec"]["clusterIP"]
    k8s.slot_start(slot_key="churn-prod.blue", bento_tag="scorer:v2")
    deployment = fake.get("Deployment", NAMESPACE, name)
    assert deployment["metadata"]["generation"] == 2
    assert deployment["spec"]["template"]["metadata"]["labels"]["modelyard.io/version"] == "v2"
    assert {p["spec"]["containers"][0]["image"] for p in fake.pods_of(NAMESPACE, name)} == {
        image("scorer:v2")
    }
    assert fake.get("Service", NAMESPACE, name)["spec"]["clusterIP"] == cluster_ip
    status = k8s.slot_status(slot_key="churn-prod.blue")
    assert status.bento_tag == "scorer:v2"
    assert "replaced scorer:v1" in status.last_event.message


def test_missing_image_fails_the_slot_with_a_clear_error_and_leaves_nothing(k8s, fake):
    with pytest.raises(SlotStartError) as caught:
        k8s.slot_start(slot_key="churn-prod.blue", bento_tag="scorer:v9")
    message = str(caught.value)
    assert f"image {image('scorer:v9')} cannot be pulled" in message
    assert "ErrImagePull" in message or "ImagePullBackOff" in message
    assert f"push it to {REGISTRY}" in message
    assert "ErrImagePull" in caught.value.log_tail or "ImagePullBackOff" in caught.value.log_tail
    assert fake.objects == {}
    assert fake.pods_of(NAMESPACE, k8s.object_name("churn-prod.blue")) == []


def test_readiness_deadline_fails_with_pod_states_and_log_tail(make_k8s, fake):
    backend = make_k8s(ready_timeout=1.0)
    fake.available_images.add(image("broken:v1"))
    fake.unready_images.add(image("broken:v1"))
    fake.logs[image("broken:v1")] = "loading model\nValueError: this is not a model"
    started = time.monotonic()
    with pytest.raises(SlotStartError) as caught:
        backend.slot_start(slot_key="churn-prod.blue", bento_tag="broken:v1")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "broken:v1 was not ready within 1 s" in message
    assert "0/1 pods available" in message and "running, not ready" in message
    assert "ValueError: this is not a model" in caught.value.log_tail
    assert fake.objects == {}


def test_crash_loop_names_the_reason_at_the_deadline(make_k8s, fake):
    backend = make_k8s(ready_timeout=1.0)
    fake.available_images.add(image("broken:v2"))
    fake.crashing_images.add(image("broken:v2"))
    with pytest.raises(SlotStartError, match="CrashLoopBackOff"):
        backend.slot_start(slot_key="churn-prod.blue", bento_tag="broken:v2")
    assert fake.objects == {}


def test_supervisor_reports_each_restart_once_across_instances(make_k8s, fake):
    fake.available_images.add(image("scorer:v1"))
    backend = make_k8s()
    backend.slot_start(slot_key="churn-prod.blue", bento_tag="scorer:v1")
    assert backend.supervise_once() == []
    fake.restart_container(NAMESPACE, backend.object_name("churn-prod.blue"), reason="OOMKilled")
    events = backend.supervise_once()
    assert [(e.slot_key, e.kind) for e in events] == [("churn-prod.blue", "restarted")]
    assert "OOMKilled" in events[0].message and "exit code 137" in events[0].message
    # Reported state lives on the Deployment: a new supervisor does not repeat it.
    assert make_k8s().supervise_once() == []
    status = backend.slot_status(slot_key="churn-prod.blue")
    assert status.restarts == 1 and status.last_event.kind == "restarted"


def test_supervisor_reports_a_crash_loop_once(make_k8s, fake):
    fake.available_images.add(image("scorer:v1"))
    backend = make_k8s()
    backend.slot_start(slot_key="churn-prod.blue", bento_tag="scorer:v1")
    fake.crashing_images.add(image("scorer:v1"))
    time.sleep(0.3)
    kinds = [e.kind for e in backend.supervise_once()]
    assert "crashed" in kinds
    later = [e.kind for e in backend.supervise_once()]
    assert "crashed" not in later  # same problem: not reported again


# --------------------------------------------------------------------------- resources


def test_resource_usage_is_unknown_without_the_metrics_api(k8s, fake):
    fake.available_images.add(image("scorer:v1"))
    k8s.slot_start(slot_key="churn-prod.blue", bento_tag="scorer:v1")
    with pytest.raises(ResourceUsageUnknown, match=r"metrics\.k8s\.io"):
        k8s.slot_resources(slot_key="churn-prod.blue")
    assert issubclass(ResourceUsageUnknown, RuntimeBackendError)  # the sampler skips it


def test_resource_usage_from_the_metrics_api(make_k8s, fake):
    fake.available_images.add(image("scorer:v1"))
    fake.metrics_enabled = True
    fake.usage = {"cpu": "500m", "memory": "300Mi"}
    backend = make_k8s()
    backend.slot_start(slot_key="churn-prod.blue", bento_tag="scorer:v1")
    first = backend.slot_resources(slot_key="churn-prod.blue")
    assert first.rss_bytes == 300 * 1024**2
    assert first.process_count == 1
    assert first.cpu_seconds == 0.0  # a counter starts at the first sample
    time.sleep(0.4)
    # Another process (a new backend) continues the same counter.
    second = make_k8s().slot_resources(slot_key="churn-prod.blue")
    elapsed = (second.taken_at - first.taken_at).total_seconds()
    assert second.cpu_seconds == pytest.approx(0.5 * elapsed, rel=0.01)
    with pytest.raises(SlotNotFound):
        backend.slot_resources(slot_key="fraud.blue")


# --------------------------------------------------------------------------- connection


def test_wrong_credentials_fail_with_the_api_servers_answer(fake, tmp_path):
    path = fake.write_kubeconfig(tmp_path / "kubeconfig")
    path.write_text(path.read_text().replace(fake.token, "stolen-token"))
    backend = KubernetesBackend(
        KubeClient(KubeConnection(kubeconfig=str(path))),
        namespace=NAMESPACE,
        image_registry=REGISTRY,
    )
    with pytest.raises(RuntimeBackendError, match="401"):
        backend.slot_status(slot_key="churn-prod.blue")


def test_unreachable_api_server_fails_instead_of_hanging(fake, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = fake.write_kubeconfig(tmp_path / "kubeconfig")
    path.write_text(path.read_text().replace(fake.url, f"http://127.0.0.1:{port}"))
    client = KubeClient(KubeConnection(kubeconfig=str(path), request_timeout=2))
    backend = KubernetesBackend(client, namespace=NAMESPACE, image_registry=REGISTRY)
    with pytest.raises(RuntimeBackendError, match="did not answer"):
        backend.slots()


def test_missing_kubeconfig_is_a_clear_error(tmp_path):
    with pytest.raises(KubeError, match="cannot load Kubernetes credentials from kubeconfig"):
        KubeClient(KubeConnection(kubeconfig=str(tmp_path / "nope")))


# --------------------------------------------------------------------------- settings


@pytest.fixture
def fresh_backend_cache():
    backends.runtime_backend.cache_clear()
    yield
    backends.runtime_backend.cache_clear()


def test_setting_selects_the_kubernetes_backend(fresh_backend_cache, kubeconfig, fake):
    with override_settings(
        MODELYARD_RUNTIME_BACKEND="kubernetes",
        MODELYARD_K8S_KUBECONFIG=str(kubeconfig),
        MODELYARD_K8S_NAMESPACE="serving",
        MODELYARD_K8S_IMAGE_REGISTRY="registry.example.com/ml/",
        MODELYARD_K8S_IMAGE_PULL_SECRET="pull",
        MODELYARD_K8S_SLOT_RESOURCES='{"requests": {"cpu": "100m"}}',
        MODELYARD_K8S_DEPLOYMENT_RESOURCES='{"big": {"requests": {"cpu": "4"}}}',
    ):
        backend = backends.runtime_backend()
        assert isinstance(backend, KubernetesBackend)
        assert backend.namespace == "serving"
        assert backend.image_for("scorer:v1") == "registry.example.com/ml/scorer:v1"
        assert backend.resources_for("small.blue") == {"requests": {"cpu": "100m"}}
        assert backend.resources_for("big.green") == {"requests": {"cpu": "4"}}
        assert backend.client.host == fake.url


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"MODELYARD_RUNTIME_BACKEND": "nomad"}, "is not one of local, kubernetes"),
        ({"MODELYARD_RUNTIME_BACKEND": "kubernetes"}, "MODELYARD_K8S_IMAGE_REGISTRY is required"),
        (
            {
                "MODELYARD_RUNTIME_BACKEND": "kubernetes",
                "MODELYARD_K8S_IMAGE_REGISTRY": "r.example.com",
                "MODELYARD_K8S_SLOT_RESOURCES": "{cpu: 1",
            },
            "MODELYARD_K8S_SLOT_RESOURCES is not valid JSON",
        ),
        (
            {
                "MODELYARD_RUNTIME_BACKEND": "kubernetes",
                "MODELYARD_K8S_IMAGE_REGISTRY": "https://r.example.com",
            },
            "without a scheme",
        ),
    ],
)
def test_wrong_runtime_settings_stop_with_their_name(
    fresh_backend_cache, kubeconfig, overrides, message
):
    with (
        override_settings(MODELYARD_K8S_KUBECONFIG=str(kubeconfig), **overrides),
        pytest.raises(ImproperlyConfigured, match=re.escape(message)),
    ):
        backends.runtime_backend()


# --------------------------------------------------------------------------- RBAC


def _rbac_rule(method: str, path: str) -> tuple[str, str, str]:
    """(apiGroup, resource, verb) that authorizes one API request."""
    parts = [p for p in path.split("/") if p]
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    resource, named = rest[2], len(rest) > 3
    if len(rest) > 4:
        resource = f"{resource}/{rest[4]}"  # subresource, e.g. pods/log
    verb = {
        "GET": "get" if named else "list",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete",
    }[method]
    return group, resource, verb


def test_the_shipped_role_allows_every_call_the_backend_makes(make_k8s, fake):
    import yaml

    fake.available_images |= {image("scorer:v1"), image("scorer:v2"), image("broken:v1")}
    fake.unready_images.add(image("broken:v1"))
    fake.metrics_enabled = True
    backend = make_k8s()
    backend.slot_start(slot_key="churn-prod.blue", bento_tag="scorer:v1")
    backend.slot_start(slot_key="churn-prod.blue", bento_tag="scorer:v2")
    with pytest.raises(SlotStartError):  # reads the pods' logs
        make_k8s(ready_timeout=0.5).slot_start(slot_key="churn-prod.green", bento_tag="broken:v1")
    backend.slot_status(slot_key="churn-prod.blue")
    backend.slot_resources(slot_key="churn-prod.blue")
    fake.restart_container(NAMESPACE, backend.object_name("churn-prod.blue"))
    backend.supervise_once()
    backend.slots()
    backend.slot_stop(slot_key="churn-prod.blue")

    rbac = Path(__file__).resolve().parents[3] / "platform" / "k8s" / "rbac.yaml"
    (role,) = [d for d in yaml.safe_load_all(rbac.read_text()) if d["kind"] == "Role"]
    allowed = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    used = {_rbac_rule(method, path) for method, path in fake.requests}
    assert ("", "pods/log", "get") in used and ("metrics.k8s.io", "pods", "list") in used
    assert used <= allowed, f"calls the Role does not allow: {sorted(used - allowed)}"


def test_slot_serving_answers_from_one_read_of_the_deployment(k8s, fake):
    fake.available_images.add(image("scorer:v1"))
    assert not k8s.slot_serving(slot_key="churn-prod.blue", bento_tag="scorer:v1")
    k8s.slot_start(slot_key="churn-prod.blue", bento_tag="scorer:v1")
    fake.requests.clear()
    assert k8s.slot_serving(slot_key="churn-prod.blue", bento_tag="scorer:v1")
    assert not k8s.slot_serving(slot_key="churn-prod.blue", bento_tag="scorer:v2")
    assert len(fake.requests) == 2


# --------------------------------------------------------------------------- image command


def test_bento_image_command_writes_the_context_and_prints_the_push(store, tmp_path):
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    with override_settings(MODELYARD_BENTOML_HOME=str(store["home"])):
        call_command(
            "bento_image",
            store["v2"],
            dest=str(tmp_path / "ctx"),
            registry="r.example.com/b",
            stdout=out,
        )
        lines = out.getvalue().splitlines()
        assert "image: r.example.com/b/scorer:v2" in lines
        assert "docker push r.example.com/b/scorer:v2" in lines
        assert any(line.startswith("docker build -f ") for line in lines)
        assert (tmp_path / "ctx" / "models" / "scorer" / "v2").is_dir()
        with pytest.raises(CommandError, match="not in the store"):
            call_command(
                "bento_image", "scorer:v404", dest=str(tmp_path / "other"), registry="r.io"
            )
        with pytest.raises(CommandError, match="already exists"):
            call_command("bento_image", store["v2"], dest=str(tmp_path / "ctx"), registry="r.io")
    with (
        override_settings(MODELYARD_K8S_IMAGE_REGISTRY=""),
        pytest.raises(CommandError, match="no registry"),
    ):
        call_command("bento_image", store["v2"], dest=str(tmp_path / "x"))


# --------------------------------------------------------------------------- real cluster


@pytest.mark.skipif(
    not os.environ.get("MODELYARD_TEST_KUBECONFIG"),
    reason="no real cluster: set MODELYARD_TEST_KUBECONFIG (and MODELYARD_TEST_K8S_NAMESPACE)",
)
def test_missing_image_on_a_real_cluster_fails_clearly_and_leaves_nothing():
    """The same contract against a real API server and kubelet, where one is reachable.

    Needs no pushed image: the registry below does not exist, so the kubelet reports
    ErrImagePull/ImagePullBackOff exactly as for an image nobody pushed.
    """
    namespace = os.environ.get("MODELYARD_TEST_K8S_NAMESPACE", "modelyard-test")
    client = KubeClient(KubeConnection(kubeconfig=os.environ["MODELYARD_TEST_KUBECONFIG"]))
    backend = KubernetesBackend(
        client,
        namespace=namespace,
        image_registry="127.0.0.1:9/modelyard-missing",
        ready_timeout=120,
    )
    slot_key = f"k8s-test-{os.getpid()}.blue"
    try:
        with pytest.raises(SlotStartError, match="cannot be pulled"):
            backend.slot_start(slot_key=slot_key, bento_tag="scorer:v1")
        with pytest.raises(SlotNotFound):
            backend.slot_status(slot_key=slot_key)
    finally:
        backend.slot_stop(slot_key=slot_key, timeout=0)
        client.close()


def test_replicas_workers_and_the_autoscaler_render_valid_manifests(store, make_k8s):
    backend = make_k8s()
    deployment, _ = backend.render(
        slot_key="churn-prod.blue", bento_tag=store["v1"], replicas=3, workers=2
    )
    assert kubernetes_validate.validate(deployment, SCHEMA_VERSION, strict=True)
    assert deployment["spec"]["replicas"] == 3
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    options = {v["name"]: v["value"] for v in container["env"]}["BENTOML_CONFIG_OPTIONS"]
    # The same options as a local server's (deployments.integrations.bentoml.serve_environment).
    assert options.split() == [
        "services.modelyard.workers=2",
        "services.modelyard.batching.max_batch_size=32",
        "services.modelyard.batching.max_latency_ms=10",
    ]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"

    hpa = backend.render_autoscaler(
        slot_key="churn-prod.blue",
        replicas_min=1,
        replicas_max=4,
        target_inflight=8.0,
        scale_up_seconds=15,
        scale_down_seconds=300,
    )
    assert kubernetes_validate.validate(hpa, SCHEMA_VERSION, strict=True)
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "modelyard_gateway_upstream_inflight"
    assert metric["pods"]["target"]["averageValue"] == "8000m"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_slot_scale_sets_the_deployments_replicas(k8s, fake):
    fake.available_images |= {image("scorer:v1")}
    k8s.slot_start(slot_key="scaled.blue", bento_tag="scorer:v1", replicas=1)
    try:
        k8s.slot_scale(slot_key="scaled.blue", replicas=3)
        stored = fake.get("Deployment", NAMESPACE, k8s.object_name("scaled.blue"))
        assert stored["spec"]["replicas"] == 3
        assert k8s.slot_status(slot_key="scaled.blue").ready_urls == [k8s.url_for("scaled.blue")]
        with pytest.raises(SlotNotFound):
            k8s.slot_scale(slot_key="never.blue", replicas=2)
    finally:
        k8s.slot_stop(slot_key="scaled.blue")


# --------------------------------------------------------------------------- CPU priority


def _pod_priority(deployment: dict) -> tuple[str, str | None, str]:
    """(CPU request, PriorityClass, annotation) of a Deployment's pod template."""
    template = deployment["spec"]["template"]
    [container] = template["spec"]["containers"]
    return (
        container["resources"]["requests"]["cpu"],
        template["spec"].get("priorityClassName"),
        template["metadata"]["annotations"]["modelyard.io/priority"],
    )


def test_a_shadow_slot_renders_a_small_cpu_request_and_its_priority_class(store, make_k8s):
    backend = make_k8s(shadow_cpu_request="50m", shadow_priority_class="modelyard-shadow")
    low, _ = backend.render(slot_key="churn-prod.green", bento_tag=store["v1"], priority="low")
    assert kubernetes_validate.validate(low, SCHEMA_VERSION, strict=True)
    assert _pod_priority(low) == ("50m", "modelyard-shadow", "low")
    [container] = low["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == DEFAULT_RESOURCES["limits"]  # idle CPU is its
    normal, _ = backend.render(slot_key="churn-prod.green", bento_tag=store["v1"])
    assert _pod_priority(normal) == ("250m", None, "normal")
    with pytest.raises(ValueError, match="'lots' is not a Kubernetes quantity"):
        make_k8s(shadow_cpu_request="lots")


def test_a_priority_class_the_cluster_lacks_fails_the_shadow_start_at_once_naming_it(
    make_k8s, fake
):
    """The API server refuses pods that name an unknown PriorityClass (the Deployment says
    ReplicaFailure): the start fails at once, names the setting, and leaves nothing behind."""
    fake.available_images.add(image("scorer:v1"))
    backend = make_k8s(shadow_priority_class="modelyard-shadow", ready_timeout=60)
    began = time.monotonic()
    with pytest.raises(SlotStartError) as refused:
        backend.slot_start(slot_key="churn-prod.green", bento_tag="scorer:v1", priority="low")
    assert time.monotonic() - began < 10  # not the 60 s ready deadline
    message = str(refused.value)
    assert "no PriorityClass with name modelyard-shadow was found" in message, message
    assert "MODELYARD_K8S_SHADOW_PRIORITY_CLASS" in message, message
    assert fake.get("Deployment", NAMESPACE, backend.object_name("churn-prod.green")) is None
    fake.priority_classes.add("modelyard-shadow")  # once it exists, the shadow starts
    backend.slot_start(slot_key="churn-prod.green", bento_tag="scorer:v1", priority="low")
    backend.slot_stop(slot_key="churn-prod.green")


def test_a_shadow_promoted_gets_its_pods_replaced_at_normal_priority(make_k8s, fake):
    fake.available_images.add(image("scorer:v1"))
    fake.priority_classes.add("modelyard-shadow")
    backend = make_k8s(shadow_priority_class="modelyard-shadow")
    key, name = "churn-prod.green", backend.object_name("churn-prod.green")
    backend.slot_start(slot_key=key, bento_tag="scorer:v1", priority="low")
    assert _pod_priority(fake.get("Deployment", NAMESPACE, name)) == (
        "25m",
        "modelyard-shadow",
        "low",
    )
    low_pods = {p["metadata"]["name"] for p in fake.pods_of(NAMESPACE, name)}
    backend.slot_priority(slot_key=key, priority="normal")
    stored = fake.get("Deployment", NAMESPACE, name)
    assert _pod_priority(stored) == ("250m", None, "normal")
    assert stored["metadata"]["annotations"]["modelyard.io/priority"] == "normal"
    pods = fake.pods_of(NAMESPACE, name)
    assert pods and not {p["metadata"]["name"] for p in pods} & low_pods
    assert {p["spec"]["containers"][0]["resources"]["requests"]["cpu"] for p in pods} == {"250m"}
    assert backend.slot_status(slot_key=key).last_event.kind == "restarted"
    fake.requests.clear()
    backend.slot_priority(slot_key=key, priority="normal")  # already: nothing written
    backend.slot_start(slot_key=key, bento_tag="scorer:v1")  # the same Bento, the same priority
    writes = [r for r in fake.requests if r[0] in ("POST", "PUT", "PATCH", "DELETE")]
    assert not [r for r in writes if "/deployments/" in r[1]], writes  # its pods left alone
    with pytest.raises(SlotNotFound):
        backend.slot_priority(slot_key="never.green", priority="normal")
