"""The gateway's HTTP protocol: uvicorn's httptools protocol with read deadlines and a cap.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``): a client that
opens a connection and sends its headers or body a byte at a time holds the connection (and
a file descriptor) for as long as it likes, and uvicorn's ``limit_concurrency`` counts such
connections towards its limit, so a few hundred of them turn every other client away with
503s. This protocol adds:

- a header deadline (``header_timeout_s``): from the moment the connection opens (or the
  previous response ends, plus the keep-alive allowance) until the headers are complete;
- a body deadline (``body_timeout_s``): from the end of the headers until the last byte
  of the body;
- a connection cap (``max_connections``) per gateway process: a connection over it is
  answered 503 at once and closed, before it can hold anything.

A request past its deadline is answered ``408`` with the error body (when no answer has
started) and the connection is closed; a request the app is still reading then sees
``http.disconnect`` and is counted as a 499, never as the version's error.

Settings come from :class:`gateway.app.GatewaySettings` through :func:`protocol_configure`;
``python -m gateway`` calls it, and each worker process does through
:func:`create_app_for_worker`.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.app import Gateway, GatewaySettings, create_app, error_body

PROTOCOL_PATH = "gateway.server:GatewayHttpProtocol"


def _raw_response(status: int, reason: bytes, body: bytes) -> bytes:
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


# GatewaySettings has __slots__, so its class attributes are slot descriptors, not the defaults.
_DEFAULTS = GatewaySettings()


class GatewayHttpProtocol(HttpToolsProtocol):
    header_timeout_s: ClassVar[float] = _DEFAULTS.header_timeout_s
    body_timeout_s: ClassVar[float] = _DEFAULTS.body_timeout_s
    max_connections: ClassVar[int] = _DEFAULTS.max_connections

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    # deadlines ----------------------------------------------------------------------------

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        if seconds > 0:
            self._deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        limit = self.header_timeout_s if what == "headers" else self.body_timeout_s
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            body = error_body(
                "request_timeout",
                f"the request {what} did not arrive within {limit} s",
                {"limit_s": limit, "waiting_for": what},
            )
            self.transport.write(_raw_response(408, b"Request Timeout", body))
        self.transport.close()  # connection_lost tells a running request it is gone

    # uvicorn's hooks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections and len(self.connections) > self.max_connections:
            body = error_body(
                "too_many_connections",
                "the gateway holds as many connections as it accepts; retry shortly",
                {"limit": self.max_connections},
            )
            transport.write(_raw_response(503, b"Service Unavailable", body))
            transport.close()
            return
        self._arm(self.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.body_timeout_s, "body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # self.cycle is the last request parsed: a pipelined one already read in full is
        # running now, and must not be cut off by a header deadline.
        if not self.transport.is_closing() and self.cycle.response_complete:
            # Idle keep-alive is uvicorn's timeout_keep_alive; the next request's headers
            # must then arrive within the header deadline counted from here.
            self._arm(self.timeout_keep_alive + self.header_timeout_s, "headers")


def protocol_configure(settings: GatewaySettings) -> None:
    """Apply the deadlines and the cap of ``settings`` to every connection of this process."""
    GatewayHttpProtocol.header_timeout_s = settings.header_timeout_s
    GatewayHttpProtocol.body_timeout_s = settings.body_timeout_s
    GatewayHttpProtocol.max_connections = settings.max_connections


# Container allocations between young collections once a gateway process is up (default 700).
GC_YOUNG_THRESHOLD = 10_000


def gc_settle() -> None:
    """Keep the cyclic garbage collector off the request path (once per process, at start).

    A 1,000-row body parses into a thousand lists, so at the default threshold a young
    collection ran inside nearly every such request and promoted the live rows, which soon
    forced full collections walking every object of the imported libraries (perf on a
    gateway under 1,000-row requests: ~14% of its CPU in the collector). Frozen, the objects
    alive at start are never walked again; at the higher threshold a request's rows die by
    reference count before a collection sees them. The generated model services do the same
    (``modelkit.serving.settle_gc``).
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def create_app_for_worker() -> Gateway:
    """Factory for ``uvicorn --factory`` worker processes: settings from the environment."""
    settings = GatewaySettings.from_env()
    protocol_configure(settings)
    app = create_app(settings)
    gc_settle()
    return app
