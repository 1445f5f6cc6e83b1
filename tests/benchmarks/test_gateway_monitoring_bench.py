"""What monitoring costs the gateway: metrics and sampling on (the defaults) against off.

Run: .venv/bin/python -m devstack test -- -m benchmark -s \
     tests/benchmarks/test_gateway_monitoring_bench.py
(prints figures; asserts only that nothing failed and that each gateway did what it was told)

Gateway processes run at once in front of the same upstreams, each with a route of its
own to them:

- ``on``: the defaults (per-request metrics, inputs/outputs sampled at the default rate and
  per-deployment cap);
- ``off``: ``MODELYARD_GATEWAY_METRICS=0`` and ``MODELYARD_GATEWAY_SAMPLE_RATE=0``;
- ``metrics``: metrics on, sampling off (splits the cost between the two; CPU column only).

Upstreams, both real processes: a BentoML slot serving a small scikit-learn pipeline (what a
deployment really sends to), and the synthetic trivial server of tests/gateway/upstream_app.py
(answers at once: the worst case, where the gateway's own work is all there is). ``wrk`` drives
each pair at c=1 and c=32, on/off runs alternating so drift of a shared, noisy machine falls
on both sides alike, and each gateway's CPU per request is read from /proc around every run.
Target: on/off throughput >= 0.95.

A second test asks the same in one process: the gateway's ASGI callable driven directly
(no HTTP server, no load generator), CPU time per request for on / metrics only / off, and a
cProfile of the monitoring functions, which says what in gateway/metrics.py and
gateway/sampling.py the difference is made of.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest
import redis

from gateway.app import GatewaySettings
from tests.batch.conftest import batch_bentos  # noqa: F401 - fixture
from tests.benchmarks.test_gateway_overhead import KEY, Run, only_when_selected, run_wrk  # noqa: F401
from tests.gateway.support import (
    UPSTREAM_SCRIPT,
    Deployments,
    free_port,
    start_process,
    wait_http,
)

pytestmark = pytest.mark.benchmark

ROUNDS = 5  # on/off pairs per cell, alternating which goes first
WARMUP_S = 1
DURATION_S = 4
OFF_ENV = {
    "MODELYARD_GATEWAY_METRICS": "0",
    "MODELYARD_GATEWAY_SAMPLE_RATE": "0",
    "MODELYARD_GATEWAY_PREDICTION_LOG": "0",
}
# A third gateway with metrics but no sampling splits the cost between the two.
# A fourth, "control", is a second "off" process: how far two identical gateways differ
# on this machine is the noise floor of the on/off comparison.
MODES = {
    "on": {},
    "metrics": {"MODELYARD_GATEWAY_SAMPLE_RATE": "0", "MODELYARD_GATEWAY_PREDICTION_LOG": "0"},
    # Everything on but the prediction log (inference ids and the log): on/nolog is its cost.
    "nolog": {"MODELYARD_GATEWAY_PREDICTION_LOG": "0"},
    "off": OFF_ENV,
    "control": OFF_ENV,
}
# In one process only: the default sample rate without the per-second cap (what "on" cost
# before the cap), on the "on" gateway's route.
UNCAPPED = {"MODELYARD_GATEWAY_SAMPLE_MAX_PER_S": "0"}
IN_PROCESS_MODES = {**MODES, "uncapped": UNCAPPED}


@pytest.fixture
def monitoring_pair(tmp_path: Path, bento_dirs, batch_bentos) -> Iterator[dict]:  # noqa: F811
    from deployments.runtime.local import LocalProcessBackend

    if "metrics" not in {f.name for f in fields(GatewaySettings)}:
        pytest.fail("gateway has no MODELYARD_GATEWAY_METRICS setting yet (GatewaySettings)")
    if not shutil.which("wrk"):
        pytest.fail("wrk is not installed (/usr/bin/wrk)")
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
    client = redis.Redis.from_url(redis_url)
    deployments = Deployments(client)
    backend = LocalProcessBackend(home=bento_dirs["home"], state_dir=tmp_path / "slots")
    procs = []
    try:
        upstreams: dict[str, str] = {}
        port = free_port()
        trivial = start_process(
            "bench-upstream-trivial",
            [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port), "--work-us", "0"],
            port,
            tmp_path,
        )
        procs.append(trivial)
        wait_http(trivial, "/readyz")
        upstreams["trivial"] = trivial.url
        slot = backend.slot_start(slot_key="bench-blue", bento_tag=batch_bentos[1].bento_tag)
        upstreams["bentoml sklearn"] = slot.url

        gateways, names = {}, {}
        for mode, env in MODES.items():
            port = free_port()
            gateway = start_process(
                f"bench-gateway-{mode}",
                [sys.executable, "-m", "gateway", "--port", str(port), "--redis-url", redis_url],
                port,
                tmp_path,
                env={"MODELYARD_GATEWAY_LOG_LEVEL": "warning", **env},
            )
            procs.append(gateway)
            wait_http(gateway, "/readyz")
            gateways[mode] = gateway.url
        procs_by_name = {p.name: p for p in procs}
        for label, url in upstreams.items():
            for mode in gateways:
                name = deployments.new_name(f"mbench-{mode}")
                deployments.publish(name, url, keys=(KEY,))
                names[(label, mode)] = name
        yield {
            "client": client,
            "urls": {
                (label, mode): f"{gateways[mode]}/d/{names[(label, mode)]}/predict"
                for (label, mode) in names
            },
            "names": names,
            "upstreams": list(upstreams),
            "pids": {mode: procs_by_name[f"bench-gateway-{mode}"].popen.pid for mode in MODES},
        }
    finally:
        for proc in reversed(procs):
            proc.stop()
        backend.slot_stop(slot_key="bench-blue")
        deployments.cleanup()
        client.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (uvicorn workers, if any)."""
    import psutil

    main = psutil.Process(pid)
    total = 0.0
    for proc in [main, *main.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def _measure(url: str, concurrency: int, gateway_pid: int) -> tuple[Run, float]:
    """One wrk run after a warm-up, and the gateway's CPU µs per request during it: CPU per
    request barely moves with the load other processes put on the machine, throughput does."""
    headers = {"Authorization": f"Bearer {KEY}"}
    run_wrk(url, concurrency, WARMUP_S, headers)
    cpu = _cpu_seconds(gateway_pid)
    run = run_wrk(url, concurrency, DURATION_S, headers)
    cpu = _cpu_seconds(gateway_pid) - cpu
    return run, cpu / max(1.0, run.rps * DURATION_S) * 1e6


def test_gateway_throughput_with_monitoring_on_and_off(monitoring_pair) -> None:
    urls, client = monitoring_pair["urls"], monitoring_pair["client"]
    pids = monitoring_pair["pids"]
    rows = []
    for label in monitoring_pair["upstreams"]:
        for concurrency in (1, 32):
            runs: dict[str, list[Run]] = {mode: [] for mode in MODES}
            cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
            for round_ in range(ROUNDS):
                order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    run, cpu_us = _measure(urls[(label, mode)], concurrency, pids[mode])
                    assert run.failed == 0, (label, mode, concurrency, run)
                    runs[mode].append(run)
                    cpu[mode].append(cpu_us)
            rows.append((label, concurrency, runs, cpu))

    # Each gateway did what it was told: the "on" routes have metrics and samples in Redis,
    # "metrics" routes metrics only, "off" routes neither (metrics flush every 2 s, samples
    # every 0.5 s by default).
    time.sleep(3)
    for label in monitoring_pair["upstreams"]:
        on, metrics, off = (
            monitoring_pair["names"][(label, mode)] for mode in ("on", "metrics", "off")
        )
        for name, has_metrics, has_samples in ((on, 1, 1), (metrics, 1, 0), (off, 0, 0)):
            found = list(client.scan_iter(f"modelyard:metrics:*:{name}:*", count=1000))
            assert bool(found) == bool(has_metrics), name
            assert client.exists(f"modelyard:samples:{name}") == has_samples, name

    lines = [
        "",
        f"gateway with monitoring on (defaults: metrics, sample rate "
        f"{GatewaySettings().sample_rate}) vs off (metrics=0, sample rate 0); wrk, "
        f"{ROUNDS} alternating {DURATION_S} s runs each, medians; {os.cpu_count()} CPUs (shared)",
        f"{'upstream':<16} {'c':>3} {'on rps':>9} {'off rps':>9} {'on/off':>7} {'ctl/off':>7} "
        f"{'paired':>7} {'ctl':>7} "
        f"{'on p50/p99 ms':>15} {'off p50/p99 ms':>15} {'CPU µs/req on/metrics/off/ctl':>30} "
        f"{'off/on':>6}  runs on | off (rps)",
    ]
    for label, concurrency, runs, cpu in rows:
        cpu_on, cpu_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
        cpu_metrics = statistics.median(cpu["metrics"])
        control_rps = statistics.median(r.rps for r in runs["control"])
        cpu_control = statistics.median(cpu["control"])
        on_rps = statistics.median(r.rps for r in runs["on"])
        off_rps = statistics.median(r.rps for r in runs["off"])
        on_p50 = statistics.median(r.p50_ms for r in runs["on"])
        on_p99 = statistics.median(r.p99_ms for r in runs["on"])
        off_p50 = statistics.median(r.p50_ms for r in runs["off"])
        off_p99 = statistics.median(r.p99_ms for r in runs["off"])
        # Each round's on and off runs are back to back: their ratio, round by round, cancels
        # the drift of a shared machine that the medians of each side keep.
        paired = statistics.median(a.rps / b.rps for a, b in zip(runs["on"], runs["off"]))
        paired_ctl = statistics.median(a.rps / b.rps for a, b in zip(runs["control"], runs["off"]))
        each = " ".join(f"{r.rps:.0f}" for r in runs["on"]) + " | "
        each += " ".join(f"{r.rps:.0f}" for r in runs["off"])
        lines.append(
            f"{label:<16} {concurrency:>3} {on_rps:>9.0f} {off_rps:>9.0f} "
            f"{on_rps / off_rps:>7.3f} {control_rps / off_rps:>7.3f} "
            f"{paired:>7.3f} {paired_ctl:>7.3f} "
            f"{on_p50:>7.3f}/{on_p99:<7.3f} {off_p50:>7.3f}/{off_p99:<7.3f} "
            f"{cpu_on:>10.0f}/{cpu_metrics:.0f}/{cpu_off:.0f}/{cpu_control:<9.0f} "
            f"{cpu_off / cpu_on:>6.3f}  {each}"
        )
    lines.append("prediction log (ids + log) on vs off, everything else on; target >= 0.95:")
    for label, concurrency, runs, cpu in rows:
        paired_log = statistics.median(a.rps / b.rps for a, b in zip(runs["on"], runs["nolog"]))
        cpu_log = statistics.median(cpu["nolog"]) / statistics.median(cpu["on"])
        lines.append(
            f"  {label:<16} c={concurrency:<3} on/nolog rps (paired) {paired_log:.3f}, "
            f"CPU nolog/on {cpu_log:.3f}"
        )
    lines.append(
        "target: on/off >= 0.95. paired = median over rounds of on/off within a round (ctl: "
        "the same for control/off). CPU off/on = the throughput ratio a gateway bound by its own "
        "CPU would show (the steadier figure on a shared machine). ctl/off = a second 'off' "
        "gateway against the first: the noise floor."
    )
    print("\n".join(lines), file=sys.stderr)


# --- the same question in one process: CPU per request, and where it goes ----------------

IN_PROCESS_REQUESTS = 4_000
IN_PROCESS_CONCURRENCY = 32


async def _drive(app, path: str, requests: int, concurrency: int) -> int:
    """``requests`` POSTs through the gateway's ASGI callable (no HTTP server, no load
    generator: only the gateway's own code and its upstream client run in this process)."""
    import asyncio

    from tests.benchmarks.test_gateway_overhead import BODY

    body = BODY.encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {KEY}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    failed = 0
    remaining = requests

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def one() -> None:
        nonlocal failed, remaining
        while remaining > 0:
            remaining -= 1
            status = 0

            async def send(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]

            await app(dict(scope), receive, send)
            failed += status != 200

    await asyncio.gather(*(one() for _ in range(concurrency)))
    return failed


def test_gateway_monitoring_cpu_per_request_in_process(monitoring_pair) -> None:
    """CPU of the gateway's own code per request, metrics and sampling on / metrics only /
    off, measured in this process (process time, so other load on the machine counts far
    less than in the wrk runs), plus a profile of where the monitoring part goes."""
    import asyncio
    import cProfile
    import pstats

    from gateway.app import Gateway

    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
    names = monitoring_pair["names"]

    def route_of(mode: str) -> str:
        return mode if mode in MODES else "on"  # the uncapped gateway uses the "on" route

    async def main() -> tuple[dict[str, list[float]], pstats.Stats]:
        apps = {}
        for mode, env in IN_PROCESS_MODES.items():
            settings = GatewaySettings.from_env({"REDIS_URL": redis_url, **env})
            apps[mode] = Gateway(settings)
            await apps[mode].startup()
        cpu: dict[str, list[float]] = {mode: [] for mode in IN_PROCESS_MODES}
        try:
            for mode, app in apps.items():  # warm connections and code paths
                await _drive(app, f"/d/{names[('trivial', route_of(mode))]}/predict", 500, 8)
            for round_ in range(ROUNDS):
                order = list(IN_PROCESS_MODES)
                if round_ % 2:
                    order.reverse()
                for mode in order:
                    started = time.process_time()
                    failed = await _drive(
                        apps[mode],
                        f"/d/{names[('trivial', route_of(mode))]}/predict",
                        IN_PROCESS_REQUESTS,
                        IN_PROCESS_CONCURRENCY,
                    )
                    # Let the flush loops run their share (samples every 0.5 s).
                    await asyncio.sleep(0.6)
                    cpu[mode].append((time.process_time() - started) / IN_PROCESS_REQUESTS * 1e6)
                    assert failed == 0, mode
            profiler = cProfile.Profile()
            profiler.enable()
            await _drive(
                apps["on"],
                f"/d/{names[('trivial', 'on')]}/predict",
                IN_PROCESS_REQUESTS,
                IN_PROCESS_CONCURRENCY,
            )
            await asyncio.sleep(0.6)
            profiler.disable()
        finally:
            for app in apps.values():
                await app.shutdown()
        return cpu, pstats.Stats(profiler)

    cpu, stats = asyncio.run(main())
    on, metrics, off, uncapped = (
        statistics.median(cpu[mode]) for mode in ("on", "metrics", "off", "uncapped")
    )
    lines = [
        "",
        f"gateway code in one process, trivial upstream, {IN_PROCESS_REQUESTS:,} requests x "
        f"{ROUNDS} alternating rounds, {IN_PROCESS_CONCURRENCY} concurrent; CPU µs per request "
        "(medians; includes this process's share of each side's flush loops)",
        f"  on {on:.1f}   metrics only {metrics:.1f}   off {off:.1f}   "
        f"=> monitoring costs {on - off:.1f} µs/request (metrics {metrics - off:.1f}, "
        f"sampling {on - metrics:.1f}); CPU-bound throughput ratio on/off ~ {off / on:.3f}",
        f"  without the per-second sample cap: {uncapped:.1f} µs/request, on/off ~ "
        f"{off / uncapped:.3f}",
        "  rounds on | metrics | off | uncapped: "
        + " | ".join(" ".join(f"{v:.0f}" for v in cpu[mode]) for mode in IN_PROCESS_MODES),
        "  profile of the 'on' gateway, monitoring functions (cumulative s over "
        f"{IN_PROCESS_REQUESTS:,} requests):",
    ]
    wanted = ("metrics.py", "sampling.py")
    rows = [
        (key, value)
        for key, value in stats.stats.items()  # type: ignore[attr-defined]
        if key[0].endswith(wanted)
    ]
    rows.sort(key=lambda item: item[1][3], reverse=True)
    for (filename, _line, function), (_cc, calls, _tt, cumulative, _callers) in rows[:8]:
        lines.append(
            f"    {Path(filename).name}:{function:<28} calls {calls:>7,} "
            f"cumulative {cumulative:.4f} s = {cumulative / IN_PROCESS_REQUESTS * 1e6:.1f} µs/req"
        )
    total = sum(
        value[2]
        for key, value in stats.stats.items()  # type: ignore[attr-defined]
    )
    lines.append(f"    (whole profile: {total:.3f} s of own time, profiler overhead included)")
    print("\n".join(lines), file=sys.stderr)


# --- the sample flush alone: new (one script call per batch, no JSON round trip) vs old -----

FLUSH_SAMPLES = 5_000


def _old_flush_per_sample(redis_url: str, key: str, samples: list[dict], max_rows: int) -> float:
    """The flush as it was before (the baseline): parse the answer, re-encode both bodies,
    one XADD per sample in a pipeline of 64. Kept here only to measure against."""
    import asyncio
    import json

    import redis.asyncio as aioredis

    from gateway.sampling import truncate_rows

    async def run() -> None:
        aclient = aioredis.from_url(redis_url)
        try:
            for start in range(0, len(samples), 64):
                pipe = aclient.pipeline(transaction=False)
                for item in samples[start : start + 64]:
                    outputs = json.loads(item["outputs"])
                    fields = {
                        "version": "1",
                        "api": "predict",
                        "ts": "1.000",
                        "rows": str(item["rows"]),
                        "inputs": json.dumps(
                            truncate_rows(item["inputs"], max_rows), separators=(",", ":")
                        ),
                        "outputs": json.dumps(
                            truncate_rows(outputs, max_rows), separators=(",", ":")
                        ),
                    }
                    pipe.xadd(key, fields, maxlen=10_000, approximate=True)
                await pipe.execute()
        finally:
            await aclient.aclose()

    started = time.process_time()
    asyncio.run(run())
    return (time.process_time() - started) / len(samples) * 1e6


def test_sample_flush_cpu_per_sample_new_vs_old() -> None:
    """CPU µs per sample (this process: encoding + redis-py) of writing samples to the stream:
    the old per-sample XADD with a JSON round trip against the batched script, on its
    skip-parse path (nothing to cut: the benchmark's 2-row body) and its cut path (max_rows 1
    forces both bodies through json). Also the request path's ``offer``."""
    import asyncio
    import json

    import redis.asyncio as aioredis

    from gateway.sampling import PayloadSampler, samples_key
    from tests.benchmarks.test_gateway_overhead import BODY

    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
    client = redis.Redis.from_url(redis_url)
    raw = BODY.encode()
    answer = json.dumps({"predictions": [0, 1]}).encode()
    keys = {name: f"flushbench-{name}-{os.getpid()}" for name in ("old", "skip", "cut")}
    samples = [{"inputs": json.loads(raw), "rows": 2, "outputs": answer}] * FLUSH_SAMPLES

    def new_flush(name: str, max_rows: int) -> tuple[float, float]:
        sampler = PayloadSampler(
            rate=1.0, max_rows=max_rows, buffer_size=FLUSH_SAMPLES, stream_maxlen=10_000
        )
        started = time.process_time()
        for item in samples:
            sampler.offer(
                deployment=keys[name],
                version=1,
                api="predict",
                rows=2,
                inputs=item["inputs"],
                raw_inputs=raw,
                outputs=answer,
            )
        offer_us = (time.process_time() - started) / FLUSH_SAMPLES * 1e6

        async def run() -> int:
            aclient = aioredis.from_url(redis_url)
            try:
                return await sampler.flush(aclient)
            finally:
                await aclient.aclose()

        started = time.process_time()
        written = asyncio.run(run())
        flush_us = (time.process_time() - started) / FLUSH_SAMPLES * 1e6
        assert written == FLUSH_SAMPLES, name
        return offer_us, flush_us

    try:
        figures: dict[str, list[float]] = {"old": [], "skip": [], "cut": [], "offer": []}
        for _ in range(ROUNDS):
            client.delete(*(samples_key(k) for k in keys.values()), keys["old"])
            figures["old"].append(_old_flush_per_sample(redis_url, keys["old"], samples, 100))
            offer_us, skip_us = new_flush("skip", 100)
            figures["skip"].append(skip_us)
            figures["offer"].append(offer_us)
            figures["cut"].append(new_flush("cut", 1)[1])
        assert client.xlen(keys["old"]) == FLUSH_SAMPLES
        # Same stream contract on both paths: the reader parses, and gets the same values.
        [(_, skip)] = client.xrange(samples_key(keys["skip"]), count=1)
        [(_, cut)] = client.xrange(samples_key(keys["cut"]), count=1)
        assert (
            json.loads(skip[b"inputs"])["instances"][:1] == json.loads(cut[b"inputs"])["instances"]
        )
    finally:
        client.delete(*(samples_key(k) for k in keys.values()), keys["old"])
        client.close()
    old, skip, cut, offer_us = (
        statistics.median(figures[k]) for k in ("old", "skip", "cut", "offer")
    )
    rate = GatewaySettings().sample_rate
    lines = [
        "",
        f"sample flush, {FLUSH_SAMPLES:,} samples x {ROUNDS} rounds, CPU µs per sample "
        "(this process, medians; noisy shared machine):",
        f"  old (JSON round trip + one XADD each, pipeline of 64) {old:.1f}",
        f"  new, skip-parse path (nothing to cut)                 {skip:.1f}   "
        f"= {skip / old:.2f}x old",
        f"  new, cut path (max_rows 1: both bodies re-encoded)    {cut:.1f}   "
        f"= {cut / old:.2f}x old",
        f"  offer() on the request path                           {offer_us:.2f}",
        f"  => at the default sample rate {rate}: flush ~{old * rate:.1f} -> ~{skip * rate:.1f}"
        " µs per request",
    ]
    print("\n".join(lines), file=sys.stderr)
