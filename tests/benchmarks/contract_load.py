"""Closed-loop load for the single-pass benchmark, in a process of its own: ``connections``
clients post the same body back to back until ``requests`` answers or ``seconds`` passed;
prints one JSON line (answers, seconds, requests/s, statuses).

Run: python -m tests.benchmarks.contract_load <url> <json body> <connections> <requests> <seconds>
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import httpx


async def run(url: str, body: str, connections: int, requests: int, seconds: float) -> dict:
    statuses: Counter[int] = Counter()
    sent = 0
    started = time.perf_counter()
    deadline = started + seconds
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one_client() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                response = await client.post(url, content=body, headers=headers)
                statuses[response.status_code] += 1

        await asyncio.gather(*(one_client() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    answers = sum(statuses.values())
    return {"answers": answers, "seconds": elapsed, "rps": answers / elapsed, "statuses": statuses}


if __name__ == "__main__":
    url, body, connections, requests, seconds = sys.argv[1:]
    result = asyncio.run(run(url, body, int(connections), int(requests), float(seconds)))
    print(json.dumps(result))
