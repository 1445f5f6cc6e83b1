"""Load a model and smoke-predict only in a separate, resource-limited child process.

The child (``_child.py``) runs isolated (``python -I``: neither the working directory nor
PYTHONPATH is on its path) and refuses to import the project's packages even when they are
installed into the environment, so it cannot reach the project or its settings; in its own
session, with limits on address space, CPU time, open files, file size and core dumps. It
starts as every model process does (``core.model_process``): the minimal environment, its
scratch directory as HOME and working directory, and where the machine allows it as the
unprivileged model user (reading copies of its inputs) in a network namespace of its own
with no usable interface; the report's ``isolation`` says what applied. A wall-clock
deadline kills its whole process tree. These limits contain runaway or hostile loads; they
are not a substitute for the static scan, which runs first.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import psutil

from core.model_process import Confinement, model_process_start, model_user
from registry.modelkit.loading import loader_decision

from .formats import FORMATS, SKOPS

CHILD_SCRIPT = Path(__file__).with_name("_child.py")
MODELKIT_DIR = Path(__file__).resolve().parents[1] / "modelkit"
SAMPLE_ROWS = 100
# Request fields naming files the child reads: copied into its folder for the model user.
_INPUT_PATHS = ("artifact_path", "sample_path")
MAX_OPEN_FILES = 64
# The child has no reason to write files; this also caps what it can pour into stderr.
MAX_FILE_BYTES = 64 * 1024**2
# The answer carries a prediction (and the probabilities) of every labelled reference row for
# the reference baseline: 200,000 rows of a few classes fit, below the file-size limit above.
_MAX_RESPONSE_BYTES = 48 * 1024**2
_STDERR_TAIL_BYTES = 16 * 1024
_STDERR_TAIL_LINES = 20
_POLL_SECONDS = 0.02
# What a failed allocation looks like on stderr when the child could not report it itself.
_MEMORY_MARKERS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")


@dataclass
class SandboxLimits:
    timeout_seconds: float = 60
    memory_bytes: int = 2 * 1024**3


@dataclass
class LoadReport:
    ok: bool
    error: str | None = None
    load_seconds: float | None = None
    predict_seconds: float | None = None
    sample_rows: int = 0
    output_shape: list[int] = field(default_factory=list)
    output_dtype: str = ""
    input_schema: list[dict[str, Any]] = field(default_factory=list)
    n_features: int | None = None
    feature_names: list[str] | None = None
    predictions_preview: list[Any] = field(default_factory=list)
    peak_rss_bytes: int | None = None
    # "reference" (the uploaded sample) or "synthetic" (random floats of the model's width)
    sample_source: str | None = None
    # What confined the child (user, own network) and why anything could not be applied.
    isolation: dict[str, Any] = field(default_factory=dict)
    # The model contract decided in the child (registry/modelkit/contract_decide.py), the
    # JSON rows it was proven on and what it answered: the rollout's smoke check replays them.
    contract: dict[str, Any] = field(default_factory=dict)
    smoke_rows: list[Any] = field(default_factory=list)
    probabilities_preview: list[Any] | None = None
    # With a label column: the model's answers on the labelled reference rows (positions in
    # the file, predictions, probabilities) or {"error": ...}. Large: the platform computes
    # the baseline from it and does not keep it in the report.
    labelled: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sandbox_load_and_predict(
    *,
    artifact_path: Path,
    fmt: str,
    sample_path: Path | None,
    limits: SandboxLimits,
    loader: dict[str, Any] | None = None,
    declared_feature_names: list[str] | None = None,
    class_labels: list[Any] | None = None,
    label_column: str | None = None,
    label_rows: int = 0,
) -> LoadReport:
    """Load ``artifact_path`` in a limited child process and predict on a small sample.

    ``loader`` is the loading decision (``modelkit.loading.loader_decision``) the child
    loads with, the one recorded on the version; by default the decision for ``fmt``
    (skops: with the trusted types of the static scan).

    Model problems (load errors, crashes, timeouts, memory) come back as ``ok=False`` with
    a message; only wrong arguments raise. With ``label_column`` the sample's labels are kept
    out of the features and the model also answers every labelled row among the first
    ``label_rows`` (``LoadReport.labelled``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown artifact format {fmt!r}")
    artifact_path = Path(artifact_path).resolve(strict=True)
    if sample_path is not None:
        sample_path = Path(sample_path).resolve(strict=True)
    if limits.timeout_seconds <= 0 or limits.memory_bytes <= 0:
        raise ValueError(f"sandbox limits must be positive: {limits}")

    request: dict[str, Any] = {
        "artifact_path": str(artifact_path),
        "format": fmt,
        "sample_path": str(sample_path) if sample_path else None,
        "sample_rows": SAMPLE_ROWS,
        "blocked_packages": _project_packages(),
        # The child imports registry/modelkit by path as ``modelkit``, as a Bento ships it.
        "modelkit_dir": str(MODELKIT_DIR),
        "declared_feature_names": declared_feature_names,
        "class_labels": class_labels,
        "label_column": label_column,
        "label_rows": label_rows,
    }
    if loader is None:
        trusted = None
        if fmt == SKOPS:
            from .scanning import skops_trusted_types

            trusted, _ = skops_trusted_types(artifact_path)
        loader = loader_decision(fmt, trusted)
    if loader.get("format") != fmt:
        raise ValueError(f"loading decision {loader!r} is not for format {fmt!r}")
    request["loader"] = loader

    with (
        tempfile.TemporaryDirectory(prefix="modelyard-sandbox-") as workdir,
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
    ):
        timed_out, returncode, confinement = _run_child(request, limits, workdir, stdout, stderr)
        stdout.seek(0)
        response_bytes = stdout.read(_MAX_RESPONSE_BYTES)
        stderr_tail = _tail(stderr)
    report = _report(limits, timed_out, returncode, response_bytes, stderr_tail)
    report.isolation = confinement.to_dict()
    return report


def _project_packages() -> list[str]:
    """Top-level packages of this project, which the child refuses to import.

    ``python -I`` keeps the working directory and PYTHONPATH off the child's path, but an
    editable install (``pip install -e .``) puts the project on every interpreter's path
    through the environment itself.
    """
    own = __name__.partition(".")[0]
    root = Path(__file__).resolve().parents[2]
    if root.name in ("site-packages", "dist-packages"):
        # Installed as a regular distribution: its metadata names its packages.
        from importlib.metadata import packages_distributions

        owners = packages_distributions()
        dists = set(owners.get(own, []))
        names = {name for name, found in owners.items() if dists & set(found)}
        return sorted(names | {own})
    # A source checkout: every package directory next to this one is the project's.
    return sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file())


def _run_child(
    request: dict[str, Any],
    limits: SandboxLimits,
    workdir: str,
    stdout: IO[bytes],
    stderr: IO[bytes],
) -> tuple[bool, int, Confinement]:
    home = Path(workdir)
    request = _inputs_for_model_user(request, home)
    start = model_process_start(
        # -B: do not write .pyc files into the shared environment.
        argv=[sys.executable, "-I", "-B", str(CHILD_SCRIPT)],
        home=home,
        # One thread each: predictable memory under RLIMIT_AS and no oversubscription of
        # the worker's cores.
        threads=1,
        own_network=True,
        reads=[
            CHILD_SCRIPT,
            MODELKIT_DIR,
            *(Path(request[key]) for key in _INPUT_PATHS if request.get(key)),
        ],
    )
    proc = subprocess.Popen(
        start.argv,
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=stderr,
        cwd=start.cwd,
        env=start.env,
        start_new_session=True,
        # preexec_fn is only unsafe when the caller runs threads that hold locks across
        # fork; the validation task runs in a prefork worker process.
        preexec_fn=lambda: _apply_limits(limits),
        close_fds=True,
    )
    try:
        stdin = proc.stdin
        if stdin is None:  # pragma: no cover - stdin=PIPE always sets it
            raise RuntimeError("child process has no stdin pipe")
        with contextlib.suppress(BrokenPipeError):  # the child may die before reading
            try:
                stdin.write(json.dumps(request).encode())
            finally:
                stdin.close()
        timed_out = _wait_without_reaping(proc.pid, limits.timeout_seconds)
    finally:
        # The child is still alive or an unreaped zombie here, so its pid (and with it its
        # session's process group id) cannot have been reused by an unrelated process.
        _kill_tree(proc.pid)
        returncode = proc.wait()
    return timed_out, returncode, start.confinement


def _inputs_for_model_user(request: dict[str, Any], home: Path) -> dict[str, Any]:
    """The request with its input files copied into the child's own folder.

    Stored artifacts are 0640 and the platform's: a child switched to the model user reads
    its copies, and nothing else of the media root. (Copying 50 MB costs tens of ms.)
    """
    if model_user() is None:
        return request
    inputs = home / "inputs"
    inputs.mkdir(mode=0o755)
    copied = dict(request)
    for key in _INPUT_PATHS:
        if request.get(key):
            source = Path(request[key])
            target = inputs / f"{key}{''.join(source.suffixes[-2:])}"
            shutil.copyfile(source, target)
            os.chmod(target, 0o644)
            copied[key] = str(target)
    return copied


def _wait_without_reaping(pid: int, timeout: float) -> bool:
    """Wait for the child to exit, leaving it a zombie. True if the deadline passed first."""
    deadline = time.monotonic() + timeout
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return True
        time.sleep(_POLL_SECONDS)
    return False


def _kill_tree(pid: int) -> None:
    # Descendants that left the session (setsid) are only reachable through the tree.
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for process in descendants:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(descendants, timeout=5)


def _apply_limits(limits: SandboxLimits) -> None:
    """Runs in the child between fork and exec."""
    cpu_seconds = math.ceil(limits.timeout_seconds) + 1
    for limit, soft, hard in (
        (resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
        # SIGXCPU at the soft limit, SIGKILL at the hard one: a busy child dies even if
        # the parent's wall-clock deadline were missed.
        (resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 5),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES),
        (resource.RLIMIT_FSIZE, MAX_FILE_BYTES, MAX_FILE_BYTES),
    ):
        _, current_hard = resource.getrlimit(limit)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(limit, (soft, hard))


def _tail(stream: IO[bytes]) -> str:
    size = stream.seek(0, os.SEEK_END)
    stream.seek(max(0, size - _STDERR_TAIL_BYTES))
    text = stream.read().decode("utf-8", "replace")
    return "\n".join(text.strip().splitlines()[-_STDERR_TAIL_LINES:])


def _report(
    limits: SandboxLimits,
    timed_out: bool,
    returncode: int,
    response_bytes: bytes,
    stderr_tail: str,
) -> LoadReport:
    memory_mb = limits.memory_bytes // 1024**2
    memory_error = f"model exceeded the sandbox memory limit of {memory_mb} MB"
    if timed_out:
        return LoadReport(ok=False, error=f"model load timed out after {limits.timeout_seconds:g}s")
    response = _parse_response(response_bytes) if returncode == 0 else None
    if response is not None:
        report = LoadReport(
            **{f.name: response[f.name] for f in fields(LoadReport) if f.name in response}
        )
        if response.get("error_kind") == "memory":
            report.error = f"{memory_error} ({report.error})"
        return report
    if returncode == -signal.SIGXCPU or returncode == -signal.SIGKILL:
        # SIGKILL we did not send comes from the CPU hard limit or the kernel's OOM killer.
        return LoadReport(
            ok=False,
            error=f"model process was killed ({signal.Signals(-returncode).name}) for using "
            f"more than {math.ceil(limits.timeout_seconds) + 1}s of CPU or too much memory",
        )
    if any(marker in stderr_tail for marker in _MEMORY_MARKERS):
        return LoadReport(ok=False, error=f"{memory_error}: {_last_line(stderr_tail)}")
    if returncode == -signal.SIGXFSZ:
        return LoadReport(
            ok=False,
            error=f"model process tried to write more than {MAX_FILE_BYTES // 1024**2} MB",
        )
    detail = stderr_tail or "(no output on stderr)"
    if returncode < 0:
        how = f"crashed (signal {signal.Signals(-returncode).name})"
    else:
        how = f"exited with code {returncode} before reporting a result"
    return LoadReport(ok=False, error=f"model process {how}:\n{detail}")


def _parse_response(data: bytes) -> dict[str, Any] | None:
    try:
        response = json.loads(data)
    except ValueError:
        return None
    if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
        return None
    return response


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""
