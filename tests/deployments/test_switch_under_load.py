"""Twenty traffic switches (rollouts and rollbacks) under constant load drop no request."""

from __future__ import annotations

import statistics
import threading
import time

import httpx
import pytest

from tests.deployments.flows import _roll_out, churn_deployment

pytestmark = pytest.mark.stack


class Load:
    """Closed-loop clients hammering the gateway until stopped (bounded in time)."""

    def __init__(self, url: str, key: str, rows: list, clients: int = 8, max_seconds: float = 300):
        self.url, self.key, self.rows = url, key, rows
        self.stop = threading.Event()
        self.results: list[tuple[float, int, str]] = []  # (time, status, version)
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                try:
                    response = http.post(self.url, headers=headers, json={"instances": self.rows})
                    status, version = (
                        response.status_code,
                        response.headers.get("X-Modelyard-Version", ""),
                    )
                except httpx.HTTPError as exc:
                    status, version = 0, type(exc).__name__
                with self.lock:
                    self.results.append((time.monotonic(), status, version))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def test_twenty_switches_under_load_fail_no_request(live_stack):
    gateway = live_stack.gateway
    with httpx.Client(timeout=60) as http:
        flow = churn_deployment(http, live_stack, bake_seconds=1800)
        base, ops, key, rows = flow.base, flow.ops, flow.key, flow.rows
        _roll_out(http, base, ops, 1, live_stack)
        _roll_out(http, base, ops, 2, live_stack)

        flips: dict[str, list[float]] = {"rollback": [], "rollout": []}
        live = 2
        with Load(f"{gateway}/d/churn-prod/predict", key, rows) as load:
            time.sleep(1)
            for n in range(20):
                target = 1 if live == 2 else 2
                started = time.monotonic()
                if n % 2 == 0:  # rollback: flips to the warm slot in the request itself
                    response = http.post(
                        f"{base}/deployments/churn-prod/rollback/",
                        headers=ops,
                        json={"reason": f"flip {n}"},
                    )
                    assert response.status_code == 202, response.text
                else:  # a full rollout (build reused, warm slot reused) of the other version
                    _roll_out(http, base, ops, target, live_stack)
                seen_from = len(load.results)
                while True:  # when does the load first see the other version?
                    with load.lock:
                        fresh = load.results[seen_from:]
                    seen_from += len(fresh)
                    seen = [t for t, _, v in fresh if t > started and v == str(target)]
                    if seen:
                        kind = "rollback" if n % 2 == 0 else "rollout"
                        flips[kind].append((seen[0] - started) * 1000)
                        break
                    assert time.monotonic() - started < 60, f"switch {n} never became visible"
                    time.sleep(0.002)
                live = target
                time.sleep(0.3)
            time.sleep(1)
    statuses = [s for _, s, _ in load.results]
    failed = [r for r in load.results if r[1] != 200]
    duration = load.results[-1][0] - load.results[0][0]
    print(
        f"\n20 switches under load: {len(statuses)} requests in {duration:.1f} s "
        f"({len(statuses) / duration:.0f} req/s held), {len(failed)} failed; "
        + "visible after: "
        + "; ".join(
            f"{kind} p50 {statistics.median(v):.1f} ms, max {max(v):.1f} ms"
            for kind, v in flips.items()
        )
    )
    assert len(statuses) > 500
    assert failed == []
