"""A load generator in its own process that records every request it sends.

``python tests/gateway/load_generator.py --url URL --key KEY --out FILE`` and either
``--rate R --duration S`` (open loop: a request every 1/R s whatever the answers, like real
traffic) or ``--concurrency C --requests N`` (closed loop: C clients, N requests in all).

Writes one JSON line per request to ``--out`` when done: ``sent`` and ``done`` (wall-clock
Unix time, so the test can line them up with what it did meanwhile), ``status`` (``null``
when no HTTP answer came), ``error`` (the client-side failure's class name, else ``null``),
``code`` (the error body's ``error.code``), ``retry_after`` and ``replica`` (the stand-in
upstream's ``X-Upstream-Slot``). Prints ``started <unix time>`` once the first request is sent.
A separate process, so the test's own work (killing, restarting) never delays the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp

BODY = json.dumps({"instances": [[1.0, 2.0]]})


async def _one(session: aiohttp.ClientSession, url: str, key: str) -> dict[str, Any]:
    record: dict[str, Any] = {"sent": time.time(), "status": None, "error": None, "code": None}
    record["retry_after"] = record["replica"] = None
    try:
        async with session.post(
            url,
            data=BODY,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        ) as response:
            payload = await response.read()
            record["status"] = response.status
            record["retry_after"] = response.headers.get("retry-after")
            record["replica"] = response.headers.get("x-upstream-slot")
            if response.status >= 400:
                try:
                    record["code"] = json.loads(payload)["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    record["code"] = "not-an-error-body"
    except (aiohttp.ClientError, TimeoutError) as exc:
        record["error"] = type(exc).__name__
    record["done"] = time.time()
    return record


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        print(f"started {time.time()}", flush=True)
        if args.rate:
            tasks = []
            interval = 1.0 / args.rate
            began = time.monotonic()
            for index in range(int(args.rate * args.duration)):
                # Paced against the start, not the previous request: no drift under load.
                await asyncio.sleep(max(0.0, began + index * interval - time.monotonic()))
                tasks.append(asyncio.create_task(_one(session, args.url, args.key)))
            return list(await asyncio.gather(*tasks))
        records: list[dict[str, Any]] = []
        remaining = args.requests

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                records.append(await _one(session, args.url, args.key))

        await asyncio.gather(*(client() for _ in range(args.concurrency)))
        return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    records = asyncio.run(run(args))
    with open(args.out, "w") as out:
        out.writelines(json.dumps(record) + "\n" for record in records)


if __name__ == "__main__":
    main()
