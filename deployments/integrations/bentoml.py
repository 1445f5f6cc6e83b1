"""The one door to BentoML: build, export, import and delete Bentos; the serve command line.

No other module in Modelyard imports ``bentoml`` or runs its CLI, and this one never imports
it in the calling process either: every store operation runs in a fresh
``python -m deployments.integrations.bentoml`` child with ``BENTOML_HOME`` pointed at the
store and tracking off. A fresh process per build is required (building several Bentos in
one process reused the cached service module and packed the wrong model), and keeps
BentoML's process-global configuration out of long-lived Celery workers.

The store has no locking of its own, so every write (model import, build, Bento import,
delete) holds a file lock on the store, taken by the child that writes: if the Celery worker
that asked for a build is killed, the child finishes (or fails) under the lock instead of a
retry writing beside it. A build is complete only once its marker file exists, so a build
that died half-way is cleaned up and redone rather than served.

Deliberately no Django here: Celery tasks and the rollout state machine call these
functions with plain paths and values, and the tests run them alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from registry import modelkit
from registry.modelkit import serving as modelkit_serving

# The generated service's name; BENTOML_CONFIG_OPTIONS keys are scoped by it.
SERVICE_NAME = "modelyard"
SERVICE_CLASS = "ModelyardService"

# framework -> serialization formats it may come in, and the template family that serves it.
FRAMEWORK_FORMATS: dict[str, dict[str, str]] = {
    "sklearn": {"pickle": "sklearn", "joblib": "sklearn"},
    "skops": {"skops": "sklearn"},
    "xgboost": {"xgboost-json": "xgboost", "xgboost-ubj": "xgboost"},
    "lightgbm": {"lightgbm-text": "lightgbm"},
    "onnx": {"onnx": "onnx"},
}

# Name of the artifact inside the BentoML model; XGBoost picks its parser by extension.
_ARTIFACT_FILES = {
    "pickle": "model.pkl",
    "joblib": "model.joblib",
    "skops": "model.skops",
    "xgboost-json": "model.json",
    "xgboost-ubj": "model.ubj",
    "lightgbm-text": "model.txt",
    "onnx": "model.onnx",
}

# Modules the service imports per format. The Bento pins the distributions that provide
# them in this platform (the versions validation loaded the model with), never resolved at
# build time; looked up by module because one module can come from several distributions
# (xgboost from xgboost or xgboost-cpu, onnxruntime from onnxruntime or onnxruntime-gpu).
_FORMAT_MODULES = {
    "pickle": ["sklearn", "scipy", "joblib", "numpy", "pandas"],
    "joblib": ["sklearn", "scipy", "joblib", "numpy", "pandas"],
    "skops": ["skops", "sklearn", "scipy", "numpy", "pandas"],
    "xgboost-json": ["xgboost", "sklearn", "numpy", "pandas"],
    "xgboost-ubj": ["xgboost", "sklearn", "numpy", "pandas"],
    "lightgbm-text": ["lightgbm", "numpy"],
    "onnx": ["onnxruntime", "numpy"],
}

_TEMPLATES_DIR = Path(__file__).with_name("service_templates")
_FAMILY_TITLES = {
    "sklearn": "scikit-learn family",
    "xgboost": "XGBoost",
    "lightgbm": "LightGBM",
    "onnx": "ONNX",
}
# One worker per slot on a shared machine: ONNX Runtime gets one thread instead of a pool
# per core, like the other frameworks run.
_FAMILY_THREADS = {"onnx": 1}
# registry/modelkit (loading and the model contract) ships into every Bento as the package
# ``modelkit``, so serving and batch apply exactly the code that validation applied.
_MODELKIT_SOURCE = Path(modelkit.__file__).parent
_MODELKIT_PACKAGE = "modelkit"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_MODULE = "deployments.integrations.bentoml"
_TAG_PART = re.compile(r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$")
_TAG_MAX = 63
_LABEL_PREFIX = "modelyard-"


class BentoError(Exception):
    """A BentoML store operation failed; ``log`` holds what the BentoML child printed."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.log = log


class BuildError(BentoError):
    """Turning a model version into a Bento failed."""


@dataclass(frozen=True)
class BuildResult:
    bento_tag: str
    model_tag: str
    seconds: float
    log: str


# --------------------------------------------------------------------------- tags


def tag_name_for(model_name: str) -> str:
    """A BentoML tag name for a registry model name (lowercase, [-._a-z0-9], <= 63 chars).

    When sanitising changed the name, a hash of the original is appended so two registry
    names that sanitise alike (``Churn Model`` / ``churn_model``) never share a Bento.
    """
    if not model_name:
        raise ValueError("model_name must not be empty")
    slug = re.sub(r"[^a-z0-9._-]+", "-", model_name.lower())
    slug = re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", slug)
    if slug == model_name and len(slug) <= _TAG_MAX:
        return slug
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:8]
    slug = slug[: _TAG_MAX - len(digest) - 1].rstrip("-._")
    return f"{slug}-{digest}" if slug else f"model-{digest}"


def bento_tag_for(*, model_name: str, version: int) -> str:
    """The exact Bento tag (``name:vN``) that ``bento_build`` gives this model version."""
    return f"{tag_name_for(model_name)}:{_version_part(version)}"


def _version_part(version: int) -> str:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version!r}")
    return f"v{version}"


def _split_tag(tag: str) -> tuple[str, str]:
    name, sep, version = tag.partition(":")
    if not sep or not _TAG_PART.match(name) or not _TAG_PART.match(version):
        raise ValueError(f"{tag!r} is not an exact BentoML tag of the form name:version")
    if version == "latest":
        # :latest is resolved at serve time; a Bento must always name the exact version.
        raise ValueError(f"{tag!r}: an exact version is required, not 'latest'")
    return name, version


# --------------------------------------------------------------------------- store layout
# BentoML's local store keeps an item at <home>/<kind>/<name>/<version>/. Its own lookup
# falls back to a prefix match (asking for v1 can return v12), so exact checks are made on
# the filesystem here.


def _bento_dir(home: Path, bento_tag: str) -> Path:
    name, version = _split_tag(bento_tag)
    return home / "bentos" / name / version


def bento_path(*, home: Path, bento_tag: str) -> Path:
    """The folder of ``bento_tag`` in the store under ``home`` (whether or not it is there)."""
    return _bento_dir(home, bento_tag)


def _model_dir(home: Path, model_tag: str) -> Path:
    name, version = _split_tag(model_tag)
    return home / "models" / name / version


def _marker_path(home: Path, bento_tag: str) -> Path:
    name, version = _split_tag(bento_tag)
    return home / ".modelyard" / "built" / name / f"{version}.json"


def _lock_path(home: Path) -> Path:
    return home / ".modelyard" / "store.lock"


def _read_marker(home: Path, bento_tag: str) -> dict[str, Any] | None:
    try:
        return json.loads(_marker_path(home, bento_tag).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(home: Path, bento_tag: str, marker: dict[str, Any]) -> None:
    path = _marker_path(home, bento_tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(marker, indent=2))
    os.replace(tmp, path)


def bento_exists(*, home: Path, bento_tag: str) -> bool:
    """Whether the store under ``home`` holds this exact, completely written Bento."""
    return (_bento_dir(home, bento_tag) / "bento.yaml").is_file() and (
        _read_marker(home, bento_tag) is not None
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- build


def bento_build(
    *,
    home: Path,
    model_name: str,
    version: int,
    artifact_path: Path,
    framework: str,
    fmt: str,
    feature_names: list[str] | None,
    log_path: Path,
    contract: dict[str, Any] | None = None,
    timeout: float = 900.0,
    lock_timeout: float = 600.0,
    loader: dict[str, Any] | None = None,
) -> BuildResult:
    """Import the artifact as model ``name:vN`` and build Bento ``name:vN`` from it.

    Idempotent: a Bento already built for (model_name, version) from the same artifact is
    returned without rebuilding; one built from a different artifact is an error (registry
    artifacts are immutable, so that means the store and the registry disagree).
    ``lock_timeout`` bounds the wait for other store writers, ``timeout`` the build itself.
    ``loader`` is the loading decision recorded on the version (``ModelVersion.loader``),
    written into the service as a literal; without one (a version validated before the
    decision was recorded) it is decided here the way validation decides it.
    """
    started = time.monotonic()
    home = Path(home).resolve()  # the child runs in another directory
    artifact_path = Path(artifact_path)
    formats = FRAMEWORK_FORMATS.get(framework)
    if formats is None:
        raise BuildError(
            f"unknown framework {framework!r}; supported: {', '.join(sorted(FRAMEWORK_FORMATS))}"
        )
    family = formats.get(fmt)
    if family is None:
        raise BuildError(
            f"framework {framework!r} cannot be served from format {fmt!r}; "
            f"supported: {', '.join(sorted(formats))}"
        )
    if feature_names is not None and (
        not isinstance(feature_names, list)
        or not all(isinstance(name, str) and name for name in feature_names)
        or len(set(feature_names)) != len(feature_names)
    ):
        raise BuildError("feature_names must be a list of distinct non-empty strings or None")
    try:
        bento_tag = bento_tag_for(model_name=model_name, version=version)
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    model_tag = bento_tag  # same name:version in the model store (a separate namespace)
    if not artifact_path.is_file():
        raise BuildError(f"artifact {artifact_path} does not exist or is not a file")
    artifact_sha256 = _sha256(artifact_path)
    loader = _loading_decision(loader, fmt, artifact_path)

    marker = _read_marker(home, bento_tag)
    if marker is not None and bento_exists(home=home, bento_tag=bento_tag):
        _check_same_artifact(marker, bento_tag, artifact_sha256, home)
        log = f"{_stamp()} Bento {bento_tag} already built from this artifact; reused.\n"
        _append(log_path, log)
        return BuildResult(
            bento_tag=bento_tag,
            model_tag=marker.get("model_tag", model_tag),
            seconds=time.monotonic() - started,
            log=log,
        )

    labels = {
        f"{_LABEL_PREFIX}model": model_name,
        f"{_LABEL_PREFIX}version": str(version),
        f"{_LABEL_PREFIX}framework": framework,
        f"{_LABEL_PREFIX}format": fmt,
        f"{_LABEL_PREFIX}artifact-sha256": artifact_sha256,
    }
    packages = _pinned_packages(fmt)
    scratch = home / ".modelyard" / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=scratch) as tmp:
        context = Path(tmp) / "context"
        _render_build_context(
            context,
            family=family,
            fmt=fmt,
            bento_tag=bento_tag,
            model_tag=model_tag,
            version=version,
            feature_names=feature_names,
            loader=loader,
            contract=contract,
            labels=labels,
            packages=packages,
            description=f"Modelyard: model {model_name!r} version {version}",
        )
        spec = {
            "home": str(home),
            "bento_tag": bento_tag,
            "model_tag": model_tag,
            "artifact_path": str(artifact_path.resolve()),
            "artifact_file": _ARTIFACT_FILES[fmt],
            "artifact_sha256": artifact_sha256,
            "context": str(context),
            "labels": labels,
            # BentoML metadata takes no None values.
            "metadata": {"feature_names": feature_names} if feature_names else {},
            "lock_timeout": lock_timeout,
        }
        header = f"{_stamp()} building Bento {bento_tag} ({framework}/{fmt}) in {home}\n"
        result, log = _run_child(
            "build",
            spec,
            home=home,
            log_path=log_path,
            header=header,
            timeout=lock_timeout + timeout,
            cwd=context,
            error=BuildError,
            what=f"building Bento {bento_tag}",
        )
    if result.get("bento_tag") != bento_tag:
        raise BuildError(
            f"building Bento {bento_tag} produced {result.get('bento_tag')!r} instead", log
        )
    return BuildResult(
        bento_tag=bento_tag,
        model_tag=result.get("model_tag", model_tag),
        seconds=time.monotonic() - started,
        log=log,
    )


def _check_same_artifact(marker: dict[str, Any], bento_tag: str, sha: str, home: Path) -> None:
    built_from = marker.get("artifact_sha256")
    if built_from and built_from != sha:
        raise BuildError(
            f"Bento {bento_tag} in {home} was built from a different artifact "
            f"(sha256 {built_from[:12]}…, this one is {sha[:12]}…); registry artifacts are "
            f"immutable, so the BentoML store does not belong to this registry — delete the "
            f"Bento (bento_delete) or use a fresh BentoML home"
        )


def _pinned_packages(fmt: str) -> list[str]:
    providers = importlib.metadata.packages_distributions()
    pins = []
    for module in _FORMAT_MODULES[fmt]:
        dists = providers.get(module)
        if not dists:
            raise BuildError(
                f"format {fmt!r} is served with the {module!r} module, which is not installed "
                f"in the platform environment ({sys.executable})"
            )
        for dist in dict.fromkeys(dists):
            pins.append(f"{dist}=={importlib.metadata.version(dist)}")
    return pins


def _loading_decision(loader: dict[str, Any] | None, fmt: str, artifact: Path) -> dict[str, Any]:
    from registry.modelkit.loading import LoaderDecisionError, check_decision, loader_decision

    if not loader:
        trusted = None
        if fmt == "skops":
            from registry.validation.scanning import skops_trusted_types

            trusted, findings = skops_trusted_types(artifact)
            if findings:
                raise BuildError(f"skops artifact fails the allow-list: {findings[0].reason}")
        loader = loader_decision(fmt, trusted)
    try:
        check_decision(loader)
    except LoaderDecisionError as exc:
        raise BuildError(str(exc)) from None
    if loader["format"] != fmt:
        raise BuildError(f"recorded loader is for format {loader['format']!r}, not {fmt!r}")
    return loader


def _render_build_context(
    context: Path,
    *,
    family: str,
    fmt: str,
    bento_tag: str,
    model_tag: str,
    version: int,
    feature_names: list[str] | None,
    loader: dict[str, Any],
    contract: dict[str, Any] | None,
    labels: dict[str, str],
    packages: list[str],
    description: str,
) -> None:
    """Write service.py (from the family's template), the modelkit package and bentofile.yaml.

    The version's contract is rendered in as a literal: the service applies exactly what
    validation decided, with no store or registry to ask at start-up.
    """
    context.mkdir(parents=True)
    # One template for every family: modelkit.contract turns rows into each framework's
    # input and its output into the answer, so only the title and thread count differ.
    template = string.Template((_TEMPLATES_DIR / "service.py.tmpl").read_text())
    # Every substituted value is a repr() literal or a fixed identifier, so no model name
    # or feature name can inject code into the generated service.
    source = template.substitute(
        title=bento_tag,
        family_title=_FAMILY_TITLES[family],
        threads=repr(_FAMILY_THREADS.get(family)),
        fmt=fmt,
        fmt_literal=repr(fmt),
        model_tag=repr(model_tag),
        model_version=repr(int(version)),
        artifact_file=repr(_ARTIFACT_FILES[fmt]),
        feature_names=repr(list(feature_names)) if feature_names is not None else "None",
        # JSON data only (str, int, list of str): its repr() is a plain literal.
        loader=repr(json.loads(json.dumps(loader))),
        # A JSON round trip first: only plain JSON values (dict, list, str, numbers, bools,
        # None) reach repr(), whose output is then a Python literal of the same value.
        contract=repr(json.loads(json.dumps(contract))) if contract else "None",
        service_name=repr(SERVICE_NAME),
        service_class=SERVICE_CLASS,
    )
    compile(source, "service.py", "exec")  # a broken template fails here, not in the server
    (context / "service.py").write_text(source)
    shutil.copytree(
        _MODELKIT_SOURCE,
        context / _MODELKIT_PACKAGE,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    name, bento_version = _split_tag(bento_tag)
    bentofile = {
        "service": f"service:{SERVICE_CLASS}",
        "name": name,
        "description": description,
        "labels": labels,
        "include": ["service.py", f"{_MODELKIT_PACKAGE}/**"],
        "python": {
            "packages": packages,
            # Locking resolves dependencies against the package index at build time; the
            # Bento pins the versions the platform runs instead, and builds work offline.
            "lock_packages": False,
        },
        "docker": {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}"},
        "envs": [{"name": "BENTOML_DO_NOT_TRACK", "value": "True"}],
    }
    # JSON is valid YAML, and needs no YAML library in the calling process.
    (context / "bentofile.yaml").write_text(json.dumps(bentofile, indent=2))
    (context / "version").write_text(bento_version)


# --------------------------------------------------------------------------- export/import


def bento_export(*, home: Path, bento_tag: str, dest: Path, timeout: float = 600.0) -> Path:
    """Export a Bento (with its model) as a ``.bento`` archive (tar.xz).

    ``dest`` is a directory (the archive is named ``<name>-<version>.bento`` inside it) or a
    file path ending in ``.bento``. Returns the archive's path.
    """
    home, dest = Path(home).resolve(), Path(dest)
    name, version = _split_tag(bento_tag)
    if not bento_exists(home=home, bento_tag=bento_tag):
        raise BentoError(f"Bento {bento_tag} is not in the store at {home}")
    if dest.is_dir():
        dest = dest / f"{name}-{version}.bento"
    elif dest.suffix != ".bento":
        raise BentoError(f"export destination {dest} must be a directory or end in .bento")
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = home / ".modelyard" / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export-", dir=scratch) as private:
        # BentoML's export copies the Bento's models into <bento dir>/models while it packs
        # and deletes them after; a `bentoml serve` of the same Bento started meanwhile takes
        # that half-filled directory for the Bento's own model store and fails with "model
        # not found" (seen when the export ran beside a rollout's slot start). So export from
        # a private copy of the Bento (its code and config, small) with the models linked.
        private_home = Path(private)
        shutil.copytree(_bento_dir(home, bento_tag), _bento_dir(private_home, bento_tag))
        (private_home / "models").symlink_to(home / "models", target_is_directory=True)
        spec = {"home": str(private_home), "bento_tag": bento_tag, "dest": str(dest.resolve())}
        _run_child(
            "export",
            spec,
            home=private_home,
            log_path=None,
            header="",
            timeout=timeout,
            cwd=None,
            error=BentoError,
            what=f"exporting Bento {bento_tag}",
        )
    if not dest.is_file():
        raise BentoError(f"exporting Bento {bento_tag} did not create {dest}")
    return dest


def bento_import(
    *, home: Path, archive: Path, timeout: float = 600.0, lock_timeout: float = 600.0
) -> str:
    """Import a ``.bento`` archive (and its model) into the store at ``home``; its tag.

    Importing a Bento the store already holds is a no-op.
    """
    home, archive = Path(home).resolve(), Path(archive)
    if not archive.is_file():
        raise BentoError(f"Bento archive {archive} does not exist")
    spec = {"home": str(home), "archive": str(archive.resolve()), "lock_timeout": lock_timeout}
    result, _ = _run_child(
        "import",
        spec,
        home=home,
        log_path=None,
        header="",
        timeout=lock_timeout + timeout,
        cwd=None,
        error=BentoError,
        what=f"importing Bento archive {archive}",
    )
    return str(result["bento_tag"])


def bento_image_context(*, home: Path, bento_tag: str, dest: Path, timeout: float = 600.0) -> Path:
    """Write the Docker build context of a Bento to ``dest``: what ``bentoml containerize`` builds.

    BentoML's own containerize code lays it out (the Bento, its models under ``models/``,
    ``env/docker/Dockerfile`` without BuildKit syntax), so any builder (docker, buildah,
    kaniko) can build it where no Docker engine runs beside the platform:
    ``docker build -f env/docker/Dockerfile -t <image> <dest>``. ``dest`` must not exist.
    """
    home, dest = Path(home).resolve(), Path(dest).resolve()
    _split_tag(bento_tag)
    if not bento_exists(home=home, bento_tag=bento_tag):
        raise BentoError(f"Bento {bento_tag} is not in the store at {home}")
    if dest.exists():
        raise BentoError(f"image context destination {dest} already exists")
    spec = {"home": str(home), "bento_tag": bento_tag, "dest": str(dest)}
    _run_child(
        "image-context",
        spec,
        home=home,
        log_path=None,
        header="",
        timeout=timeout,
        cwd=None,
        error=BentoError,
        what=f"writing the image build context of Bento {bento_tag}",
    )
    if not (dest / "env" / "docker" / "Dockerfile").is_file():
        raise BentoError(f"the image build context of Bento {bento_tag} has no Dockerfile")
    return dest


def bento_delete(
    *, home: Path, bento_tag: str, timeout: float = 300.0, lock_timeout: float = 600.0
) -> bool:
    """Delete a Bento and the model it was built from; False if it was not there."""
    home = Path(home).resolve()
    _split_tag(bento_tag)
    spec = {"home": str(home), "bento_tag": bento_tag, "lock_timeout": lock_timeout}
    result, _ = _run_child(
        "delete",
        spec,
        home=home,
        log_path=None,
        header="",
        timeout=lock_timeout + timeout,
        cwd=None,
        error=BentoError,
        what=f"deleting Bento {bento_tag}",
    )
    return bool(result["deleted"])


# --------------------------------------------------------------------------- serving


def serve_command(*, bento_tag: str, host: str, port: int) -> list[str]:
    """Command line that serves a Bento from the store named by BENTOML_HOME.

    ``--host`` is always given: ``bentoml serve`` binds 0.0.0.0 otherwise.
    """
    _split_tag(bento_tag)
    return [
        sys.executable, "-m", "bentoml", "serve", bento_tag,
        "--host", host, "--port", str(int(port)),
    ]  # fmt: skip


def serve_environment(
    *,
    bentoml_home: Path,
    workers: int = 1,
    batch_max_size: int = modelkit_serving.DEFAULT_BATCH_MAX_SIZE,
    batch_max_latency_ms: int = modelkit_serving.DEFAULT_BATCH_MAX_LATENCY_MS,
) -> dict[str, str]:
    """The BentoML variables of ``serve_command``'s environment.

    Given to ``core.model_process`` as a model process's extra variables: the server gets
    these and the minimal environment, never the platform's own (its database and Redis
    URLs, secret key, tokens). The worker count comes from config; ``--api-workers`` is
    ignored by 1.4 services.

    Adaptive batching is a serve-time setting too, so one Bento per model version serves
    every deployment's batching: BentoML 1.4 takes a batchable API's size and latency only
    from its decorator (its ``services.<name>.batching`` config is not read by new-style
    services), so the generated service reads them from BENTOML_CONFIG_OPTIONS at import,
    in each worker, before its decorators run (``modelkit.serving.BatchSettings``).
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if batch_max_size < 1 or batch_max_latency_ms < 1:
        raise ValueError("batch_max_size and batch_max_latency_ms must be >= 1")
    return {
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "True",
        "BENTOML_CONFIG_OPTIONS": " ".join(
            [
                f"services.{SERVICE_NAME}.workers={int(workers)}",
                *modelkit_serving.BatchSettings.config_options(
                    SERVICE_NAME, batch_max_size, batch_max_latency_ms
                ),
            ]
        ),
    }


STORE_DIRS = ("models", "bentos")  # what a serving home holds of the shared store


def bento_serving_copy(*, home: Path, bento_tag: str, dest: Path) -> Path:
    """Give ``dest`` (a model process's own BENTOML_HOME) the one Bento and its models.

    A model process runs as a user that must read its own Bento and nothing else of the
    store (BentoML makes each version's folder 0700). The copy is hard links where the
    store is on the same filesystem (the store's files stay the platform's, read-only to
    the model user; a few ms), else a real copy. Anything ``dest`` held before is replaced.
    Returns the Bento's folder in ``dest``.
    """
    import yaml

    bento = _bento_dir(home, bento_tag)
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    items = [("bentos", bento_tag), *(("models", tag) for tag in _yaml_model_tags(info))]
    for sub in STORE_DIRS:
        target = dest / sub
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True, mode=0o755)
    for sub, tag in items:
        name, version = _split_tag(tag)
        copied = dest / sub / name / version
        shutil.copytree(home / sub / name / version, copied, copy_function=_link_or_copy)
        # copytree keeps the store's 0700 folders; only ours are walked (root's, fresh).
        for folder in (copied.parent, copied, *(p for p in copied.rglob("*") if p.is_dir())):
            folder.chmod(0o755)
    name, version = _split_tag(bento_tag)
    return dest / "bentos" / name / version


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links refused: copy
        shutil.copy2(source, target)


# --------------------------------------------------------------------------- child process


def _child_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["BENTOML_HOME"] = str(home)
    env["BENTOML_DO_NOT_TRACK"] = "True"
    pythonpath = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{_REPO_ROOT}{os.pathsep}{pythonpath}" if pythonpath else str(_REPO_ROOT)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _run_child(
    op: str,
    spec: dict[str, Any],
    *,
    home: Path,
    log_path: Path | None,
    header: str,
    timeout: float,
    cwd: Path | None,
    error: type[BentoError],
    what: str,
) -> tuple[dict[str, Any], str]:
    """Run one store operation in a fresh child; its result and everything it printed."""
    scratch = home / ".modelyard" / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{op}-", dir=scratch) as tmp:
        spec_file, result_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps(spec))
        output_file = Path(tmp) / "output.log"
        with output_file.open("wb") as output:
            # Own session: on timeout the whole group (child and anything it spawned) is
            # killed; and a Celery worker's death does not kill a build holding the lock.
            proc = subprocess.Popen(
                [sys.executable, "-m", _MODULE, op, str(spec_file), str(result_file)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=cwd or _REPO_ROOT,
                env=_child_env(home),
                start_new_session=True,
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log = header + output_file.read_text(errors="replace")
        if log_path is not None:
            _append(log_path, log)
        result: dict[str, Any] = {}
        if result_file.is_file():
            result = json.loads(result_file.read_text())
    if timed_out:
        raise error(f"{what} did not finish within {timeout:.0f} s and was killed", log)
    if proc.returncode != 0 or "error" in result or not result:
        reason = result.get("error") or _last_error_line(log) or f"exit status {proc.returncode}"
        raise error(f"{what} failed: {reason}", log)
    return result, log


def _last_error_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line
    return lines[-1] if lines else ""


def _append(log_path: Path | None, text: str) -> None:
    if log_path is None:
        return
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as fh:
        fh.write(text)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _ChildError(Exception):
    """An expected failure inside the child: reported as one clear line, no traceback."""


def _store_lock(home: Path, timeout: float) -> Any:
    from filelock import FileLock

    path = _lock_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=timeout)


def _locked(home: Path, timeout: float) -> Any:
    from filelock import Timeout

    lock = _store_lock(home, timeout)
    try:
        lock.acquire()
    except Timeout:
        raise _ChildError(
            f"the BentoML store at {home} stayed locked by another writer for {timeout:.0f} s"
        ) from None
    return lock


def _child_build(spec: dict[str, Any]) -> dict[str, Any]:
    import bentoml

    home = Path(spec["home"])
    bento_tag, model_tag = spec["bento_tag"], spec["model_tag"]
    lock = _locked(home, float(spec["lock_timeout"]))
    try:
        marker = _read_marker(home, bento_tag)
        if marker is not None and (_bento_dir(home, bento_tag) / "bento.yaml").is_file():
            # Another build of the same version finished while this one waited for the lock.
            if marker.get("artifact_sha256") != spec["artifact_sha256"]:
                raise _ChildError(f"Bento {bento_tag} exists, built from a different artifact")
            print(f"Bento {bento_tag} was built meanwhile by another build; reused.", flush=True)
            return {"bento_tag": bento_tag, "model_tag": marker["model_tag"], "reused": True}
        if _bento_dir(home, bento_tag).exists():
            # No marker: left by a build that died mid-write. Never serve a partial Bento.
            print(f"removing incomplete Bento {bento_tag} left by an interrupted build", flush=True)
            shutil.rmtree(_bento_dir(home, bento_tag))
        _ensure_model(spec)
        context = Path(spec["context"])
        bento = bentoml.bentos.build_bentofile(
            str(context / "bentofile.yaml"),
            build_ctx=str(context),
            version=(context / "version").read_text().strip(),
        )
        built = str(bento.tag)
        if built != bento_tag:
            raise _ChildError(f"BentoML built {built} instead of {bento_tag}")
        models = [str(model.tag) for model in bento.info.all_models]
        if models != [model_tag]:
            raise _ChildError(f"Bento {built} references models {models}, expected [{model_tag}]")
        _write_marker(
            home,
            bento_tag,
            {
                "bento_tag": bento_tag,
                "model_tag": model_tag,
                "artifact_sha256": spec["artifact_sha256"],
                "built_at": _stamp(),
                "bentoml_version": bentoml.__version__,
            },
        )
        print(f"Successfully built Bento {built} with model {model_tag}.", flush=True)
        return {"bento_tag": built, "model_tag": model_tag, "reused": False}
    finally:
        lock.release()


def _ensure_model(spec: dict[str, Any]) -> None:
    """Import the artifact as the exact model tag, reusing an identical earlier import."""
    import bentoml

    home = Path(spec["home"])
    model_tag = spec["model_tag"]
    model_dir = _model_dir(home, model_tag)
    stored_artifact = model_dir / spec["artifact_file"]
    if model_dir.exists():
        if (
            (model_dir / "model.yaml").is_file()
            and stored_artifact.is_file()
            and _sha256(stored_artifact) == spec["artifact_sha256"]
        ):
            print(f"model {model_tag} already imported from this artifact; reused.", flush=True)
            return
        print(f"replacing model {model_tag}: incomplete or from another artifact", flush=True)
        shutil.rmtree(model_dir)
    with bentoml.models.create(
        model_tag, labels=spec["labels"], metadata=spec["metadata"]
    ) as model:
        shutil.copyfile(spec["artifact_path"], model.path_of(spec["artifact_file"]))
    print(f"imported artifact as model {model_tag}", flush=True)


def _child_export(spec: dict[str, Any]) -> dict[str, Any]:
    import bentoml

    path = bentoml.bentos.export_bento(spec["bento_tag"], spec["dest"])
    print(f"exported Bento {spec['bento_tag']} to {path}", flush=True)
    return {"path": path}


def _child_import(spec: dict[str, Any]) -> dict[str, Any]:
    import yaml
    from bentoml._internal.bento.bento import Bento

    home = Path(spec["home"])
    lock = _locked(home, float(spec["lock_timeout"]))
    try:
        bento = Bento.import_from(spec["archive"])
        tag = str(bento.tag)
        if (_bento_dir(home, tag) / "bento.yaml").is_file() and _read_marker(home, tag):
            print(f"Bento {tag} already in the store; nothing imported.", flush=True)
            return {"bento_tag": tag, "imported": False}
        if _bento_dir(home, tag).exists():
            shutil.rmtree(_bento_dir(home, tag))
        bento.save()
        info = yaml.safe_load((_bento_dir(home, tag) / "bento.yaml").read_text())
        labels = info.get("labels") or {}
        _write_marker(
            home,
            tag,
            {
                "bento_tag": tag,
                "model_tag": next(iter(_yaml_model_tags(info)), None),
                "artifact_sha256": labels.get(f"{_LABEL_PREFIX}artifact-sha256"),
                "imported_at": _stamp(),
                "imported_from": spec["archive"],
            },
        )
        print(f"imported Bento {tag} from {spec['archive']}", flush=True)
        return {"bento_tag": tag, "imported": True}
    finally:
        lock.release()


def _child_delete(spec: dict[str, Any]) -> dict[str, Any]:
    import yaml

    home = Path(spec["home"])
    bento_tag = spec["bento_tag"]
    lock = _locked(home, float(spec["lock_timeout"]))
    try:
        bento_dir = _bento_dir(home, bento_tag)
        marker = _read_marker(home, bento_tag) or {}
        model_tags = [marker["model_tag"]] if marker.get("model_tag") else []
        if (bento_dir / "bento.yaml").is_file():
            info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
            model_tags = _yaml_model_tags(info) or model_tags
        # Marker first: from here on the Bento no longer counts as built.
        _marker_path(home, bento_tag).unlink(missing_ok=True)
        deleted = bento_dir.exists()
        if deleted:
            shutil.rmtree(bento_dir)
        _fix_latest(bento_dir.parent)
        for model_tag in model_tags:
            model_dir = _model_dir(home, model_tag)
            if model_dir.exists():
                shutil.rmtree(model_dir)
                _fix_latest(model_dir.parent)
        print(f"deleted Bento {bento_tag} and models {model_tags}", flush=True)
        return {"deleted": deleted}
    finally:
        lock.release()


def _child_image_context(spec: dict[str, Any]) -> dict[str, Any]:
    import bentoml
    from bentoml._internal.container import construct_containerfile

    bento = bentoml.bentos.get(spec["bento_tag"])
    # enable_buildkit=False: the plain Dockerfile that every builder accepts.
    with construct_containerfile(bento, enable_buildkit=False) as (context, _dockerfile):
        shutil.copytree(context, spec["dest"], symlinks=False)
    print(f"wrote the image build context of {spec['bento_tag']} to {spec['dest']}", flush=True)
    return {"dest": spec["dest"]}


def _yaml_model_tags(info: dict[str, Any]) -> list[str]:
    """Model tags a bento.yaml references (1.4 lists them per service, not at the top)."""
    tags = [str(m["tag"]) for m in info.get("models") or []]
    for service in info.get("services") or []:
        tags += [str(m["tag"]) for m in service.get("models") or []]
    return list(dict.fromkeys(tags))


def _fix_latest(item_dir: Path) -> None:
    """Keep BentoML's ``latest`` pointer valid (or drop the name) after deleting a version."""
    if not item_dir.is_dir():
        return
    versions = sorted(
        (path for path in item_dir.iterdir() if path.is_dir()), key=lambda p: p.stat().st_mtime
    )
    if versions:
        (item_dir / "latest").write_text(versions[-1].name)
    else:
        shutil.rmtree(item_dir)


_CHILD_OPS = {
    "build": _child_build,
    "export": _child_export,
    "import": _child_import,
    "delete": _child_delete,
    "image-context": _child_image_context,
}


def _child_main(argv: list[str]) -> int:
    """Entry point of the store child: ``op spec.json result.json``."""
    import logging

    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s"
    )
    op, spec_file, result_file = argv
    spec = json.loads(Path(spec_file).read_text())
    try:
        result = _CHILD_OPS[op](spec)
    except _ChildError as exc:
        print(f"error: {exc}", flush=True)
        Path(result_file).write_text(json.dumps({"error": str(exc)}))
        return 1
    except Exception as exc:
        import traceback

        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        Path(result_file).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    Path(result_file).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
