"""A load generator in its own process, counting every request: ``python -m tests.deployments.
loadgen URL KEY ROWS_JSON OUT_JSON [CLIENTS]``.

Closed-loop clients post to the gateway until SIGTERM (or 300 s); then it writes
``{"total": n, "by_status": {"200": n, ...}, "by_version": {"1": n, ...}, "errors":
{"ConnectError": n}}`` to OUT_JSON (by_version: the X-Modelyard-Version of each answer).
Its own process, so the test's work (sending tasks, polling routes) never slows the load and
a request counted here is one the gateway really answered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


class LoadProcess:
    """This load generator in its own process (for tests); ``stop()`` answers its counts."""

    def __init__(self, url: str, key: str, rows: list, out: Path, clients: int = 4) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.deployments.loadgen",
                *self._args(url, key, rows),
                str(clients),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        deadline = time.monotonic() + 30
        while not Path(f"{out}.started").exists():
            assert self.proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)

    def _args(self, url: str, key: str, rows: list) -> list[str]:
        return [url, key, json.dumps(rows), str(self.out)]

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        return json.loads(self.out.read_text())


def main() -> None:
    url, key, rows, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    clients = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + 300

    def run() -> None:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(timeout=30, trust_env=False) as http:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    answer = http.post(url, headers=headers, json={"instances": rows})
                    with lock:
                        statuses[str(answer.status_code)] += 1
                        versions[answer.headers.get("x-modelyard-version", "-")] += 1
                except httpx.HTTPError as exc:
                    with lock:
                        errors[type(exc).__name__] += 1

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    with open(out + ".started", "w") as fh:
        fh.write("1")
    for thread in threads:
        thread.join()
    with open(out, "w") as fh:
        total = sum(statuses.values()) + sum(errors.values())
        json.dump(
            {"total": total, "by_status": statuses, "by_version": versions, "errors": errors}, fh
        )


if __name__ == "__main__":
    main()
