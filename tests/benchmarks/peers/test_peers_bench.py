"""``make bench-peers`` as a test: Modelyard against MLServer (tests/benchmarks/peers/bench.py).

Run: make bench-peers  (deselected in ``make test``; skipped here without the MLServer venv)
"""

from __future__ import annotations

import os

import pytest

from tests.benchmarks.peers import bench

pytestmark = pytest.mark.benchmark


def test_modelyard_against_mlserver_on_the_same_files() -> None:
    if not (bench.MLSERVER_VENV / "bin" / "mlserver").is_file():
        pytest.skip(f"no MLServer venv at {bench.MLSERVER_VENV}: run `make bench-peers`")
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
    results = bench.run(
        float(os.environ.get("BENCH_PEERS_SECONDS", "5")),
        int(os.environ.get("BENCH_PEERS_ROUNDS", "3")),
        redis_url,
    )
    print(bench.report(results))
