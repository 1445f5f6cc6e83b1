"""A small load generator in a process of its own: steady predictions, every one counted.

``python -m tests.devstack.loadgen URL KEY OUT [RATE]`` sends RATE requests a second (each with
a short timeout, so a dead gateway costs a refused connection, not a stall) until SIGTERM,
then writes every request's send time (epoch seconds) and outcome (status code, or the
error's class name) to OUT as JSON.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import httpx

BODY = {
    "instances": [
        {"tenure_months": 3, "monthly_charges": 90, "support_calls": 5, "contract_years": 0}
    ]
}


def main(url: str, key: str, out: str, rate: float = 20.0) -> None:
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    results: list[tuple[float, str]] = []
    interval = 1 / rate
    # A new connection per request: a restarted gateway is reached as a new client would.
    with httpx.Client(timeout=2, headers={"Authorization": f"Bearer {key}"}) as http:
        while not stopping:
            sent = time.time()
            try:
                outcome = str(
                    http.post(url, json=BODY, headers={"Connection": "close"}).status_code
                )
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            results.append((sent, outcome))
            time.sleep(max(0.0, interval - (time.time() - sent)))
    with open(out, "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(float(a) for a in sys.argv[4:5]))
