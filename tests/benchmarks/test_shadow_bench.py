"""What a shadow costs the live path: live p50/p99 at 32 connections with shadow off and with
every request mirrored (weight 10000), side by side in one run on one gateway.

Run: .venv/bin/python -m devstack test -- -m benchmark -s tests/benchmarks/test_shadow_bench.py
(prints the figures and the added ms; asserts only that no live request failed and that the
shadow really compared what it mirrored).

Two deployments on the same gateway and the same live server, one with a shadow route and one
without, measured alternately (ROUNDS times each, medians), so machine noise hits both alike.
Upstreams are the stand-in classifiers of the gateway tests (``--classify``: predictions and
probabilities, so the comparison parses and diffs both), once answering at once (the gateway's
own cost shows) and once burning 1.5 ms of CPU per request like a small scikit-learn model (the
shadow server's CPU then competes with live's on the same two cores, as a shadow slot on the
same machine would).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.benchmarks.test_gateway_overhead import KEY, Run, measure

pytestmark = pytest.mark.benchmark

ROUNDS = 3
SHADOW_VERSION = 2


@pytest.fixture(autouse=True)
def only_when_selected(request: pytest.FixtureRequest) -> None:
    markexpr = request.config.getoption("-m") or ""
    selected = "benchmark" in markexpr.replace("not benchmark", "")
    if not selected and os.environ.get("MODELYARD_BENCHMARKS") != "1":
        pytest.skip("benchmark: run with -m benchmark or MODELYARD_BENCHMARKS=1")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, object]]:
    import redis

    from gateway.routes import Arm
    from tests.gateway.support import (
        UPSTREAM_SCRIPT,
        Deployments,
        free_port,
        start_process,
        wait_http,
    )

    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
    client = redis.Redis.from_url(redis_url)
    deployments = Deployments(client)
    procs = []
    try:
        setup: dict[str, object] = {"client": client}
        for label, work_us in (("trivial", 0), ("model-like", 1500)):
            servers = {}
            for role, threshold in (("live", "0"), ("shadow", "1")):
                port = free_port()
                proc = start_process(
                    f"bench-{label}-{role}",
                    [
                        sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port),
                        "--version", "1" if role == "live" else str(SHADOW_VERSION),
                        "--slot", role, "--work-us", str(work_us), "--classify", threshold,
                    ],
                    port,
                    tmp_path,
                )  # fmt: skip
                procs.append(proc)
                wait_http(proc, "/readyz")
                servers[role] = proc
            plain = deployments.new_name(f"bench-{label}-off")
            deployments.publish(plain, servers["live"], keys=(KEY,))
            mirrored = deployments.new_name(f"bench-{label}-shadow")
            deployments.publish(
                mirrored,
                servers["live"],
                keys=(KEY,),
                shadow=Arm(
                    version=SHADOW_VERSION,
                    slot="green",
                    upstreams=(servers["shadow"].url,),
                    weight=10_000,
                ),
            )
            setup[f"{label}:off"] = plain
            setup[f"{label}:shadow"] = mirrored
        port = free_port()
        # Production cadences and queue settings: their cost is what is measured.
        gateway = start_process(
            "bench-gateway",
            [sys.executable, "-m", "gateway", "--port", str(port), "--redis-url", redis_url],
            port,
            tmp_path,
            env={"MODELYARD_GATEWAY_LOG_LEVEL": "warning"},
        )
        procs.append(gateway)
        wait_http(gateway, "/readyz")
        setup["gateway"] = gateway.url
        setup["gateway_pid"] = gateway.popen.pid
        yield setup
    finally:
        for proc in reversed(procs):
            proc.stop()
        deployments.cleanup()
        client.close()


def test_shadow_cost_on_live_latency(stack: dict[str, object]) -> None:
    import psutil

    from gateway.shadow_reports import shadow_read

    gateway = stack["gateway"]
    process = psutil.Process(int(stack["gateway_pid"]))  # type: ignore[call-overload]
    cpu_us: dict[tuple[str, str], list[float]] = {}
    headers = {"Authorization": f"Bearer {KEY}"}
    runs: dict[tuple[str, str], list[Run]] = {}
    began = time.time()
    for _ in range(ROUNDS):
        for label in ("trivial", "model-like"):
            for mode in ("off", "shadow"):
                url = f"{gateway}/d/{stack[f'{label}:{mode}']}/predict"
                cpu_before = sum(process.cpu_times()[:2])
                run = measure(url, 32, headers)
                # The warm-up run (a tenth of the requests) goes through the gateway too; a
                # mirrored request's shadow work may end just after the run: a small undercount.
                cpu = (sum(process.cpu_times()[:2]) - cpu_before) / (run.requests * 1.1) * 1e6
                assert run.failed == 0, f"{label} {mode}: {run.failed} live requests failed"
                runs.setdefault((label, mode), []).append(run)
                cpu_us.setdefault((label, mode), []).append(cpu)
    health = httpx.get(f"{gateway}/healthz").json()
    time.sleep(2.5)  # the last shadow flush
    lines = [
        "",
        f"live latency at 32 connections, shadow off vs shadow 100 % (medians of {ROUNDS} "
        f"alternating runs; {os.cpu_count()} CPUs)",
        f"{'upstream':<11} {'off p50/p99 ms':>16} {'shadow p50/p99 ms':>19} "
        f"{'added p50/p99 ms':>17} {'off rps':>8} {'shadow rps':>11} {'compared':>9} "
        f"{'dropped':>8} {'gw CPU µs/req off/shadow':>25}",
    ]
    for label in ("trivial", "model-like"):
        off, on = runs[(label, "off")], runs[(label, "shadow")]
        p50_off = statistics.median(r.p50_ms for r in off)
        p99_off = statistics.median(r.p99_ms for r in off)
        p50_on = statistics.median(r.p50_ms for r in on)
        p99_on = statistics.median(r.p99_ms for r in on)
        totals = shadow_read(
            stack["client"],  # type: ignore[arg-type]
            str(stack[f"{label}:shadow"]),
            SHADOW_VERSION,
            began - 60,
            time.time() + 60,
        )
        assert totals.compared > 0 and totals.errors == 0
        lines.append(
            f"{label:<11} {p50_off:>7.3f}/{p99_off:<8.3f} {p50_on:>8.3f}/{p99_on:<10.3f} "
            f"{p50_on - p50_off:>7.3f}/{p99_on - p99_off:<9.3f} "
            f"{statistics.median(r.rps for r in off):>8.0f} "
            f"{statistics.median(r.rps for r in on):>11.0f} {totals.compared:>9} "
            f"{totals.dropped:>8} "
            f"{statistics.median(cpu_us[(label, 'off')]):>12.0f}/"
            f"{statistics.median(cpu_us[(label, 'shadow')]):<12.0f}"
        )
    lines.append(
        f"shadow totals of the gateway: mirrored {health['shadow_mirrored']}, dropped "
        f"(queue full) {health['shadow_dropped_queue_full']}, errors {health['shadow_errors']}"
    )
    lines.append(
        "closed loop at 32 connections saturates the 2 cores: with a shadow the machine does a "
        "second model call per request (the shadow server's CPU) plus the gateway's mirror, so "
        "the added ms are mostly lost throughput; gw CPU = the gateway process's own share"
    )
    print("\n".join(lines))
