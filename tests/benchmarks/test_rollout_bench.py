"""Rollout benchmarks: cold rollout time, and rollback call → first answer of the old version.

Run: make bench  (prints figures; asserts only correctness, never speed)
"""

from __future__ import annotations

import statistics
import time

import httpx
import pytest

from tests.benchmarks.test_gateway_overhead import measure
from tests.deployments.flows import _roll_out, churn_deployment

pytestmark = [pytest.mark.benchmark, pytest.mark.stack]


def _pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_cold_rollout_and_rollback_visibility(live_stack):
    gateway = live_stack.gateway
    with httpx.Client(timeout=60) as http:
        flow = churn_deployment(http, live_stack, rows=1, bake_seconds=1800)
        base, ops, key, rows = flow.base, flow.ops, flow.key, flow.rows
        cold = []
        for version in (1, 2):  # each: Bento not built yet, slot not running
            started = time.monotonic()
            _roll_out(http, base, ops, version, live_stack)
            cold.append(time.monotonic() - started)

        probe = httpx.Client(timeout=10)
        headers = {"Authorization": f"Bearer {key}"}

        def served_version() -> str:
            response = probe.post(
                f"{gateway}/d/churn-prod/predict", headers=headers, json={"instances": rows}
            )
            assert response.status_code == 200
            return response.headers["X-Modelyard-Version"]

        call_ms, visible_ms = [], []
        live = "2"
        for _ in range(20):
            target = "1" if live == "2" else "2"
            t0 = time.perf_counter()
            response = http.post(f"{base}/deployments/churn-prod/rollback/", headers=ops, json={})
            t1 = time.perf_counter()
            assert response.status_code == 202, response.text
            while served_version() != target:
                pass
            t2 = time.perf_counter()
            call_ms.append((t1 - t0) * 1000)
            visible_ms.append((t2 - t0) * 1000)
            live = target
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
    print(
        f"\ncold rollout (approved version -> traffic switched, build + start + verify): "
        f"v1 {cold[0]:.1f} s, v2 {cold[1]:.1f} s"
    )
    print(
        f"rollback over 20 flips: API call p50 {statistics.median(call_ms):.1f} ms "
        f"p99 {_pct(call_ms, 0.99):.1f} ms; call -> first request served by the old version "
        f"p50 {statistics.median(visible_ms):.1f} ms p99 {_pct(visible_ms, 0.99):.1f} ms; "
        f"after the call returns: p50 "
        f"{statistics.median([v - c for v, c in zip(visible_ms, call_ms, strict=True)]):.2f} ms"
    )
