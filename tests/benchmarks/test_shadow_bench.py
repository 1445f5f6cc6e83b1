"""What a shadow costs the live path: live p50/p99 at 32 connections with shadow off and with
every request mirrored (weight 10000), side by side in one run.

Run: .venv/bin/python -m devstack test -- -m benchmark -s tests/benchmarks/test_shadow_bench.py
(prints the figures and the added ms; asserts only that no live request failed and that the
shadow really compared what it mirrored). BENCH_SHADOW_ROUNDS (default 3) sets the rounds: on a
machine shared with other work, more rounds steady the medians.

Two gateways on the same route table and the same servers: one as shipped (the shadow's work in
its idle-priority shadow process, ``gateway.shadow_process``) and one with
``MODELYARD_GATEWAY_SHADOW_PROCESS=0`` (the work on the gateway's own event loop, as before
that process existed). Through each, a deployment without a shadow and one with, all measured
alternately (ROUNDS times each, medians), so machine noise hits every mode alike.
Upstreams are the stand-in classifiers of the gateway tests (``--classify``: predictions and
probabilities, so the comparison parses and diffs both), once answering at once (the gateway's
own cost shows) and once burning 1.5 ms of CPU per request like a small scikit-learn model (the
shadow server's CPU then competes with live's on the same two cores, as a shadow slot on the
same machine would). The shadow server starts as the local runtime starts a shadow's slot: at
nice 19 in SCHED_IDLE (deployments.runtime.base.PRIORITY_LOW).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.benchmarks.test_gateway_overhead import DURATION_S, KEY, WARMUP_S, Run, measure

pytestmark = pytest.mark.benchmark

ROUNDS = int(os.environ.get("BENCH_SHADOW_ROUNDS") or 3)
SHADOW_VERSION = 2
LABELS = ("trivial", "model-like")
# Where the gateway does the shadow's work: its shadow process (as shipped) or its event loop.
WHERE = {"process": "1", "loop": "0"}


@pytest.fixture(autouse=True)
def only_when_selected(request: pytest.FixtureRequest) -> None:
    markexpr = request.config.getoption("-m") or ""
    selected = "benchmark" in markexpr.replace("not benchmark", "")
    if not selected and os.environ.get("MODELYARD_BENCHMARKS") != "1":
        pytest.skip("benchmark: run with -m benchmark or MODELYARD_BENCHMARKS=1")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, object]]:
    import redis

    from deployments.runtime.base import PRIORITY_LOW
    from deployments.runtime.local import _process_priority
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
                argv = [
                    sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port),
                    "--version", "1" if role == "live" else str(SHADOW_VERSION),
                    "--slot", role, "--work-us", str(work_us), "--classify", threshold,
                ]  # fmt: skip
                proc = start_process(f"bench-{label}-{role}", argv, port, tmp_path)
                procs.append(proc)
                wait_http(proc, "/readyz")
                if role == "shadow":
                    # As the local runtime lowers a shadow's slot once it is ready: nice 19,
                    # SCHED_IDLE (our session's autogroup is left alone).
                    _process_priority(proc.popen.pid, PRIORITY_LOW)
                servers[role] = proc
            plain = deployments.new_name(f"bench-{label}-off")
            deployments.publish(plain, servers["live"], keys=(KEY,))
            setup[f"{label}:off"] = plain
            # A shadow deployment per gateway: each one's comparisons are read apart.
            for where in WHERE:
                mirrored = deployments.new_name(f"bench-{label}-shadow-{where}")
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
                setup[f"{label}:shadow:{where}"] = mirrored
        for where, flag in WHERE.items():
            port = free_port()
            # Production cadences and queue settings: their cost is what is measured.
            gateway = start_process(
                f"bench-gateway-{where}",
                [sys.executable, "-m", "gateway", "--port", str(port), "--redis-url", redis_url],
                port,
                tmp_path,
                env={
                    "MODELYARD_GATEWAY_LOG_LEVEL": "warning",
                    "MODELYARD_GATEWAY_SHADOW_PROCESS": flag,
                },
            )
            procs.append(gateway)
            wait_http(gateway, "/readyz")
            setup[f"gateway:{where}"] = gateway
        yield setup
    finally:
        for proc in reversed(procs):
            proc.stop()
        deployments.cleanup()
        client.close()


def _cpu_s(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(process.cpu_times()[:2])
    return total


def test_shadow_cost_on_live_latency(stack: dict[str, object]) -> None:
    from gateway.shadow_reports import shadow_read

    headers = {"Authorization": f"Bearer {KEY}"}
    # The warm-up run goes through the gateway too: wrk's lasts WARMUP_S (DURATION_S measured),
    # the Python generator's is a tenth of the requests.
    warmed = 1 + WARMUP_S / DURATION_S if shutil.which("wrk") else 1.1
    processes: dict[str, tuple[psutil.Process, list[psutil.Process]]] = {}
    for where in WHERE:
        process = psutil.Process(stack[f"gateway:{where}"].popen.pid)  # type: ignore[attr-defined]
        helpers = [  # its shadow process (none on the event loop)
            child
            for child in process.children(recursive=True)
            if "gateway.shadow_process" in child.cmdline()
        ]
        processes[where] = (process, helpers)
    runs: dict[tuple[str, str, str], list[Run]] = {}
    cpu_us: dict[tuple[str, str, str], list[float]] = {}
    helper_us: dict[tuple[str, str, str], list[float]] = {}
    began = time.time()
    for _ in range(ROUNDS):
        for label in LABELS:
            for where in WHERE:
                gateway = stack[f"gateway:{where}"].url  # type: ignore[attr-defined]
                process, helpers = processes[where]
                for mode in ("off", "shadow"):
                    name = f"{label}:off" if mode == "off" else f"{label}:shadow:{where}"
                    deployment = stack[name]
                    cpu_before, helper_before = _cpu_s([process]), _cpu_s(helpers)
                    run = measure(f"{gateway}/d/{deployment}/predict", 32, headers)
                    # A mirrored request's shadow work may end just after the run: an undercount.
                    spent = run.requests * warmed
                    key = (label, where, mode)
                    cpu = (_cpu_s([process]) - cpu_before) / spent * 1e6
                    cpu_us.setdefault(key, []).append(cpu)
                    helper = (_cpu_s(helpers) - helper_before) / spent * 1e6
                    helper_us.setdefault(key, []).append(helper)
                    assert run.failed == 0, f"{key}: {run.failed} live requests failed"
                    runs.setdefault(key, []).append(run)
    health = {
        where: httpx.get(f"{stack[f'gateway:{where}'].url}/healthz").json()  # type: ignore[attr-defined]
        for where in WHERE
    }
    time.sleep(2.5)  # the last shadow flush
    lines = [
        "",
        f"live latency at 32 connections, shadow off vs shadow 100 % (medians of {ROUNDS} "
        f"alternating runs; {os.cpu_count()} CPUs); shadow work in the gateway's idle-priority "
        "process (as shipped) or on its event loop (SHADOW_PROCESS=0)",
        f"{'upstream':<11} {'shadow in':<8} {'off p50/p99 ms':>16} {'shadow p50/p99 ms':>19} "
        f"{'added p50/p99 ms':>17} {'off rps':>8} {'shadow rps':>11} {'compared':>9} "
        f"{'dropped':>8} {'gw CPU µs/req off/shadow':>25} {'shadow proc µs/req':>18} "
        f"{'timeouts':>8}",
    ]
    problems: list[str] = []
    for label in LABELS:
        for where in WHERE:
            off, on = runs[(label, where, "off")], runs[(label, where, "shadow")]
            p50_off = statistics.median(r.p50_ms for r in off)
            p99_off = statistics.median(r.p99_ms for r in off)
            p50_on = statistics.median(r.p50_ms for r in on)
            p99_on = statistics.median(r.p99_ms for r in on)
            totals = shadow_read(
                stack["client"],  # type: ignore[arg-type]
                str(stack[f"{label}:shadow:{where}"]),
                SHADOW_VERSION,
                began - 60,
                time.time() + 60,
            )
            problems += [] if totals.compared > 0 else [f"{label} {where}: nothing compared"]
            if totals.errors != totals.errors_timeout:
                problems.append(f"{label} {where}: shadow errors {totals.as_dict()}")
            lines.append(
                f"{label:<11} {where:<8} {p50_off:>7.3f}/{p99_off:<8.3f} "
                f"{p50_on:>8.3f}/{p99_on:<10.3f} "
                f"{p50_on - p50_off:>7.3f}/{p99_on - p99_off:<9.3f} "
                f"{statistics.median(r.rps for r in off):>8.0f} "
                f"{statistics.median(r.rps for r in on):>11.0f} {totals.compared:>9} "
                f"{totals.dropped:>8} "
                f"{statistics.median(cpu_us[(label, where, 'off')]):>12.0f}/"
                f"{statistics.median(cpu_us[(label, where, 'shadow')]):<12.0f} "
                f"{statistics.median(helper_us[(label, where, 'shadow')]):>18.0f} "
                f"{totals.errors_timeout:>8}"
            )
    for where, figures in health.items():
        lines.append(
            f"shadow totals of the gateway ({where}): mirrored {figures['shadow_mirrored']}, "
            f"dropped (queue full) {figures['shadow_dropped_queue_full']}, errors "
            f"{figures['shadow_errors']}"
        )
    lines.append(
        "closed loop at 32 connections saturates the 2 cores: on the event loop, a shadow adds a "
        "second model call per request (the shadow server's CPU) plus the gateway's mirror, so "
        "the added ms are mostly lost throughput; in the idle-priority process it mirrors only "
        "with the CPU live leaves, so under this load most mirrors are dropped (counted). gw "
        "CPU = the gateway process's own share, shadow proc = its shadow process's"
    )
    lines.append(
        "timeouts: mirrors the shadow did not answer within shadow_timeout_s; with a shadow "
        "server at idle priority on a saturated machine, that is starvation, not the candidate"
    )
    print("\n".join(lines))
    # Printed first: the figures are what a benchmark is for, even when one check fails.
    assert not problems, problems
