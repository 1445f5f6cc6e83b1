"""The benchmark's load generator, in a process of its own: closed loop, N keep-alive
connections, each posting the same body back to back for a fixed time; prints one JSON line.

Hand-written on asyncio + httptools (no ``wrk`` on these machines): an HTTP client library
(httpx, aiohttp) costs several times the CPU per request, and a generator that shares two
cores with the servers it measures must stay cheap. It reports its own CPU-seconds so a
reader can see it was not the bottleneck. Latency is measured per request, from writing the
request to the last byte of its answer; a connection error or a non-200 answer is an error.

Run: python -m tests.benchmarks.peers.load URL BODY_FILE CONNECTIONS SECONDS WARMUP [HEADER...]
(each HEADER as ``Name: value``).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import httptools


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request in flight at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection closed"))
        if not self.lost.done():
            self.lost.set_result(None)

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.done


async def _open(host: str, port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_Connection, host, port)
    return protocol


async def run(
    url: str,
    body: bytes,
    connections: int,
    seconds: float,
    warmup: float,
    headers: tuple[str, ...] = (),
) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = "".join(f"{header}\r\n" for header in headers)
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    measuring = False
    stop_at = 0.0

    async def client() -> None:
        connection = await _open(host, port)
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                status = await asyncio.wait_for(connection.send(request), timeout=30)
            except (ConnectionError, TimeoutError):
                status = 0
                connection.transport.close() if connection.transport else None
                connection = await _open(host, port)
            if measuring:
                latencies.append(time.perf_counter() - started)
                statuses[str(status)] += 1
        if connection.transport is not None:
            connection.transport.close()

    stop_at = time.perf_counter() + warmup + seconds
    tasks = [asyncio.create_task(client()) for _ in range(connections)]
    await asyncio.sleep(warmup)
    measuring = True
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    latencies.sort()
    count = len(latencies)

    def quantile(q: float) -> float:
        return latencies[min(count - 1, int(q * count))] * 1000 if count else float("nan")

    errors = count - statuses.get("200", 0)
    return {
        "requests": count,
        "seconds": elapsed,
        "rps": count / elapsed,
        "p50_ms": quantile(0.50),
        "p99_ms": quantile(0.99),
        "errors": errors,
        "statuses": dict(statuses),
        "generator_cpu": cpu / elapsed,  # cores the generator itself used
    }


def main(argv: list[str]) -> int:
    url, body_file, connections, seconds, warmup, *headers = argv
    with open(body_file, "rb") as fh:
        body = fh.read()
    result = asyncio.run(
        run(url, body, int(connections), float(seconds), float(warmup), tuple(headers))
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
