"""A tiny model server that stands in for a BentoML slot in the gateway tests.

Run as a real process: ``python tests/gateway/upstream_app.py --port P --version 2``.

Endpoints (all answer JSON):

- ``POST /predict``: ``{"instances": [[x, ...], ...]}`` -> ``{"predictions": [version * sum(row)],
  "version": V, "slot": S}``; so a test can tell from the answer which server computed it.
- ``POST /slow?ms=N&tag=T``: the same after sleeping N ms (default 200).
- ``GET /inflight?tag=T``: ``{"slow": n}``, the /slow requests tagged T being answered now (a
  test knows its request has reached this server, instead of guessing with a sleep).
- ``POST /fail``: 500 with an error body.
- ``POST /reject``: 422 with an error body (a model refusing its input).
- ``POST /echo``: the request headers, query string and body size it received.
- ``GET /readyz``: 200.

``--work-us N`` burns N µs of CPU per predict, to imitate a real model's cost in benchmarks.
``--delay-ms N`` sleeps N ms in every predict (a replica slower than its peers, without CPU).
``--classify T`` makes predict a binary classifier: for a row of sum s, ``p = sigmoid(s - T)``,
``predictions`` = ``[int(p > 0.5)]`` and ``probabilities`` = ``[[1 - p, p]]``; two servers with
different T disagree on the rows between the two thresholds (the shadow tests count them).
``--fail-predict`` makes every predict answer 500 (a candidate that crashes on every request).
``--cut-answers`` makes every predict send its headers and half its body, then drop the
connection (a replica dying mid-answer, while the process itself stays up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def build_app(
    *,
    version: int,
    slot: str,
    work_us: int = 0,
    delay_ms: int = 0,
    cut_answers: bool = False,
    classify: float | None = None,
    fail_predict: bool = False,
) -> Callable[..., Awaitable[None]]:
    """Return a raw ASGI app (no framework, so the upstream itself stays cheap to call)."""
    slow_inflight: dict[str, int] = {}
    received = {"predict": 0}  # /predict requests that reached this server (GET /received)

    async def respond(send: Send, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-upstream-slot", slot.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def predict(raw: bytes) -> dict[str, Any]:
        payload = json.loads(raw or b"{}")
        rows = payload.get("instances", [])
        if work_us:
            deadline = time.perf_counter() + work_us / 1e6
            while time.perf_counter() < deadline:
                pass
        if classify is not None:
            probabilities = [
                1 / (1 + math.exp(-(sum(float(x) for x in row) - classify))) for row in rows
            ]
            return {
                "predictions": [int(p > 0.5) for p in probabilities],
                "probabilities": [[1 - p, p] for p in probabilities],
                "version": version,
                "slot": slot,
            }
        return {
            "predictions": [version * sum(float(x) for x in row) for row in rows],
            "version": version,
            "slot": slot,
        }

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        if path == "/readyz":
            await respond(send, 200, {"ready": True, "version": version})
        elif path == "/predict":
            received["predict"] += 1
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            if fail_predict:
                await respond(send, 500, {"error": "model crashed", "version": version})
                return
            if cut_answers:
                body = json.dumps(predict(raw)).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": body[: len(body) // 2]})
                # Raising after the answer started: uvicorn can only drop the connection.
                raise RuntimeError("cut mid-answer on purpose")
            await respond(send, 200, predict(raw))
        elif path == "/slow":
            query = _query(scope)
            tag = query.get("tag", "")
            slow_inflight[tag] = slow_inflight.get(tag, 0) + 1
            try:
                await asyncio.sleep(int(query.get("ms", "200")) / 1000)
            finally:
                slow_inflight[tag] -= 1
            await respond(send, 200, predict(raw))
        elif path == "/received":
            await respond(send, 200, received)
        elif path == "/inflight":
            await respond(send, 200, {"slow": slow_inflight.get(_query(scope).get("tag", ""), 0)})
        elif path == "/fail":
            await respond(send, 500, {"error": "model crashed", "version": version})
        elif path == "/reject":
            await respond(send, 422, {"error": "bad input", "version": version})
        elif path == "/echo":
            await respond(
                send,
                200,
                {
                    "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                    "query_string": scope["query_string"].decode(),
                    "body_size": len(raw),
                    "version": version,
                },
            )
        else:
            await respond(send, 404, {"error": f"no route {path}"})

    return app


def _query(scope: Scope) -> dict[str, str]:
    return dict(part.split("=", 1) for part in scope["query_string"].decode().split("&") if part)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--slot", default="blue")
    parser.add_argument("--work-us", type=int, default=0)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--cut-answers", action="store_true")
    parser.add_argument("--classify", type=float, default=None)
    parser.add_argument("--fail-predict", action="store_true")
    args = parser.parse_args()
    uvicorn.run(
        build_app(
            version=args.version,
            slot=args.slot,
            work_us=args.work_us,
            delay_ms=args.delay_ms,
            cut_answers=args.cut_answers,
            classify=args.classify,
            fail_predict=args.fail_predict,
        ),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
