"""What a generated service does around its model: one success body, one error body.

BentoML answers requests it cannot parse with bodies of its own (pydantic's validation
list, ``[{"error": ...}]`` for BadInput, a bare 500 text); ``ErrorBodyMiddleware`` rewrites
every such answer of a model endpoint into the one error body, so a client sees the same
shape whatever the framework or the failure. Pure ASGI; besides the standard library only
pydantic-core, which BentoML depends on (answers are encoded with it, see body_bytes).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
from collections import Counter, deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pydantic_core

from .contract import (
    ContractError,
    Predictor,
    error_body,
    feature_names,
    response,
    rows_to_columns,
)

PREDICT_PATH = "/predict"


Outcome = tuple[int, dict[str, Any]]  # an answer's HTTP status and body

# The slot's batching settings reach the service in BentoML's own config vocabulary,
# ``services.<name>.batching.{max_batch_size,max_latency_ms}`` in BENTOML_CONFIG_OPTIONS
# (set by deployments.integrations.bentoml.serve_environment from the deployment): BentoML
# checks them against its schema at start-up, and the generated service reads them here at
# import (BentoML 1.4 itself applies no service-level batching config). So one Bento per
# model version serves every deployment's settings. Unset (a batch child, a hand-run
# `bentoml serve`) the deployment defaults apply.
CONFIG_OPTIONS_ENV = "BENTOML_CONFIG_OPTIONS"
DEFAULT_BATCH_MAX_SIZE = 32
DEFAULT_BATCH_MAX_LATENCY_MS = 10


@dataclass(frozen=True)
class BatchSettings:
    """At most ``max_size`` rows per model call. ``max_latency_ms`` is carried but not
    applied: the ``Batcher`` never waits to fill a batch (see there)."""

    max_size: int = DEFAULT_BATCH_MAX_SIZE
    max_latency_ms: int = DEFAULT_BATCH_MAX_LATENCY_MS

    @staticmethod
    def config_options(service_name: str, max_size: int, max_latency_ms: int) -> list[str]:
        """The BENTOML_CONFIG_OPTIONS entries that carry these settings."""
        prefix = f"services.{service_name}.batching"
        return [
            f"{prefix}.max_batch_size={int(max_size)}",
            f"{prefix}.max_latency_ms={int(max_latency_ms)}",
        ]

    @classmethod
    def from_environment(
        cls, service_name: str, environ: Mapping[str, str] | None = None
    ) -> BatchSettings:
        environ = os.environ if environ is None else environ
        prefix = f"services.{service_name}.batching."
        found: dict[str, int] = {}
        for entry in environ.get(CONFIG_OPTIONS_ENV, "").split():
            key, _, value = entry.partition("=")
            if key.startswith(prefix):
                found[key[len(prefix) :]] = int(value)
        size = found.get("max_batch_size", DEFAULT_BATCH_MAX_SIZE)
        latency = found.get("max_latency_ms", DEFAULT_BATCH_MAX_LATENCY_MS)
        if size < 1 or latency < 1:
            raise ValueError(f"{prefix}max_batch_size and max_latency_ms must be >= 1")
        return cls(size, latency)


class Batcher:
    """Predicts concurrent requests together, on one model thread, never on the event loop.

    Hand-written rather than BentoML's adaptive batching, because that measured worse on
    every count here (1.4.39, 1-row requests): reached from /predict through the service's
    own client (the documented way for a non-batchable API, or a second service through
    ``bentoml.depends``) a request cost 6x the CPU, its dispatcher waited for batch-mates
    even at one connection (p50 12 ms against 2 ms), and its latency bound shed load as 503s
    at 32 connections. This one never waits: a batch starts the moment the model thread is
    free and takes every request queued meanwhile, up to ``max_rows`` rows (a request of
    more rows is a batch of its own), so a lone client waits for nothing and under load the
    batches grow with the queue.
    """

    def __init__(self, predict_many: Any, max_rows: int) -> None:
        self.predict_many = predict_many  # list of requests -> list of outcomes, in order
        self.max_rows = max(1, int(max_rows))
        self._queue: deque[tuple[dict[str, Any], asyncio.Future[Any]]] = deque()
        self._draining = False
        self._drainer: asyncio.Task[None] | None = None
        # One thread: the model is CPU-bound, a second thread would only contend for the GIL.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelyard-predict")
        self.batch_sizes: Counter[int] = Counter()  # requests per model call, for /metrics

    async def submit(self, request: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((request, future))
        if not self._draining:
            self._draining = True
            # Kept: the loop holds only a weak reference to a task.
            self._drainer = loop.create_task(self._drain())
        return await future

    def _next_batch(self) -> list[tuple[dict[str, Any], asyncio.Future[Any]]]:
        batch = [self._queue.popleft()]
        rows = _row_count(batch[0][0])
        while self._queue and rows + _row_count(self._queue[0][0]) <= self.max_rows:
            rows += _row_count(self._queue[0][0])
            batch.append(self._queue.popleft())
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch = self._next_batch()
                self.batch_sizes[len(batch)] += 1
                try:
                    outcomes = await loop.run_in_executor(
                        self._thread, self.predict_many, [request for request, _ in batch]
                    )
                except Exception as exc:  # not the clients' fault: each gets it (a 500)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():  # a client that went away cancelled its future
                        future.set_result(outcome)
        finally:
            self._draining = False


def _row_count(request: dict[str, Any]) -> int:
    instances = request.get("instances")
    return len(instances) if isinstance(instances, list) else 1


# Container allocations between young collections once the service is up (default 700).
GC_YOUNG_THRESHOLD = 10_000


def settle_gc() -> None:
    """Keep the cyclic garbage collector off a model server's answers.

    A 1,000-row request parses into a thousand lists (or dicts), so at the default
    threshold young collections ran mid-request, promoted the live rows, and soon forced a
    full collection walking every object of the imported libraries and the model (~200,000:
    120-200 ms each, seen as a 200-470 ms p99 at one connection; at 32 connections 40% of
    the time). Frozen, those objects are never walked again; the higher threshold lets one
    request's rows die by reference count before a collection sees them (measured at 32
    connections: collector time 2,014 ms per 5 s -> 96 ms).
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def body_bytes(body: dict[str, Any]) -> bytes:
    """An answer's body as compact UTF-8 JSON: the service returns it pre-encoded.

    Encoded by pydantic-core (installed with BentoML, so in every Bento): the same JSON
    values as ``json.dumps``, which BentoML's serde would have used, in a tenth of the time
    (a 1,000-row answer's 2,000 probabilities took ~2.5 ms of the slot's CPU with
    ``json.dumps``, ~0.2 ms here). The bytes differ only in spelling: no spaces after ``,``
    and ``:``, non-ASCII as UTF-8 rather than ``\\u`` escapes, exponents as ``1e-8``.
    """
    return pydantic_core.to_json(body)


def answer(
    predictor: Predictor, instances: Any, probabilities: Any, model_version: int, ctx: Any
) -> dict[str, Any]:
    """The body of a /predict request; errors become the one error body with a 4xx."""
    status, body = request_outcome(predictor, instances, probabilities, model_version)
    ctx.response.status_code = status
    return body


def request_outcome(
    predictor: Predictor, instances: Any, probabilities: Any, model_version: int
) -> Outcome:
    """One request predicted on its own: (200, success body) or (400, the error body).

    Anything else the model raises is not the client's fault and propagates (a 500).
    """
    try:
        _check_flag(probabilities)
        return 200, predictor.respond(instances, probabilities, model_version)
    except Exception as exc:
        return _client_error(exc)


def batch_outcomes(
    predictor: Predictor, requests: list[dict[str, Any]], model_version: int
) -> list[Outcome]:
    """Several requests' outcomes, in order, from one model call where they allow it.

    Each request's rows are checked by the contract on their own, so a bad request is
    answered its 400 and never fails its batch-mates; the checked rows of the others are
    joined end to end and predicted in one call (probabilities in the same pass when any
    of them asks). If the model refuses the joined rows, every request is predicted on its
    own again, so only the request with the rows it refuses gets ``model_rejected_input``.
    """
    outcomes: list[Outcome | None] = [None] * len(requests)
    checked: list[tuple[int, dict[str, Any], bool]] = []
    for index, request in enumerate(requests):
        try:
            flag = request.get("probabilities", True)
            _check_flag(flag)
            columns = rows_to_columns(predictor.contract, request.get("instances"))
        except ContractError as exc:
            outcomes[index] = _client_error(exc)
            continue
        checked.append((index, columns, flag))
    if checked:
        try:
            for index, outcome in _predict_joined(predictor, checked, model_version):
                outcomes[index] = outcome
        except Exception as exc:
            if _client_error(exc, reraise=False) is None:
                raise
            for index, _, flag in checked:  # find the guilty request: each on its own
                outcomes[index] = request_outcome(
                    predictor, requests[index].get("instances"), flag, model_version
                )
    return [outcome for outcome in outcomes if outcome is not None]


def _predict_joined(
    predictor: Predictor,
    checked: list[tuple[int, dict[str, Any], bool]],
    model_version: int,
) -> list[tuple[int, Outcome]]:
    contract = predictor.contract
    joined: dict[str, list[Any]] = {name: [] for name in feature_names(contract)}
    bounds, offset = [], 0
    for _, columns, _ in checked:
        rows = len(next(iter(columns.values())))
        if len(checked) > 1:  # one request's columns are used as they are
            for name, values in columns.items():
                joined[name].extend(values)
        bounds.append((offset, offset + rows))
        offset += rows
    if len(checked) == 1:
        joined = checked[0][1]
    want = any(flag for _, _, flag in checked)
    predictions, proba = predictor.predict_columns(joined, want)
    return [
        (
            index,
            (
                200,
                response(
                    contract,
                    predictions[start:stop],
                    proba[start:stop] if flag and proba is not None else None,
                    model_version,
                ),
            ),
        )
        for (index, _, flag), (start, stop) in zip(checked, bounds, strict=True)
    ]


def _check_flag(probabilities: Any) -> None:
    if not isinstance(probabilities, bool):
        raise ContractError(
            "invalid_request", "'probabilities' must be true or false", field="probabilities"
        )


def _client_error(exc: Exception, *, reraise: bool = True) -> Any:
    """The 400 outcome of an exception that is the request's fault; others are re-raised
    (or, with ``reraise=False``, answered None)."""
    if isinstance(exc, ContractError):
        return 400, exc.body()
    if isinstance(exc, ValueError | TypeError):
        # The model refused values the contract let through (e.g. an unknown category).
        text = str(exc).strip().splitlines()
        return 400, error_body(
            "model_rejected_input",
            f"the model cannot predict on these rows: {text[0] if text else type(exc).__name__}",
            {"exception": type(exc).__name__},
        )
    if type(exc).__module__.startswith("onnxruntime"):  # its shape/type errors
        return 400, error_body(
            "model_rejected_input", f"the model cannot predict on these rows: {exc}", {}
        )
    if reraise:
        raise exc
    return None


class ErrorBodyMiddleware:
    """Rewrite any error answer of a model endpoint that is not the one error body."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path") != PREDICT_PATH:
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    held["pass"] = True
                    await send(message)
                else:
                    held["start"] = message
                return
            if held.get("pass") or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                await _send_error(send, held["start"], b"".join(chunks))

        await self.app(scope, receive, capture)


async def _send_error(send: Any, start: dict[str, Any], raw: bytes) -> None:
    status = int(start["status"])
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
        body = _rewrite(status, body, raw)
        if status >= 500:
            status = 500
        elif status not in (400, 401, 403, 404, 405, 413, 415, 422, 429):
            status = 400
    payload = json.dumps(body).encode()
    headers = [
        (k, v)
        for k, v in start.get("headers", [])
        if k.lower() not in (b"content-length", b"content-type")
    ]
    headers += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _rewrite(status: int, body: Any, raw: bytes) -> dict[str, Any]:
    if status >= 500:
        return error_body("internal", "the model service failed on this request", {})
    if isinstance(body, dict) and isinstance(body.get("detail"), list):  # pydantic
        problems = [
            {"field": ".".join(str(p) for p in item.get("loc", [])), "problem": item.get("msg")}
            for item in body["detail"]
            if isinstance(item, dict)
        ]
        first = problems[0] if problems else {"field": "", "problem": "invalid request"}
        return error_body(
            "invalid_request",
            f"the request body is not valid: {first['field'] or 'body'}: {first['problem']}",
            {"problems": problems},
        )
    if isinstance(body, list) and body and isinstance(body[0], dict):
        text = str(body[0].get("error", ""))
    elif isinstance(body, dict):
        text = str(body.get("error", ""))
    else:
        text = raw.decode("utf-8", "replace")[:500]
    return error_body("invalid_request", text or "the request could not be handled", {})
