"""The prediction gateway: a raw ASGI app that routes ``/d/{deployment}/{api}`` to a live slot.

Behaviour
---------
========================================  ======  ==============================================
request                                   status  body / headers
========================================  ======  ==============================================
``POST /d/{deployment}/{api}``, all good  (up)    the upstream's status, body and headers, plus
                                                  ``X-Modelyard-Deployment``, ``-Version``,
                                                  ``-Inference-Id`` (also in the body; logged,
                                                  see gateway.prediction_log)
path not ``/d/{deployment}/{api}``        404     ``not_found``
no key / key not in ``key_hashes`` /      401     ``missing_key`` / ``invalid_key`` +
deployment not in the route table                 ``WWW-Authenticate: Bearer``
method other than POST                    405     ``method_not_allowed`` + ``Allow: POST``
route table not loaded yet (start-up,     503     ``routes_not_loaded`` + ``Retry-After`` (any
Redis unreachable since)                          name: never the 401 of a valid key)
route state ``draining`` or ``none``      503     ``deployment_unavailable`` + ``Retry-After``
body over ``max_body_bytes``              413     ``payload_too_large``
Content-Type given and not JSON           415     ``unsupported_media_type`` (see gateway.inputs)
body not JSON / not a JSON object         400     ``invalid_json`` / ``body_not_object``
client's ``X-Modelyard-Inference-Id`` bad 400     ``invalid_inference_id``
JSON nested ~1,000 deep / holding \u0000  400     ``json_too_deep`` / ``nul_character``
headers/body slower than their deadline  408     ``request_timeout`` (gateway.server)
connections over ``max_connections``      503     ``too_many_connections`` (gateway.server)
every replica refused, reset or dropped   503     ``upstream_unavailable`` + ``Retry-After``;
the connection (or is left out after                each failed replica is ejected, repaired
failing; see gateway.balancer)                    and the request retried on the next one
upstream slower than ``upstream_timeout`` 504     ``upstream_timeout``
client gone before its body arrived       499     ``client_disconnected`` (for the metrics only)
a bug in the gateway                      500     ``internal_error`` (logged with traceback)
``X-Modelyard-Arm`` not ``live|canary``  400     ``invalid_arm`` naming it (``canary`` too on a
(or ``canary`` and the route has none)            route without one; see gateway.arms)
``GET /healthz``                          200     process alive, with counters
``GET /readyz``                           200/503 Redis answers a PING and routes were loaded
``GET /metrics``                          200/401 Prometheus text (401 ``invalid_metrics_token``
                                                  when ``MODELYARD_GATEWAY_METRICS_TOKEN`` is set
                                                  and not presented as a Bearer token)
========================================  ======  ==============================================

Every error body is ``{"error": {"code": ..., "message": ..., "details": ...}}``. The key comes
from ``Authorization: Bearer <key>`` or ``X-Modelyard-Key: <key>``; it is never forwarded.

Deployment names are not disclosed: until a valid key of the deployment is presented, a known
and an unknown name get the same 401 (same body, same headers: no ``X-Modelyard-Deployment``),
and the key is checked before anything else about the request (method, Content-Length) that
could answer differently for the two. The code only says whether a key was presented at all.

Why a raw ASGI callable and a client of our own: measured here on one hop to a trivial upstream
(2 cores, wrk, uvicorn without uvloop/httptools; p50 at 1 client, req/s at 32 clients): raw
ASGI + aiohttp 380 µs / 5,000 req/s, Starlette + aiohttp 401 µs / 4,500 req/s, raw ASGI + httpx
900 µs / 350 req/s. Three routes need no framework; httpx's pool collapsed under concurrency.
Profiled later (CPU per request with uvloop + httptools), aiohttp's ClientSession was about half
of the gateway's own CPU per request, so the upstream hop now goes through
:mod:`gateway.upstream` (keep-alive connections + the httptools parser); see there.

``GET /metrics`` answers the Prometheus text format (see :mod:`gateway.prometheus`): requests,
errors, rows and a latency histogram per deployment and version, computed at scrape time from
the recorder's in-memory cells, so the request path pays nothing for it.
``MODELYARD_GATEWAY_METRICS=0`` turns per-request metric recording off altogether (no Redis
buffers, no roll-ups, no per-deployment series on ``/metrics``), for benchmarks and for
operators who measure elsewhere.

Replicas: a live route lists every ready replica (``upstreams``); each request goes to the one
with the fewest requests outstanding from this gateway (:mod:`gateway.balancer`). A replica
whose connection is refused, reset or cut is ejected until a readiness probe or a republished
route brings it back, the platform is asked to repair it at once (:mod:`gateway.repairs`), and
the request -- predictions are idempotent -- goes to the next replica within its deadline. Every
``inflight_report_interval_s`` the mean and peak in flight per replica go to Redis for the
autoscaler (:mod:`gateway.replica_reports`) and to ``/metrics``.

Progressive delivery (issue 19): a route may hold a weighted ``canary`` and a mirrored
``shadow`` besides its live arm, and a ``sticky`` request key (``gateway.routes``). Which arm
answers is :func:`gateway.arms.arm_choose`; every answer says it in ``X-Modelyard-Arm`` with
the answering arm's ``X-Modelyard-Version``, metrics, samples and the prediction log are
recorded under that version (and arm). Each arm is balanced, ejected and retried over its own
replicas; a canary with no replica left falls back to live (counted). Mirroring happens after
the live answer is sent (:mod:`gateway.shadow`).

Route table: held in memory (a dict swapped entry by entry); one task subscribes to
``modelyard:routes:changed``, re-reads one deployment per message and the whole hash every
``routes_reread_interval_s``. Doing both in ONE task keeps updates ordered, so an older full
read can never overwrite a newer single read. A request reads the route once, at its start, and
finishes on that upstream even if the route flips meanwhile (the old slot stays warm).
While Redis is unreachable the table stays as it was and requests keep being served. A full
re-read that finds NO routes while the table holds some is taken for a Redis that lost its data
and ignored (logged); announced removals still apply, so only an unannounced removal of the very
last route goes unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.arms import ARM_CANARY, ARM_HEADER, ARM_LIVE, ArmRefused, arm_choose, sticky_field_key
from gateway.balancer import Balancer, Replica
from gateway.inputs import InputRefused, json_body_parse, media_type_check
from gateway.metrics import MetricsRecorder
from gateway.prediction_log import (
    INFERENCE_ID_HEADER,
    PredictionLogger,
    inference_id_check,
    inference_id_new,
)
from gateway.prometheus import PROMETHEUS_CONTENT_TYPE, prometheus_text
from gateway.repairs import RepairRequests
from gateway.replica_reports import inflight_report_async
from gateway.routes import (
    DEPLOYMENT_NAME_RE,
    ROUTES_CHANNEL,
    ROUTES_KEY,
    Route,
    route_read_async,
    routes_read_all_async,
)
from gateway.sampling import PayloadSampler
from gateway.settings import GatewaySettings
from gateway.shadow import ShadowJob, ShadowMirror
from gateway.shadow_process import ShadowRelay
from gateway.upstream import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamTimeout,
)

__all__ = ["Gateway", "GatewaySettings", "create_app", "create_app_from_env", "error_body"]

logger = logging.getLogger("modelyard.gateway")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

API_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Request headers passed on to the model server; everything else (the deployment key above
# all) stays at the gateway. Content-Type is checked (JSON only) and always sent as JSON.
FORWARDED_REQUEST_HEADERS = frozenset({b"accept", b"x-request-id"})
# Failures of the version itself (see gateway.metrics, ``errors``): what error-rate guards see.
VERSION_ERROR_CODES = frozenset({"upstream_timeout", "upstream_unavailable"})
# Upstream response headers that describe the upstream hop, not the answer.
HOP_RESPONSE_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"content-length",
        b"server",
        b"date",
        b"x-modelyard-version",
        b"x-modelyard-deployment",
        b"x-modelyard-arm",
    }
)
JSON_HEADERS = [(b"content-type", b"application/json")]


# --- responses ---------------------------------------------------------------------------


class _Reject(Exception):
    """A request the gateway answers itself (rows read so far travel along for metrics)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        rows: int = 0,
        anonymous: bool = False,
        arm: str = ARM_LIVE,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or []
        self.rows = rows
        # Sent without the X-Modelyard-Deployment/-Version headers (answers before the key
        # is accepted must not tell whether the deployment exists).
        self.anonymous = anonymous
        self.arm = arm  # the arm that failed (metrics go to its version)


def error_body(code: str, message: str, details: Any = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "details": details}}).encode()


def _with_inference_id(
    body: bytes, headers: list[tuple[bytes, bytes]], inference_id: bytes
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The answer with its inference id: always as a header, and in the body when the body is
    a plain JSON object (spliced before its closing brace: no parse, no re-encoding; an
    encoded body -- gzip -- keeps its bytes)."""
    headers = [*headers, (INFERENCE_ID_HEADER, inference_id)]
    if any(name == b"content-encoding" for name, _ in headers):
        return body, headers
    end = body.rstrip()
    if not (end.endswith(b"}") and body.lstrip().startswith(b"{")):
        return body, headers
    inner = end[:-1].rstrip()
    separator = b"" if inner.endswith(b"{") else b","
    return b"".join((inner, separator, b'"inference_id":"', inference_id, b'"}')), headers


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- deployment keys ---------------------------------------------------------------------


def _presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key from ``Authorization: Bearer`` or ``X-Modelyard-Key`` (the last one wins)."""
    key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                key = credentials.strip()
        elif name == b"x-modelyard-key" and value.strip():
            key = value.strip()
    return key


# Stands in for a deployment's hashes when the name is unknown (matches no key).
_NO_KEY_HASHES = ("0" * 64,)


def _key_matches(key: bytes, key_hashes: tuple[str, ...] | list[str]) -> bool:
    # The raw header bytes: for a UTF-8 key this equals deployment_key_hash(key).
    presented = hashlib.sha256(key).hexdigest()
    valid = False
    for key_hash in key_hashes:
        # Compare against every hash, no early exit: timing must not tell which matched.
        valid |= hmac.compare_digest(presented, key_hash)
    return valid


def _key_refusal(deployment: str, key: bytes | None) -> _Reject:
    """The one answer to a request without a valid key, whether ``deployment`` exists or not."""
    return _Reject(
        401,
        "missing_key" if key is None else "invalid_key",
        f"missing or invalid deployment key for {deployment!r}: send a key of this deployment "
        "as 'Authorization: Bearer <key>' or 'X-Modelyard-Key: <key>'",
        {"deployment": deployment},
        headers=[(b"www-authenticate", b"Bearer")],
        anonymous=True,
    )


def _arm_identity(route: Route, arm: str) -> tuple[int, str]:
    """The version and slot of ``arm`` (live or canary) of ``route``."""
    if arm == ARM_CANARY and route.canary is not None:
        return route.canary.version, route.canary.slot
    return route.version, route.slot


def _failure_reason(exc: UpstreamError) -> str:
    """The repair request's ``reason``: what the connection to the replica did."""
    if isinstance(exc, UpstreamConnectTimeout):
        return "connect_timeout"
    if isinstance(exc, UpstreamConnectError):
        return "connection_refused" if "Refused" in str(exc) else "connect_failed"
    if isinstance(exc, UpstreamDisconnected):
        return "closed_mid_answer" if exc.mid_answer else "closed_before_answer"
    if isinstance(exc, UpstreamProtocolError):
        return "invalid_http_answer"
    return "upstream_error"


# --- the app -----------------------------------------------------------------------------


class Gateway:
    """The ASGI application; one instance per process, its state shared by all requests."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.routes: dict[str, Route] = {}
        self.routes_loaded = False
        self.redis_ok = False
        self.metrics = MetricsRecorder(max_pending_cells=settings.metrics_max_pending_cells)
        self.sampler = PayloadSampler(
            rate=settings.sample_rate,
            max_rows=settings.sample_max_rows,
            buffer_size=settings.sample_buffer_size,
            stream_maxlen=settings.sample_stream_maxlen,
            max_per_s=settings.sample_max_per_s,
        )
        self.prediction_log = (
            PredictionLogger(
                full_per_s=settings.log_full_per_s,
                sample_rate=settings.log_sample_rate,
                buffer_size=max(1, settings.log_buffer_size),
            )
            if settings.prediction_log
            else None
        )
        self.unknown_deployment_requests = 0
        self.redis: aioredis.Redis | None = None
        self.upstreams: UpstreamPool | None = None
        self.balancer = Balancer(
            probe_initial_s=settings.eject_probe_initial_s,
            probe_max_s=settings.eject_probe_max_s,
            probe_timeout_s=max(settings.upstream_connect_timeout_s, 0.5),
            on_probe_failed=self._probe_failed,
        )
        self.repairs: RepairRequests | None = None
        self.shadow: ShadowMirror | ShadowRelay = (
            ShadowRelay(settings=settings)
            if settings.shadow_process
            else ShadowMirror(
                balancer=self.balancer,
                queue_size=settings.shadow_queue_size,
                workers=settings.shadow_workers,
                timeout_s=settings.shadow_timeout_s,
            )
        )
        # Canary requests answered by live because no canary replica could take them.
        self.canary_fallbacks = 0
        # Per process (each --workers process counts its own requests): host:pid.
        self.gateway_id = f"{socket.gethostname()}:{os.getpid()}"
        # The last interval's (mean, peak) in flight per (deployment, replica URL), for /metrics.
        self.inflight: dict[tuple[str, str], tuple[float, int]] = {}
        self.upstream_failures = 0  # connections to a replica that failed (each retried or 503)
        self.upstream_retries = 0  # requests sent again to another replica
        self._retry_after = str(settings.retry_after_s).encode()
        self._record_metrics = settings.metrics
        self._kept_routes_warned = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ASGI entry point -------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith("/d/"):
                await self._predict(scope, receive, send)
            elif path == "/healthz":
                await _send(send, 200, self._health_body(), JSON_HEADERS)
            elif path == "/readyz":
                await self._readyz(send)
            elif path == "/metrics":
                await self._metrics(scope, send)
            else:
                await _send(
                    send,
                    404,
                    error_body(
                        "not_found",
                        f"no such path {path!r}; predictions go to POST /d/{{deployment}}/{{api}}",
                    ),
                    JSON_HEADERS,
                )
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    # prediction path --------------------------------------------------------------------

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        parts = scope["path"][3:].split("/")
        if len(parts) != 2 or not API_NAME_RE.match(parts[1]):
            await _send(
                send,
                404,
                error_body(
                    "not_found",
                    "prediction paths are /d/{deployment}/{api}",
                    {"path": scope["path"]},
                ),
                JSON_HEADERS,
            )
            return
        deployment, api = parts
        route = self.routes.get(deployment)
        if route is None and not self.routes_loaded:
            # After a (re)start, until the first full read of the table: a valid key must
            # never see the 401 of an unknown deployment. Says nothing about the name.
            body = error_body(
                "routes_not_loaded",
                "the gateway is starting and has not loaded its route table yet; retry shortly",
            )
            await _send(send, 503, body, [*JSON_HEADERS, (b"retry-after", self._retry_after)])
            return
        if route is None:
            # Not recorded per deployment: arbitrary names would grow the metric keys forever.
            self.unknown_deployment_requests += 1
            key = _presented_key(scope["headers"])
            if key is not None:
                # Hash like a known deployment would, so the time taken does not tell either.
                _key_matches(key, _NO_KEY_HASHES)
            reject = _key_refusal(deployment, key)
            await _send(
                send,
                reject.status,
                error_body(reject.code, reject.message, reject.details),
                [*JSON_HEADERS, *reject.headers],
            )
            return
        payload: dict[str, Any] | None
        raw_inputs = b""
        arm = ARM_LIVE
        anonymous = False
        mirror: ShadowJob | None = None
        try:
            status, body, headers, payload, raw_inputs, rows, arm, mirror = await self._handle(
                scope, receive, route, api
            )
            version_error = status >= 500  # the model server's own answer
        except _Reject as reject:
            status, body, rows = (
                reject.status,
                error_body(reject.code, reject.message, reject.details),
                reject.rows,
            )
            headers = [*JSON_HEADERS, *reject.headers]
            payload = None
            version_error = reject.code in VERSION_ERROR_CODES
            arm, anonymous = reject.arm, reject.anonymous
        except Exception:
            # A bug of ours: answer in the documented shape and count it, rather than leave
            # uvicorn's plain-text 500 and a hole in the metrics (not as the version's error).
            logger.exception("unexpected error handling %s %s", scope["method"], scope["path"])
            status, rows, payload, version_error, arm = 500, 0, None, False, ARM_LIVE
            body = error_body("internal_error", "the gateway failed to handle this request")
            headers = JSON_HEADERS
        if arm == ARM_LIVE:
            version, ident = route.version, route.ident_headers
        else:
            assert route.canary is not None
            version, ident = route.canary.version, route.canary_ident_headers
        if anonymous:
            ident = ()
        await _send(send, status, body, [*headers, *ident])
        if mirror is not None:
            self.shadow.offer(mirror)  # after the answer is out: the shadow never delays it
        # Positional calls, and the draw before the sampler's keep: this runs for every
        # request, and keyword calls cost ~1 µs a request here (see the monitoring benchmark).
        if self._record_metrics:
            self.metrics.record(
                deployment,
                version,
                status,
                time.perf_counter() - started,
                rows,
                version_error,
            )
        if payload is not None and 200 <= status < 300 and self.sampler.draw():
            self.sampler.keep(deployment, version, api, rows, payload, body, raw_inputs)

    async def _handle(
        self, scope: Scope, receive: Receive, route: Route, api: str
    ) -> tuple[
        int, bytes, list[tuple[bytes, bytes]], dict[str, Any], bytes, int, str, ShadowJob | None
    ]:
        """Check and forward one request; raise :class:`_Reject` for answers of our own.

        Returns status, body, headers, payload, raw body, rows, the arm that answered and the
        shadow job to offer once the answer is sent (None when not mirrored)."""
        key: bytes | None = None
        forced_arm: bytes | None = None
        sticky_key: bytes | None = None
        sticky = route.sticky
        # None never equals a header name: no sticky header, no match.
        sticky_header = sticky.header.encode() if sticky is not None and sticky.header else None
        content_length: int | None = None
        client_id: bytes | None = None
        bad_content_length = False
        # The forwarded headers as the bytes that go on the wire: no dict, no str round trip.
        forward: list[bytes] = [b"content-type: application/json\r\n"]
        content_type: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer" and credentials.strip():
                    key = credentials.strip()
            elif name == b"x-modelyard-key":
                if value.strip():
                    key = value.strip()
            elif name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    bad_content_length = True  # told only to key holders, see the docstring
            elif name == b"content-type":
                content_type = value
            elif name == INFERENCE_ID_HEADER:
                client_id = value
            elif name == ARM_HEADER:
                forced_arm = value
            elif name == sticky_header:
                sticky_key = value.strip() or None
            elif name in FORWARDED_REQUEST_HEADERS:
                forward += (name, b": ", value, b"\r\n")
        if key is None or not _key_matches(key, route.key_hashes):
            raise _key_refusal(route.deployment, key)
        if scope["method"] != "POST":
            raise _Reject(
                405,
                "method_not_allowed",
                f"{scope['method']} is not allowed here; predictions are POST",
                headers=[(b"allow", b"POST")],
            )
        if bad_content_length:
            raise _Reject(400, "bad_request", "Content-Length is not a number")
        inference_id = self._inference_id(client_id)
        if route.state != "live":
            raise _Reject(
                503,
                "deployment_unavailable",
                f"deployment {route.deployment!r} has no live slot (state {route.state!r}); "
                "retry later",
                {"deployment": route.deployment, "state": route.state},
                headers=[(b"retry-after", str(self.settings.retry_after_s).encode())],
            )
        try:
            media_type_check(content_type)  # before reading a byte of a body we will refuse
            body = await self._read_body(receive, content_length)
            payload = json_body_parse(body)
        except InputRefused as refused:
            raise _Reject(refused.status, refused.code, refused.message, refused.details) from None
        instances = payload.get("instances")
        rows = len(instances) if isinstance(instances, list) else 1
        arm = ARM_LIVE
        if route.canary is not None or forced_arm is not None:
            if sticky is not None and sticky.field is not None:
                sticky_key = sticky_field_key(payload, sticky.field)
            try:
                arm = arm_choose(route, forced_arm, sticky_key)
            except ArmRefused as refused:
                raise _Reject(
                    400,
                    "invalid_arm",
                    str(refused),
                    {"arm": refused.arm, "arms": list(refused.available)},
                    rows=rows,
                ) from None
        query = scope["query_string"]
        target = b"/" + api.encode() + (b"?" + query if query else b"")
        forward_headers = b"".join(forward)
        hop_started = time.perf_counter()
        try:
            status, out, headers, arm = await self._forward(
                route, target, body, forward_headers, arm
            )
        except _Reject as reject:
            reject.rows = rows
            raise
        mirror = None
        if route.shadow is not None and status < 500 and self.shadow.wanted(route):
            # The model server's own body: the comparison reads predictions, not our id.
            mirror = ShadowJob(
                route,
                target,
                forward_headers,
                body,
                status,
                out,
                (time.perf_counter() - hop_started) * 1e3,
            )
        if inference_id is not None and 200 <= status < 300:
            out, headers = _with_inference_id(out, headers, inference_id)
            assert self.prediction_log is not None
            version = _arm_identity(route, arm)[0]
            self.prediction_log.keep(route.deployment, version, inference_id.decode(), out, arm)
        return status, out, headers, payload, body, rows, arm, mirror

    def _inference_id(self, client_id: bytes | None) -> bytes | None:
        """The request's inference id: the client's (checked), else a new one; None when the
        prediction log is off."""
        if self.prediction_log is None:
            return None
        if client_id is None:
            return inference_id_new().encode()
        text = client_id.decode("latin-1").strip()
        problem = inference_id_check(text)
        if problem is not None:
            raise _Reject(
                400,
                "invalid_inference_id",
                f"X-Modelyard-Inference-Id: {problem}",
                {"header": "X-Modelyard-Inference-Id"},
            )
        return text.encode()

    def _too_large(self) -> _Reject:
        limit = self.settings.max_body_bytes
        return _Reject(
            413,
            "payload_too_large",
            f"request body is over the {limit}-byte limit",
            {"limit_bytes": limit},
        )

    async def _read_body(self, receive: Receive, content_length: int | None) -> bytes:
        limit = self.settings.max_body_bytes
        if content_length is not None and content_length > limit:
            raise self._too_large()  # refuse before reading a byte of it
        message = await receive()
        if message["type"] == "http.disconnect":
            # 499 (nginx's "client closed request"): nobody reads it, but metrics do.
            raise _Reject(499, "client_disconnected", "client went away mid-request")
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):  # the usual case: the whole body at once
            if len(body) > limit:
                raise self._too_large()
            return body
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Reject(499, "client_disconnected", "client went away mid-request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # chunked bodies have no Content-Length to check up front
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _forward(
        self, route: Route, target: bytes, body: bytes, headers: bytes, arm: str = ARM_LIVE
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], str]:
        """Send the request to a replica of ``arm``; one that fails is ejected and the next one
        tried. Returns the answer and the arm that gave it.

        Predictions are idempotent, so a request whose connection was refused, reset or cut
        (before or during the answer) is sent again to another ready replica of its arm: at
        most once per replica, all within the one deadline of the first attempt.
        """
        assert self.upstreams is not None, "the gateway answers requests only after startup"
        replicas = self.balancer.replica_set(route, arm)
        deadline = self.upstreams.deadline()
        tried: list[Replica] = []
        while True:
            replica = replicas.choose(tried)
            if replica is None and arm == ARM_CANARY:
                # No canary replica can take it: live answers, within the same deadline. The
                # canary is an experiment and must never cost a request; the fallbacks are
                # counted (/healthz, /metrics) and the canary's failures already ejected its
                # replicas and asked for their repair, which is the judge's evidence.
                self.canary_fallbacks += 1
                arm, replicas, tried = ARM_LIVE, self.balancer.replica_set(route), []
                continue
            if replica is None:
                raise self._unavailable(route, tried)
            if tried:
                self.upstream_retries += 1
            replica.begin()
            try:
                response = await self.upstreams.post(
                    replica.upstream, target, headers, body, deadline
                )
            except UpstreamTimeout:
                arm_version, arm_slot = _arm_identity(route, arm)
                raise _Reject(
                    504,
                    "upstream_timeout",
                    f"the model server of {route.deployment!r} did not answer within "
                    f"{self.settings.upstream_timeout_s} s",
                    {
                        "deployment": route.deployment,
                        "version": arm_version,
                        "slot": arm_slot,
                        "arm": arm,
                    },
                    arm=arm,
                ) from None
            except UpstreamError as exc:
                self._replica_failed(replica, exc)
                tried.append(replica)
                continue
            finally:
                replica.end()
            passed = [item for item in response.headers if item[0] not in HOP_RESPONSE_HEADERS]
            return response.status, response.body, passed, arm

    def _unavailable(self, route: Route, tried: list[Replica]) -> _Reject:
        listed = len(route.upstreams)
        failed = f"{len(tried)} failed just now, " if tried else ""
        return _Reject(
            503,
            "upstream_unavailable",
            f"no replica of {route.deployment!r} can take the request ({failed}{listed} listed, "
            "the others left out after failing); the platform was asked to repair them, "
            "retry shortly",
            {
                "deployment": route.deployment,
                "version": route.version,
                "slot": route.slot,
                "replicas": listed,
            },
            headers=[(b"retry-after", self._retry_after)],
        )

    def _replica_failed(self, replica: Replica, exc: UpstreamError) -> None:
        """Eject ``replica`` and ask the platform to repair it (rate-limited)."""
        self.upstream_failures += 1
        reason = _failure_reason(exc)
        if self.balancer.eject(replica):
            logger.warning(
                "replica %s of %r failed (%s: %s); left out until it answers again",
                replica.url,
                replica.deployment,
                reason,
                exc,
            )
        if self.repairs is not None:
            self.repairs.request(replica.deployment, replica.url, reason)

    def _probe_failed(self, replica: Replica) -> None:
        # Still dead after the first request: ask again (the sender allows one per interval),
        # in case the first request was lost or the repair failed.
        if self.repairs is not None:
            self.repairs.request(replica.deployment, replica.url, "readiness_probe_failed")

    # health -----------------------------------------------------------------------------

    def _health_body(self) -> bytes:
        stats = self.sampler.stats
        return json.dumps(
            {
                "status": "ok",
                "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
                "routes": len(self.routes),
                "routes_loaded": self.routes_loaded,
                "redis_ok": self.redis_ok,
                "unknown_deployment_requests": self.unknown_deployment_requests,
                "upstream_failures": self.upstream_failures,
                "upstream_retries": self.upstream_retries,
                "replicas_ejected": sum(
                    r.ejected for s in self.balancer.all_sets() for r in s.replicas
                ),
                "canary_fallbacks": self.canary_fallbacks,
                **self._shadow_health(),
                "repair_requests_sent": self.repairs.sent if self.repairs else 0,
                "repair_requests_failed": self.repairs.failed if self.repairs else 0,
                "metrics_pending_requests": self.metrics.pending_requests,
                "metrics_flushed_requests": self.metrics.flushed_requests,
                "metrics_dropped_cells": self.metrics.dropped_cells,
                "samples_written": stats.written,
                "samples_pending": self.sampler.pending,
                "samples_dropped_buffer_full": stats.dropped_buffer_full,
                "samples_dropped_redis_error": stats.dropped_redis_error,
                "samples_dropped_unusable": stats.dropped_unusable,
                "samples_over_rate_cap": stats.over_rate_cap,
                **self._log_health(),
            }
        ).encode()

    def _shadow_health(self) -> dict[str, int]:
        mirrored, dropped, errors = self.shadow.totals()
        return {
            "shadow_mirrored": mirrored,
            "shadow_dropped_queue_full": dropped,
            "shadow_errors": errors,
            "shadow_pending": self.shadow.pending,
        }

    def _log_health(self) -> dict[str, int]:
        if self.prediction_log is None:
            return {}
        stats = self.prediction_log.stats
        return {
            "predictions_logged": stats.written,
            "predictions_log_pending": self.prediction_log.pending,
            "predictions_sampled_out": stats.sampled_out,
            "predictions_dropped_buffer_full": stats.dropped_buffer_full,
            "predictions_dropped_redis_error": stats.dropped_redis_error,
        }

    async def _metrics(self, scope: Scope, send: Send) -> None:
        token = self.settings.metrics_token
        if token:
            presented = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    scheme, _, presented = value.partition(b" ")
                    if scheme.lower() != b"bearer":
                        presented = b""
            if not hmac.compare_digest(presented.strip(), token.encode()):
                body = error_body(
                    "invalid_metrics_token",
                    "GET /metrics needs 'Authorization: Bearer <MODELYARD_GATEWAY_METRICS_TOKEN>'",
                )
                await _send(send, 401, body, [*JSON_HEADERS, (b"www-authenticate", b"Bearer")])
                return
        body = prometheus_text(self)
        await _send(send, 200, body, [(b"content-type", PROMETHEUS_CONTENT_TYPE)])

    async def _readyz(self, send: Send) -> None:
        problems = []
        if not self.routes_loaded:
            problems.append("the route table has not been loaded from Redis yet")
        if self.redis is None:
            problems.append("the gateway has not started (no lifespan startup)")
        else:
            try:
                await asyncio.wait_for(self.redis.ping(), timeout=self.settings.redis_timeout_s)
            except (RedisError, OSError, TimeoutError) as exc:
                problems.append(f"Redis does not answer: {type(exc).__name__}: {exc}")
        if problems:
            body = error_body("not_ready", "; ".join(problems), {"problems": problems})
            await _send(send, 503, body, JSON_HEADERS)
        else:
            body = json.dumps({"status": "ready", "routes": len(self.routes)}).encode()
            await _send(send, 200, body, JSON_HEADERS)

    # lifecycle --------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        settings = self.settings
        self.redis = aioredis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            # No hidden retries: every loop here retries at its own pace, and a retried metrics
            # flush whose first attempt did land would count those requests twice.
            retry=Retry(NoBackoff(), 0),
        )
        self.upstreams = UpstreamPool(
            connect_timeout_s=settings.upstream_connect_timeout_s,
            timeout_s=settings.upstream_timeout_s,
            keepalive_s=settings.upstream_keepalive_s,
            limit=settings.upstream_pool_size,
        )
        self.balancer.start(self.upstreams)
        self.shadow.start(self.upstreams)
        # The platform's Celery broker is REDIS_URL's server (config/settings: CELERY_BROKER_URL).
        self.repairs = RepairRequests(settings.redis_url, timeout_s=settings.repair_send_timeout_s)
        self._stop.clear()
        first_load = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._route_sync_loop(first_load), name="gateway-routes"),
            asyncio.create_task(
                self._flush_loop("metrics", settings.metrics_flush_interval_s, self._flush_metrics),
                name="gateway-metrics-flush",
            ),
            asyncio.create_task(
                self._flush_loop("samples", settings.sample_flush_interval_s, self._flush_samples),
                name="gateway-samples-flush",
            ),
            asyncio.create_task(
                self._flush_loop(
                    "shadow comparisons", settings.shadow_flush_interval_s, self._flush_shadow
                ),
                name="gateway-shadow-flush",
            ),
        ]
        if self.prediction_log is not None:
            self._tasks.append(
                asyncio.create_task(
                    self._flush_loop(
                        "prediction log", settings.log_flush_interval_s, self._flush_predictions
                    ),
                    name="gateway-prediction-log-flush",
                )
            )
        if settings.inflight_report_interval_s > 0:
            self._tasks.append(
                asyncio.create_task(
                    self._flush_loop(
                        "in-flight reports",
                        settings.inflight_report_interval_s,
                        self._report_inflight,
                    ),
                    name="gateway-inflight-reports",
                )
            )
        try:
            # Connections wait in the listening socket's backlog meanwhile: the first requests
            # after a restart are answered from a loaded table, not refused.
            await asyncio.wait_for(first_load.wait(), timeout=settings.startup_route_wait_s)
        except TimeoutError:
            # Start anyway: predictions answer 503 + Retry-After (and /readyz 503) until the
            # table loads, and the sync task keeps trying. Refusing to start would turn a
            # Redis blip into a crash loop.
            logger.error(
                "route table not loaded from %s within %.1f s; answering 503 until it is",
                settings.redis_url,
                settings.startup_route_wait_s,
            )

    async def shutdown(self) -> None:
        """Stop background tasks; the flush loops flush one last time before they return."""
        self._stop.set()
        await self.shadow.close()  # mirrored requests in flight are abandoned, not waited for
        route_task, *flush_tasks = self._tasks
        route_task.cancel()
        # Bounded: a stop must end the process even if the route loop missed its cancel.
        await asyncio.wait({route_task}, timeout=5)
        if not route_task.done():
            logger.error("route sync did not stop within 5 s of the shutdown; left behind")
        # The flush loops notice _stop, flush a final time and return; they are not cancelled,
        # since a flush cancelled after Redis ran it would be kept and counted twice.
        done, pending = await asyncio.wait(flush_tasks, timeout=10)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                logger.error("final flush failed: %s", task.exception())
        if self.metrics.pending_requests:
            logger.error(
                "shut down with %d requests' metrics not flushed (Redis unreachable)",
                self.metrics.pending_requests,
            )
        if self.sampler.pending:
            logger.error(
                "shut down with %d samples not written (Redis unreachable)", self.sampler.pending
            )
        if self.prediction_log is not None and self.prediction_log.pending:
            logger.error(
                "shut down with %d logged predictions not written (Redis unreachable)",
                self.prediction_log.pending,
            )
        await self.balancer.close()
        if self.repairs is not None:
            await self.repairs.close()
        if self.upstreams is not None:
            await self.upstreams.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def _flush_metrics(self) -> None:
        assert self.redis is not None
        await self.metrics.flush(self.redis)

    async def _flush_shadow(self) -> None:
        assert self.redis is not None
        await self.shadow.flush(self.redis)

    async def _flush_samples(self) -> None:
        assert self.redis is not None
        await self.sampler.flush(self.redis)

    async def _flush_predictions(self) -> None:
        assert self.redis is not None and self.prediction_log is not None
        await self.prediction_log.flush(self.redis)

    async def _report_inflight(self) -> None:
        """Each live deployment's mean/peak in flight per replica since the last report."""
        assert self.redis is not None
        snapshot: dict[tuple[str, str], tuple[float, int]] = {}
        reports = []
        for deployment, route in self.routes.items():
            if route.state != "live":
                continue
            loads = self.balancer.loads(deployment)
            snapshot.update(((deployment, url), load) for url, load in loads.items())
            reports.append((deployment, loads))
        self.inflight = snapshot  # /metrics shows the last interval even when Redis is down
        for deployment, loads in reports:
            await inflight_report_async(self.redis, deployment, self.gateway_id, loads)

    async def _flush_loop(
        self, what: str, interval: float, flush: Callable[[], Awaitable[None]]
    ) -> None:
        failing = False
        while True:
            stopping = False
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=interval)
                stopping = True
            except TimeoutError:
                pass
            try:
                await flush()
                if failing:
                    logger.warning("%s flush to Redis works again", what)
                failing = False
            except (RedisError, OSError, TimeoutError) as exc:
                if not failing:  # once per outage, not every few seconds
                    logger.error("%s flush to Redis failed, will retry: %s", what, exc)
                failing = True
            except Exception:
                # A bug must not end the loop: later flushes may still succeed.
                logger.exception("%s flush failed unexpectedly", what)
            if stopping:
                return

    async def _route_sync_loop(self, first_load: asyncio.Event) -> None:
        """Keep ``self.routes`` equal to the Redis hash: pub/sub for speed, re-reads for safety."""
        assert self.redis is not None
        interval = self.settings.routes_reread_interval_s
        backoff = 0.1
        # Loops on _stop as well as ending on cancel: on Python 3.11 a cancel that meets the
        # expiry of redis-py's read timeout can come out as a TimeoutError (asyncio.timeout's
        # race), which the handler below would take for a Redis outage and go on for ever.
        while not self._stop.is_set():
            pubsub = self.redis.pubsub()
            try:
                # Subscribe before the full read, so a change made between the two is not lost.
                await pubsub.subscribe(ROUTES_CHANNEL)
                await self._reload_all()
                first_load.set()
                if not self.redis_ok:
                    logger.info("route table synced from Redis (%d routes)", len(self.routes))
                self.redis_ok = True
                backoff = 0.1
                next_reread = time.monotonic() + interval
                while not self._stop.is_set():
                    timeout = max(0.0, next_reread - time.monotonic())
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=timeout
                    )
                    if message is not None and message["type"] == "message":
                        await self._reload_one(message["data"].decode())
                    if time.monotonic() >= next_reread:
                        await self._reload_all()
                        next_reread = time.monotonic() + interval
            except (RedisError, OSError, TimeoutError) as exc:
                if self._stop.is_set():
                    return
                if self.redis_ok:
                    logger.error(
                        "lost Redis (%s); serving from the in-memory route table (%d routes) "
                        "until it is back",
                        exc,
                        len(self.routes),
                    )
                self.redis_ok = False
            except Exception:
                # A bug must not stop route updates for good; log it and resync from scratch.
                logger.exception("route sync failed unexpectedly; resyncing")
            finally:
                with contextlib.suppress(Exception):
                    # redis 8.1 leaves PubSub.aclose unannotated.
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _reload_all(self) -> None:
        assert self.redis is not None
        routes = await routes_read_all_async(self.redis)
        if not routes and self.routes:
            # An empty table while we serve some means Redis lost its data (a restart without
            # persistence) far more often than every deployment being deleted unannounced.
            # Keep serving; announced removals (route_remove) still apply one by one.
            if not self._kept_routes_warned:
                logger.error(
                    "route hash %s is empty in Redis; keeping the %d in-memory routes until "
                    "routes are published again",
                    ROUTES_KEY,
                    len(self.routes),
                )
                self._kept_routes_warned = True
            self.routes_loaded = True
            return
        self._kept_routes_warned = False
        if routes != self.routes:
            changed = sorted(
                name
                for name in routes.keys() | self.routes.keys()
                if routes.get(name) != self.routes.get(name)
            )
            logger.info("route table re-read: changed %s", ", ".join(changed))
        self._routes_swap(routes)
        self.routes_loaded = True

    async def _reload_one(self, deployment: str) -> None:
        assert self.redis is not None
        if not DEPLOYMENT_NAME_RE.match(deployment):
            logger.error("ignoring route change message for invalid name %r", deployment)
            return
        route = await route_read_async(self.redis, deployment)
        # A fresh dict per change: readers holding the old one are unaffected, and the swap is
        # one assignment.
        routes = dict(self.routes)
        if route is None:
            routes.pop(deployment, None)
        else:
            routes[deployment] = route
        self._routes_swap(routes)

    def _routes_swap(self, routes: dict[str, Route]) -> None:
        """The one place the route table changes: what follows it (the balancer's replica sets,
        the shadow's current arms) is told first, then the table is one assignment."""
        self.balancer.routes_changed(routes)
        self.shadow.routes_changed(routes)
        self.routes = routes


def create_app(settings: GatewaySettings | None = None) -> Gateway:
    """Return the gateway ASGI app (settings from the environment when not given)."""
    return Gateway(settings or GatewaySettings.from_env())


def create_app_from_env() -> Gateway:
    """Factory for ``uvicorn --factory`` and worker processes: settings from the environment."""
    return create_app(GatewaySettings.from_env())
