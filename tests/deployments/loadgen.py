"""A load generator in its own process, counting every request: ``python -m tests.deployments.
loadgen URL KEY ROWS_JSON OUT_JSON [CLIENTS]``.

Closed-loop clients post to the gateway until SIGTERM (or 300 s); then it writes
``{"total": n, "by_status": {"200": n, ...}, "errors": {"ConnectError": n}}`` to OUT_JSON.
Its own process, so the test's work (sending tasks, polling routes) never slows the load and
a request counted here is one the gateway really answered.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections import Counter

import httpx


def main() -> None:
    url, key, rows, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    clients = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + 300

    def run() -> None:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(timeout=30, trust_env=False) as http:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    status = str(
                        http.post(url, headers=headers, json={"instances": rows}).status_code
                    )
                    with lock:
                        statuses[status] += 1
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
        json.dump({"total": total, "by_status": statuses, "errors": errors}, fh)


if __name__ == "__main__":
    main()
