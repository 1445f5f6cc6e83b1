"""Live traffic for the rollback benchmark, in a process of its own (threads of the test
process would share its GIL and skew its clocks): predictions sent back to back through the
gateway; each answer's arrival time (time.perf_counter, CLOCK_MONOTONIC on Linux: the same
clock as the test's), status and version, one line each, until SIGTERM.

Run: python -m tests.benchmarks.traffic <url> <authorization header> <json body> <out file>
"""

from __future__ import annotations

import signal
import sys
import time

import httpx


def main(url: str, authorization: str, body: str, out: str) -> None:
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    headers = {"Authorization": authorization, "Content-Type": "application/json"}
    with open(out, "w") as answers, httpx.Client(timeout=10) as client:
        while running:
            response = client.post(url, headers=headers, content=body)
            version = response.headers.get("X-Modelyard-Version", "-")
            answers.write(f"{time.perf_counter()} {response.status_code} {version}\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
