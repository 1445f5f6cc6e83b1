"""Modelyard against MLServer on the same model files, the same load, alternating rounds.

Trains a logistic regression and a 50-tree random forest (joblib files), then serves each
file with:

- ``modelyard``: the gateway in front of the generated BentoML service, exactly as a
  deployment slot runs it (validated contract, ``bento_build``, the local runtime backend,
  a route in Redis), answering its default response (predictions and probabilities);
- ``slot``: the same BentoML slot called directly (the gateway's added p50 is the
  difference);
- ``mlserver``: MLServer with its scikit-learn runtime from its own venv
  (``.bench/mlserver-venv``, made by ``make bench-peers`` from mlserver-requirements.txt),
  answering its default (predictions only) over the V2 protocol;
- ``mlflow models serve`` only if mlflow is installed in the platform venv (it is not
  pinned, so usually skipped).

One load generator (``load.py``, its own process, closed loop) runs 1 and 32 connections
with 1-row and 1,000-row requests; every (model, case) runs each server once per round,
servers in a rotating order. Prints per-round figures, medians, and the ratios the issue's
targets are about; asserts nothing about speed (only that the servers answer alike).

Run: make bench-peers   (or, with REDIS_URL set: python -m tests.benchmarks.peers.bench)
Knobs: BENCH_PEERS_SECONDS (per run, default 5), BENCH_PEERS_ROUNDS (default 3),
BENCH_PEERS_ROWS (rows per request to run, e.g. ``1000``; default both 1 and 1000).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[3]
MLSERVER_VENV = REPO_ROOT / ".bench" / "mlserver-venv"
KEY = "dk_bench_peers_0123456789"
CASES = ((1, 1), (32, 1), (1, 1000), (32, 1000))  # (connections, rows per request)
SERVERS = ("modelyard", "slot", "mlserver", "mlflow")


@dataclass
class Target:
    """One server of one model: its URL and the two bodies it takes."""

    url: str
    bodies: dict[int, Path]  # rows per request -> body file
    headers: tuple[str, ...] = ()


@dataclass
class Results:
    runs: dict[tuple[str, str, int, int], list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, key: tuple[str, str, int, int], run: dict[str, Any]) -> None:
        self.runs.setdefault(key, []).append(run)

    def median(self, key: tuple[str, str, int, int], figure: str) -> float:
        return statistics.median(run[figure] for run in self.runs[key])


def _models(workdir: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Two joblib files fitted on a plain matrix (MLServer hands the model a matrix; a
    frame-fitted model would warn on every call there), and the rows to send."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from tests.models import training_frame

    frame, target = training_frame(400)
    matrix = frame.to_numpy(dtype=np.float64)
    fitted = {
        "logreg": LogisticRegression(max_iter=500).fit(matrix, target),
        "forest": RandomForestClassifier(n_estimators=50, random_state=0).fit(matrix, target),
    }
    rng = np.random.default_rng(1)
    rows = matrix[rng.integers(0, len(matrix), 1000)]
    models = {}
    for name, model in fitted.items():
        path = workdir / f"{name}.joblib"
        joblib.dump(model, path)
        models[name] = (path, rows)
    (workdir / "reference.csv").write_text(frame.head(200).to_csv(index=False))
    return models


def _bodies(workdir: Path, name: str, rows: np.ndarray) -> tuple[dict[int, Path], ...]:
    modelyard, mlserver, mlflow = {}, {}, {}
    for count in (1, 1000):
        part = rows[:count]
        modelyard[count] = workdir / f"{name}-{count}-modelyard.json"
        modelyard[count].write_text(json.dumps({"instances": part.tolist()}))
        mlserver[count] = workdir / f"{name}-{count}-mlserver.json"
        mlserver[count].write_text(
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input-0",
                            "shape": list(part.shape),
                            "datatype": "FP64",
                            "data": part.ravel().tolist(),
                        }
                    ]
                }
            )
        )
        mlflow[count] = workdir / f"{name}-{count}-mlflow.json"
        mlflow[count].write_text(json.dumps({"instances": part.tolist()}))
    return modelyard, mlserver, mlflow


@contextmanager
def _modelyard(
    workdir: Path, models: dict[str, tuple[Path, np.ndarray]], redis_url: str
) -> Iterator[dict[str, dict[str, str]]]:
    """A real slot per model (built and served as a rollout does) and a gateway in front."""
    import redis

    from deployments.integrations.bentoml import bento_build
    from deployments.runtime.local import LocalProcessBackend
    from registry.validation.sandbox import SandboxLimits, sandbox_load_and_predict
    from tests.gateway.support import Deployments, free_port, start_process, wait_http

    home = workdir / "bentoml"
    home.mkdir()
    backend = LocalProcessBackend(home, workdir / "runtime", ready_timeout=120)
    client = redis.Redis.from_url(redis_url)
    deployments = Deployments(client)
    gateway = None
    try:
        urls: dict[str, dict[str, str]] = {}
        sample = workdir / "reference-matrix.csv"
        for version, (name, (artifact, rows)) in enumerate(models.items(), 1):
            np.savetxt(
                sample,
                rows[:200],
                delimiter=",",
                header="f0,f1,f2,f3",
                comments="",
            )
            report = sandbox_load_and_predict(
                artifact_path=artifact, fmt="joblib", sample_path=sample, limits=SandboxLimits()
            )
            assert report.ok, report.error
            started = time.monotonic()
            tag = bento_build(
                home=home,
                model_name=name,
                version=version,
                artifact_path=artifact,
                framework="sklearn",
                fmt="joblib",
                feature_names=report.feature_names,
                contract=report.contract,
                log_path=workdir / f"build-{name}.log",
            ).bento_tag
            built = time.monotonic()
            handle = backend.slot_start(slot_key=f"peers-{name}.blue", bento_tag=tag)
            ready = time.monotonic()
            time.sleep(2.0)  # idle: let start-up settle
            rss, pss, count = tree_memory(handle.pid)
            print(
                f"modelyard {name}: build {built - started:.1f} s, start until ready "
                f"{ready - built:.1f} s (cold rollout {ready - started:.1f} s); idle slot "
                f"{count} processes, RSS {rss:.0f} MB, PSS {pss:.0f} MB",
                flush=True,
            )
            route = deployments.new_name(f"peers-{name}")
            deployments.publish(route, handle.url, keys=(KEY,))
            urls[name] = {"slot": f"{handle.url}/predict", "route": route}
        port = free_port()
        gateway = start_process(
            "peers-gateway",
            [sys.executable, "-m", "gateway", "--port", str(port), "--redis-url", redis_url],
            port,
            workdir,
            env={"MODELYARD_GATEWAY_LOG_LEVEL": "warning"},
        )
        wait_http(gateway, "/readyz")
        for name in urls:
            urls[name]["modelyard"] = f"{gateway.url}/d/{urls[name]['route']}/predict"
        time.sleep(1.0)  # the gateway reads the routes it was told about
        yield urls
    finally:
        if gateway is not None:
            gateway.stop()
        for status in backend.slots():
            backend.slot_stop(slot_key=status.slot_key)
        deployments.cleanup()
        client.close()


@contextmanager
def _mlserver(workdir: Path, models: dict[str, tuple[Path, np.ndarray]]) -> Iterator[str]:
    from tests.gateway.support import free_port

    python = MLSERVER_VENV / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"no MLServer venv at {MLSERVER_VENV}: run `make bench-peers`")
    root = workdir / "mlserver"
    root.mkdir()
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (root / "settings.json").write_text(
        json.dumps({"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port})
    )
    for name, (artifact, _) in models.items():
        folder = root / name
        folder.mkdir()
        (folder / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "implementation": "mlserver_sklearn.SKLearnModel",
                    "parameters": {"uri": str(artifact)},
                }
            )
        )
    log = (workdir / "mlserver.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    proc = subprocess.Popen(
        [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(root)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ready = all(
                    httpx.get(f"{url}/v2/models/{name}/ready", timeout=1).status_code == 200
                    for name in models
                )
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"MLServer did not start:\n{(workdir / 'mlserver.log').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield url
    finally:
        _stop_tree(proc)
        log.close()


@contextmanager
def _mlflow(workdir: Path, models: dict[str, tuple[Path, np.ndarray]]) -> Iterator[dict[str, str]]:
    """``mlflow models serve`` per model, only where mlflow is already installed."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        print("mlflow is not installed in this venv: mlflow models serve skipped", flush=True)
        yield {}
        return
    import mlflow.sklearn

    from tests.gateway.support import free_port

    procs, urls = [], {}
    try:
        for name, (artifact, _) in models.items():
            saved = workdir / f"mlflow-{name}"
            mlflow.sklearn.save_model(joblib.load(artifact), str(saved))
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(saved),
                     "-p", str(port), "--env-manager", "local"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            urls[name] = f"{url}/invocations"
        yield urls
    finally:
        for proc in procs:
            _stop_tree(proc)


def tree_memory(pid: int | None) -> tuple[float, float, int]:
    """(RSS MB, PSS MB, processes) of a server's whole process tree."""
    import psutil

    if pid is None:
        return float("nan"), float("nan"), 0
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    infos = [proc.memory_full_info() for proc in procs]
    return (
        sum(info.rss for info in infos) / 2**20,
        sum(info.pss for info in infos) / 2**20,
        len(procs),
    )


def _stop_tree(proc: subprocess.Popen[bytes]) -> None:
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for child in children:
        with suppress(psutil.NoSuchProcess):
            child.kill()


def _load(target: Target, connections: int, rows: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.peers.load",
            target.url,
            str(target.bodies[rows]),
            str(connections),
            str(seconds),
            "1",
            *target.headers,
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=seconds + 120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check_alike(targets: dict[str, Target], model: Any, rows: np.ndarray) -> None:
    """Every server answers the model's own labels for the same rows (1,000-row body)."""
    expected = model.predict(rows).tolist()
    for server, target in targets.items():
        headers = dict(h.split(": ", 1) for h in target.headers)
        body = json.loads(target.bodies[1000].read_text())
        answer = httpx.post(target.url, json=body, headers=headers, timeout=60, trust_env=False)
        assert answer.status_code == 200, (server, answer.text[:500])
        data = answer.json()
        if server == "mlserver":
            got = data["outputs"][0]["data"]
        elif server == "mlflow":
            got = data["predictions"]
        else:
            got = data["predictions"]
            assert "probabilities" in data  # the default response
        assert [int(v) for v in got] == expected, server


def cases(environ: dict[str, str] | None = None) -> tuple[tuple[int, int], ...]:
    """The (connections, rows) cases to run: BENCH_PEERS_ROWS keeps those of its row counts."""
    wanted = (os.environ if environ is None else environ).get("BENCH_PEERS_ROWS", "").split(",")
    rows = {int(count) for count in wanted if count.strip()}
    kept = tuple(case for case in CASES if not rows or case[1] in rows)
    if not kept:
        raise SystemExit(f"BENCH_PEERS_ROWS={','.join(wanted)} matches no case of {CASES}")
    return kept


def run(seconds: float, rounds: int, redis_url: str) -> Results:
    results = Results()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        models = _models(workdir)
        fitted = {name: joblib.load(path) for name, (path, _) in models.items()}
        ours = stack.enter_context(_modelyard(workdir, models, redis_url))
        mlserver = stack.enter_context(_mlserver(workdir, models))
        mlflow = stack.enter_context(_mlflow(workdir, models))
        for name, (_, rows) in models.items():
            modelyard_bodies, mlserver_bodies, mlflow_bodies = _bodies(workdir, name, rows)
            targets = {
                "modelyard": Target(
                    ours[name]["modelyard"], modelyard_bodies, (f"Authorization: Bearer {KEY}",)
                ),
                "slot": Target(ours[name]["slot"], modelyard_bodies),
                "mlserver": Target(f"{mlserver}/v2/models/{name}/infer", mlserver_bodies),
            }
            if name in mlflow:
                targets["mlflow"] = Target(mlflow[name], mlflow_bodies)
            _check_alike(targets, fitted[name], rows)
            order = list(targets)
            for round_index in range(rounds):
                for connections, count in cases():
                    # Rotate who goes first, so no server always runs on the coolest machine.
                    shift = round_index % len(order)
                    for server in order[shift:] + order[:shift]:
                        result = _load(targets[server], connections, count, seconds)
                        results.add((name, server, connections, count), result)
                        print(
                            f"round {round_index + 1} {name:<6} c={connections:<2} "
                            f"rows={count:<4} {server:<9} {result['rps']:8.1f} req/s "
                            f"p50 {result['p50_ms']:7.2f} ms p99 {result['p99_ms']:8.2f} ms "
                            f"errors {result['errors']} generator CPU "
                            f"{result['generator_cpu']:.2f}",
                            flush=True,
                        )
    return results


def report(results: Results) -> str:
    lines = [
        "",
        "medians over the rounds (req/s; p50/p99 ms; rows/s for 1,000-row requests)",
        f"{'model':<7}{'c':>3}{'rows':>6} "
        + " ".join(f"{server:>26}" for server in SERVERS)
        + f"{'MY/MLS req/s':>14}{'MY/MLS p99':>12}{'gw +p50 ms':>12}",
    ]
    for name in ("logreg", "forest"):
        for connections, count in cases():
            cells = []
            for server in SERVERS:
                key = (name, server, connections, count)
                if key not in results.runs:
                    cells.append(f"{'-':>26}")
                    continue
                errors = sum(run["errors"] for run in results.runs[key])
                cells.append(
                    f"{results.median(key, 'rps'):>8.1f} "
                    f"{results.median(key, 'p50_ms'):>6.1f}/{results.median(key, 'p99_ms'):<7.1f}"
                    f"e{errors:<2}"
                )
            ours, theirs = (
                (name, "modelyard", connections, count),
                (name, "mlserver", connections, count),
            )
            slot = (name, "slot", connections, count)
            ratio = results.median(ours, "rps") / results.median(theirs, "rps")
            p99 = results.median(ours, "p99_ms") / results.median(theirs, "p99_ms")
            added = results.median(ours, "p50_ms") - results.median(slot, "p50_ms")
            lines.append(
                f"{name:<7}{connections:>3}{count:>6} "
                + " ".join(cells)
                + f"{ratio:>13.2f}x{p99:>11.2f}x{added:>12.2f}"
            )
    generator = max(run["generator_cpu"] for runs in results.runs.values() for run in runs)
    lines += [
        f"load generator: at most {generator:.2f} of a core in any run",
        "targets (issue 18): MY/MLS req/s >= 1.5x at 32 connections and >= 1.0x at 1 (1-row); "
        "MY/MLS p99 <= 1.0x at 32; no errors; 1,000-row rows/s >= MLServer's "
        "(req/s ratio >= 1.0x); gateway added p50 <= 1 ms",
    ]
    return "\n".join(lines)


def main() -> int:
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        raise SystemExit(
            "set REDIS_URL (the gateway reads its routes there), or use make bench-peers"
        )
    seconds = float(os.environ.get("BENCH_PEERS_SECONDS", "5"))
    rounds = int(os.environ.get("BENCH_PEERS_ROUNDS", "3"))
    results = run(seconds, rounds, redis_url)
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
