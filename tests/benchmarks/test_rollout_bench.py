"""Rollout benchmarks: cold rollout time, and rollback call → first answer of the old version.

Run: make bench  (prints figures; asserts only correctness, never speed)

Cold rollout time is taken from the rollout's own step log (the worker's timestamps), not from
this file's polling, and broken down by step. The rollback is timed from the call's start to:
the route change announced on Redis (heard by a subscriber here, as the gateway hears it); the
first answer of the old version to live traffic (a client thread keeps requests flowing through
the gateway all along, as real traffic does); the API's 202; and the caller's own first
request sent after the 202 (what an on-call engineer who waits for the answer sees).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from deployments import backends
from gateway.routes import ROUTES_CHANNEL
from tests.benchmarks.test_gateway_overhead import measure
from tests.deployments.flows import _roll_out, churn_deployment

pytestmark = [pytest.mark.benchmark, pytest.mark.stack]


def _pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


STEP_NAMES = {
    "building": "queued -> build started",
    "starting": "build (or reuse) of the Bento",
    "verifying": "slot start (bentoml serve until /readyz)",
    "switching": "smoke request",
    "baking": "route switch",
}


def _timeline(rollout: dict) -> tuple[float, list[tuple[str, float]]]:
    """Seconds from the rollout's creation to traffic switched, and per step."""
    steps = rollout["steps"]
    at = [datetime.fromisoformat(step["at"]) for step in steps]
    parts = [
        (STEP_NAMES.get(step["state"], step["state"]), (at[i] - at[i - 1]).total_seconds())
        for i, step in enumerate(steps)
        if i > 0
    ]
    return (at[-1] - at[0]).total_seconds(), parts


class _Traffic:
    """Live traffic through the gateway during the flips (tests/benchmarks/traffic.py)."""

    def __init__(self, url: str, headers: dict[str, str], rows: list, folder: Path) -> None:
        self._out = folder / "traffic.txt"
        self._process = subprocess.Popen(
            [
                sys.executable, "-m", "tests.benchmarks.traffic", url,
                headers["Authorization"], json.dumps({"instances": rows}), str(self._out),
            ],
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        self.started = time.perf_counter()
        self.answers: list[tuple[float, int, str]] = []

    def stop(self) -> None:
        self._process.terminate()
        assert self._process.wait(timeout=30) == 0
        self.stopped = time.perf_counter()
        for line in self._out.read_text().splitlines():
            at, status, version = line.split()
            self.answers.append((float(at), int(status), version))

    def first_answer(self, version: str, after: float) -> float:
        found = [at for at, _, served in self.answers if at >= after and served == version]
        assert found, f"live traffic never reached v{version}"
        return found[0]


class _RouteChanges:
    """Subscribes to the route channel; remembers when each announcement arrived."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self._pubsub = backends.route_store().pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(**{ROUTES_CHANNEL: self._heard})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.001, daemon=True)

    def _heard(self, message: dict) -> None:
        self.arrivals.append(time.perf_counter())

    def first_after(self, t0: float, timeout: float = 5.0) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            later = [t for t in self.arrivals if t >= t0]
            if later:
                return later[0]
            time.sleep(0.0005)
        raise AssertionError("no route change announced within 5 s of the rollback call")

    def close(self) -> None:
        self._thread.stop()
        self._thread.join(timeout=5)  # before closing the connection it reads from
        self._pubsub.close()


def test_cold_rollout_and_rollback_visibility(live_stack, tmp_path):
    gateway = live_stack.gateway
    with httpx.Client(timeout=60) as http:
        flow = churn_deployment(http, live_stack, rows=1, bake_seconds=1800)
        base, ops, key, rows = flow.base, flow.ops, flow.key, flow.rows
        cold = []
        for version in (1, 2):  # each: Bento not built yet, slot not running
            rollout = _roll_out(http, base, ops, version, live_stack)
            cold.append(_timeline(rollout))

        probe = httpx.Client(timeout=10)
        headers = {"Authorization": f"Bearer {key}"}

        def served_version() -> str:
            response = probe.post(
                f"{gateway}/d/churn-prod/predict", headers=headers, json={"instances": rows}
            )
            assert response.status_code == 200
            return response.headers["X-Modelyard-Version"]

        changes = _RouteChanges()
        traffic = _Traffic(f"{gateway}/d/churn-prod/predict", headers, rows, tmp_path)
        time.sleep(1.0)  # the traffic process is up and sending
        flips = []
        call_ms, caller_ms, announced_ms = [], [], []
        live = "2"
        for flip in range(20):
            target = "1" if live == "2" else "2"
            assert served_version() == live
            time.sleep(0.05 + 0.005 * flip)  # not in step with the traffic thread's requests
            t0 = time.perf_counter()
            response = http.post(f"{base}/deployments/churn-prod/rollback/", headers=ops, json={})
            t1 = time.perf_counter()
            assert response.status_code == 202, response.text
            assert response.json()["state"] == "baking", response.json()  # warm: switched
            while served_version() != target:
                pass
            t2 = time.perf_counter()
            call_ms.append((t1 - t0) * 1000)
            caller_ms.append((t2 - t0) * 1000)
            announced_ms.append((changes.first_after(t0) - t0) * 1000)
            flips.append((t0, target))
            live = target
        traffic.stop()
        changes.close()
        assert all(status == 200 for _, status, _ in traffic.answers)
        traffic_ms = [(traffic.first_answer(v, after=t0) - t0) * 1000 for t0, v in flips]
        probe.close()
        detail = http.get(f"{base}/deployments/churn-prod/", headers=ops).json()
        direct_url = next(s["url"] for s in detail["slots"] if s["color"] == detail["live_slot"])
        overhead = {}
        for concurrency in (1, 32):
            direct = measure(f"{direct_url}/predict", concurrency, {})
            via = measure(f"{gateway}/d/churn-prod/predict", concurrency, headers)
            assert direct.failed == 0 and via.failed == 0
            overhead[concurrency] = (direct, via)
    for concurrency, (direct, via) in overhead.items():
        print(
            f"real BentoML slot, c={concurrency:2}: direct p50/p99 {direct.p50_ms:.2f}/"
            f"{direct.p99_ms:.2f} ms {direct.rps:.0f} req/s; via gateway p50/p99 "
            f"{via.p50_ms:.2f}/{via.p99_ms:.2f} ms {via.rps:.0f} req/s; added p50 "
            f"{via.p50_ms - direct.p50_ms:.2f} ms, p99 {via.p99_ms - direct.p99_ms:.2f} ms; "
            f"throughput ratio {via.rps / direct.rps:.2f}"
        )
    for version, (total, parts) in zip((1, 2), cold, strict=True):
        print(
            f"\ncold rollout v{version} (approved version -> traffic switched, from the "
            f"rollout's step log): {total:.2f} s = "
            + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in parts)
        )

    def line(name: str, values: list[float]) -> str:
        return (
            f"  {name:<52} p50 {statistics.median(values):7.1f} ms   p99 "
            f"{_pct(values, 0.99):7.1f} ms   max {max(values):7.1f} ms"
        )

    print("rollback over 20 flips (target: call -> first request on the old version p99 <= 50 ms)")
    print(line("call start -> route change announced on Redis", announced_ms))
    print(line("call start -> first live request served by old version", traffic_ms))
    print(line("call start -> 202 (API call)", call_ms))
    print(line("call start -> caller's next request served by old", caller_ms))
    print("  per flip, traffic:", " ".join(f"{v:.0f}" for v in traffic_ms))
    print("  per flip, announced:", " ".join(f"{v:.0f}" for v in announced_ms))
    print("  per flip, 202:", " ".join(f"{v:.0f}" for v in call_ms))
    rate = len(traffic.answers) / (traffic.stopped - traffic.started)
    print(f"  (live traffic: {len(traffic.answers)} requests, {rate:.0f} req/s, none failed)")
