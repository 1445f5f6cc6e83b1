"""Validation time of a ~50 MB model: this checkout against another (by default /work/main).

Runs the same steps the validation task runs on the file (format detection, static scan,
sandboxed load + smoke prediction) in each checkout's own venv, on the same file, and prints
both and their ratio. Nothing is asserted about speed.

Run: python -m devstack test -- -m benchmark -s tests/benchmarks/test_loading_bench.py
(MODELYARD_BENCH_BASELINE=<checkout> to compare against another one).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import joblib
import numpy as np
import pytest

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[2]
BASELINE = Path(os.environ.get("MODELYARD_BENCH_BASELINE", "/work/main"))
REPEATS = 3

# Run inside each checkout: only registry.validation (plain Python, no Django).
_DRIVER = """
import json, sys, time
from pathlib import Path
from registry.validation import (
    SandboxLimits, detect_format, sandbox_load_and_predict, scan_artifact)
path = Path(sys.argv[1])
rows = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    fmt = detect_format(path, "sklearn")
    t1 = time.perf_counter()
    scan = scan_artifact(path, fmt)
    t2 = time.perf_counter()
    load = sandbox_load_and_predict(
        artifact_path=path, fmt=fmt, sample_path=None,
        limits=SandboxLimits(timeout_seconds=300, memory_bytes=4 * 1024**3),
    )
    t3 = time.perf_counter()
    assert scan.safe and load.ok, (scan.findings, load.error)
    rows.append({"detect": t1 - t0, "scan": t2 - t1, "sandbox": t3 - t2, "total": t3 - t0,
                 "child_load": load.load_seconds})
print(json.dumps(rows))
"""


def _forest_file(folder: Path, fmt: str) -> Path:
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 8))
    y = (x[:, 0] + rng.normal(size=20_000) > 0).astype(int)
    forest = RandomForestClassifier(n_estimators=25, n_jobs=1, random_state=0).fit(x, y)
    # 100 distinct trees (deep copies: pickle's memo would store shared ones once).
    forest.estimators_ = [copy.deepcopy(t) for t in forest.estimators_ for _ in range(4)]
    forest.n_estimators = len(forest.estimators_)
    path = folder / f"forest.{fmt}"
    if fmt == "joblib":
        joblib.dump(forest, path)
    else:
        import pickle

        path.write_bytes(pickle.dumps(forest, protocol=5))
    return path


def _measure(checkout: Path, path: Path) -> list[dict[str, float]]:
    result = subprocess.run(
        [str(checkout / ".venv/bin/python"), "-c", _DRIVER, str(path), str(REPEATS)],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _best(rows: list[dict[str, float]], key: str) -> float:
    return min(row[key] for row in rows)


@pytest.mark.parametrize("fmt", ["joblib", "pickle"])
def test_validation_time_of_a_50mb_forest_before_and_after(tmp_path, fmt):
    if not (BASELINE / ".venv/bin/python").exists():
        pytest.skip(f"no baseline checkout with a venv at {BASELINE}")
    path = _forest_file(tmp_path, fmt)
    size_mb = path.stat().st_size / 1e6
    before = _measure(BASELINE, path)
    after = _measure(ROOT, path)
    print(f"\n{fmt} forest of 100 trees, {size_mb:.1f} MB, best of {REPEATS}:")
    for key in ("detect", "scan", "sandbox", "child_load", "total"):
        b, a = _best(before, key), _best(after, key)
        print(f"  {key:10} before {b:7.3f} s  after {a:7.3f} s  after/before {a / b:5.2f}")
