"""platform/k8s: valid against the Kubernetes 1.36 schema (offline, strict) and consistent
with the image, the entrypoint and the settings the code reads."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "platform" / "k8s"
SCHEMA_VERSION = "1.36"
PROCESSES = ("web", "worker", "beat", "gateway")


def documents() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


def image_uid() -> int:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "platform" / "Dockerfile").read_text(), re.M)
    return int(users[-1].split(":")[0])


@pytest.mark.parametrize(
    ("name", "doc"), documents(), ids=[f"{n}:{d['kind']}" for n, d in documents()]
)
def test_manifest_is_valid_kubernetes(name, doc):
    assert kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_field():
    deployment = copy.deepcopy(by_kind("Deployment")["modelyard-web"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSION, strict=True)


def test_kustomization_applies_every_manifest_into_one_namespace():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "modelyard"
    assert [image["name"] for image in kustomization["images"]] == ["modelyard"]
    binding = by_kind("RoleBinding")["modelyard-slots"]
    assert binding["subjects"][0]["namespace"] == kustomization["namespace"]


@pytest.mark.parametrize("process", PROCESSES)
def test_every_process_runs_hardened_with_resources_probes_and_a_pdb(process):
    deployment = by_kind("Deployment")[f"modelyard-{process}"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == image_uid()
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    assert container["image"] == "modelyard"  # replaced by kustomization's images
    assert container["args"] == [process]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys(), kind
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # A read-only root needs a writable /tmp (gunicorn heartbeats, healthcheck marker).
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    refs = {next(iter(source.values()))["name"] for source in container["envFrom"]}
    assert refs == {"modelyard-config", "modelyard-secrets"}
    assert "livenessProbe" in container
    inits = spec.get("initContainers", [])
    if process != "gateway":  # the gateway needs Redis only, never the schema
        assert [init["args"] for init in inits] == [["wait-for-migrations"]]
    for init in inits:
        assert init["securityContext"] == security
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= init["resources"][kind].keys(), kind
    pdbs = [
        pdb
        for pdb in by_kind("PodDisruptionBudget").values()
        if pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(pdbs) == 1, f"{process} needs exactly one PodDisruptionBudget"


@pytest.mark.parametrize("process", ["web", "gateway"])
def test_http_processes_probe_healthz_and_readyz_behind_a_service(process):
    deployment = by_kind("Deployment")[f"modelyard-{process}"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"] for port in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    service = by_kind("Service")[f"modelyard-{process}"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= ports


def test_web_probes_pass_django_host_and_https_checks():
    config = by_kind("ConfigMap")["modelyard-config"]["data"]
    (container,) = by_kind("Deployment")["modelyard-web"]["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        headers = {h["name"]: h["value"] for h in container[probe]["httpGet"]["httpHeaders"]}
        assert headers["Host"] in config["DJANGO_ALLOWED_HOSTS"].split(",")
        # Without it SECURE_SSL_REDIRECT answers 301, which a probe counts as success.
        assert headers["X-Forwarded-Proto"] == "https"


def test_beat_is_a_singleton_and_only_web_and_worker_hold_an_api_token():
    beat = by_kind("Deployment")["modelyard-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    for process in PROCESSES:
        spec = by_kind("Deployment")[f"modelyard-{process}"]["spec"]["template"]["spec"]
        if process in ("web", "worker"):
            assert spec["serviceAccountName"] == "modelyard"
        else:
            assert spec["automountServiceAccountToken"] is False


def test_migration_job_runs_the_release_step():
    job = by_kind("Job")["modelyard-migrate"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_ingress_routes_to_existing_services_with_tls():
    ingress = by_kind("Ingress")["modelyard"]
    services = by_kind("Service")
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in ingress["spec"]["tls"][0]["hosts"]
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["port"]["name"] in {
                p["name"] for p in services[backend["name"]]["spec"]["ports"]
            }


def test_configmap_names_only_settings_the_code_reads():
    code = "\n".join(p.read_text() for p in (ROOT / "config" / "settings").glob("*.py"))
    data = by_kind("ConfigMap")["modelyard-config"]["data"]
    unknown = [
        key
        for key in data
        if key not in ("DJANGO_SETTINGS_MODULE", "BENTOML_DO_NOT_TRACK") and f'"{key}"' not in code
    ]
    assert unknown == [], f"ConfigMap keys no setting reads (typos?): {unknown}"


def test_configmap_starts_production_settings_and_asks_for_the_service_account(tmp_path):
    """The ConfigMap + Secret keys load config.settings.production; outside a pod the
    Kubernetes backend stops with a message naming the in-cluster credentials."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "MODELYARD_", "KUBERNETES_"))
    }
    env.update(by_kind("ConfigMap")["modelyard-config"]["data"])
    env.update(
        DJANGO_SECRET_KEY="x" * 50,
        DATABASE_URL="postgres://modelyard:secret@postgres:5432/modelyard",
        REDIS_URL="redis://redis:6379/0",
        MODELYARD_K8S_NAMESPACE="modelyard",
        MODELYARD_DATA_DIR=str(tmp_path),
        PYTHONPATH=str(ROOT),
    )
    script = (
        "import django; django.setup()\n"
        "from django.conf import settings\n"
        "print(settings.MODELYARD_RUNTIME_BACKEND, settings.MODELYARD_K8S_IN_CLUSTER,"
        " settings.SECURE_SSL_REDIRECT, settings.SECURE_HSTS_SECONDS)\n"
        "from deployments import backends\n"
        "try:\n"
        "    backends.runtime_backend()\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().splitlines()[-2:]
    assert first == "kubernetes True True 31536000"
    assert second.startswith("ImproperlyConfigured Kubernetes runtime backend: cannot load")
    assert "service account (in-cluster)" in second


def test_slot_pods_accept_only_modelyard_pods_and_open_no_connection():
    from deployments.runtime.kubernetes import BENTO_PORT, LABEL_MANAGED_BY, LABEL_NAME

    policy = by_kind("NetworkPolicy")["modelyard-slots"]
    spec = policy["spec"]
    # It selects exactly the pods the runtime backend renders for slots.
    assert spec["podSelector"]["matchLabels"] == {
        LABEL_NAME: "modelyard-slot",
        LABEL_MANAGED_BY: "modelyard",
    }
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert spec["egress"] == []  # no PostgreSQL, no Redis, no internet for a model
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": BENTO_PORT}]
    (source,) = rule["from"]
    assert source == {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "modelyard"}}}
    for process in ("gateway", "worker"):  # the traffic and the smoke checks
        labels = by_kind("Deployment")[f"modelyard-{process}"]["spec"]["template"]["metadata"]
        assert labels["labels"]["app.kubernetes.io/part-of"] == "modelyard"
