"""The gateway's HTTP/1.1 client for the model servers: keep-alive connections and nothing else.

Why not aiohttp's ClientSession (which the gateway used first): measured here on one hop to a
trivial upstream (uvloop, 1 client), a ``session.post`` + ``read`` cost ~170-210 µs of CPU per
request -- about half of the gateway's whole per-request CPU -- for features this hop never
uses (cookies, redirects, auth, proxies, tracing hooks, decompression, multipart). This client
does one thing: write a POST on a pooled connection and let httptools (the C parser uvicorn
uses) parse the answer, at ~30-40 µs. What it keeps from aiohttp's behaviour:

- connections are reused per upstream (host, port) and dropped after ``keepalive_s`` idle --
  below uvicorn's server keep-alive (5 s), so we never write into a connection the server is
  closing; a reused connection that closes before any answer byte is retried once on a fresh
  one (predictions have no side effects);
- at most ``limit`` requests are in flight across all upstreams;
- TCP_NODELAY on every connection (Nagle + delayed ACK would add tens of ms per request);
- a connect timeout, and one deadline for the whole request (a timer on the event loop, not a
  timeout object per request).

The body is passed through as received: no ``Accept-Encoding`` is sent, so a model server has no
reason to compress, and if one does anyway its ``Content-Encoding`` is forwarded with the bytes.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools


class UpstreamError(Exception):
    """Base of the failures below; the message says what happened."""


class UpstreamConnectError(UpstreamError):
    """The connection could not be opened (refused, unreachable, DNS)."""


class UpstreamConnectTimeout(UpstreamConnectError):
    """The connection was not open within the connect timeout."""


class UpstreamDisconnected(UpstreamError):
    """The server closed (or reset) the connection before it finished its answer."""

    def __init__(self, message: str, *, mid_answer: bool) -> None:
        super().__init__(message)
        self.mid_answer = mid_answer  # whether any byte of the answer had arrived


class UpstreamTimeout(UpstreamError):
    """The whole request took longer than the request timeout."""


class UpstreamProtocolError(UpstreamError):
    """The answer was not valid HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """A model server's address, parsed once per route (not per request)."""

    host: str
    port: int
    tls: bool
    host_header: bytes

    @classmethod
    def parse(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        return cls(host=host, port=port, tls=tls, host_header=parts.netloc.encode("idna"))


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]  # names lower-cased, in the order received
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time (no pipelining)."""

    def __init__(self, pool: UpstreamPool, key: Upstream) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._got_bytes = False
        self._headers_done = False
        self._complete = False
        self._keep_alive = False

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            # Bytes nobody asked for (an idle connection): the stream is out of step.
            self.abort()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(UpstreamProtocolError(f"invalid HTTP answer: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and self._parser is not None and not self._chunked_or_sized():
            self._complete = True  # a body delimited by the connection's close
            self._finish(None)
        else:
            if self._got_bytes:
                message = "the server closed the connection mid-answer"
            else:
                message = "the server closed the connection before answering"
            if exc is not None:
                message += f" ({type(exc).__name__}: {exc})"
            self._finish(UpstreamDisconnected(message, mid_answer=self._got_bytes))

    # --- httptools callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        # Asked now: llhttp resets the message flags once the message is complete.
        assert self._parser is not None
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True
        self._finish(None)

    # --- helpers -----------------------------------------------------------------------

    def _chunked_or_sized(self) -> bool:
        for name, value in self._headers:
            if name == b"content-length" or (
                name == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                return True
        return False

    def _finish(self, exc: Exception | None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def request(self, head: bytes, body: bytes) -> UpstreamResponse:
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._headers = []
        self._body = []
        self._got_bytes = self._headers_done = self._complete = self._keep_alive = False
        # A server that died may have closed the transport before connection_lost ran (the
        # callback is scheduled): uvloop then refuses the write with a RuntimeError, which is
        # this same disconnect and must be retried like one, never a 500.
        if self.closed or self.transport.is_closing():
            raise UpstreamDisconnected(
                "the server closed the connection before the request was sent", mid_answer=False
            )
        try:
            # One writev of both, with no copy (uvloop): two writes woke the model server
            # twice for a large body (the head alone, then the body), a syscall each side.
            self.transport.writelines((head, body))
        except RuntimeError as exc:
            raise UpstreamDisconnected(
                f"the server closed the connection before the request was sent ({exc})",
                mid_answer=False,
            ) from exc
        self._waiter = self.pool._loop.create_future()
        await self._waiter
        parser = self._parser
        self._waiter = None
        self._parser = None
        response = UpstreamResponse(
            status=parser.get_status_code(),
            headers=self._headers,
            body=self._body[0] if len(self._body) == 1 else b"".join(self._body),
        )
        if not self._keep_alive:
            self.abort()
        return response

    @property
    def started_answer(self) -> bool:
        return self._got_bytes


class UpstreamPool:
    """Keep-alive connections to every upstream of the route table (one per event loop)."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        timeout_s: float,
        keepalive_s: float,
        limit: int,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self.keepalive_s = keepalive_s
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(max(1, limit))
        self._idle: dict[Upstream, list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._expired: set[asyncio.Task[object] | None] = set()
        self.opened = 0  # connections opened so far (tests prove reuse with it)

    def deadline(self) -> float:
        """The event-loop time by which a request starting now must be answered."""
        return self._loop.time() + self.timeout_s

    async def post(
        self,
        upstream: Upstream,
        target: bytes,
        headers: bytes,
        body: bytes,
        deadline: float | None = None,
    ) -> UpstreamResponse:
        """POST ``body`` to ``target`` (path + query) with ``headers`` (``name: value\\r\\n``...).

        Raises :class:`UpstreamTimeout` when the exchange is not done by ``deadline`` (event-loop
        time; default :meth:`deadline`, so a caller retrying on another server passes the first
        attempt's to keep one deadline for the whole request), and the other
        :class:`UpstreamError` subclasses when the server cannot be reached or answers badly.
        """
        head = b"".join(
            (
                b"POST ",
                target,
                b" HTTP/1.1\r\nhost: ",
                upstream.host_header,
                b"\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\n",
                headers,
                b"\r\n",
            )
        )
        async with self._slots:
            connection: _Connection | None = None
            task = asyncio.current_task()
            timer = self._loop.call_at(
                self.deadline() if deadline is None else deadline, self._expire, task
            )
            try:
                for attempt in (1, 2):
                    connection, reused = self._take_idle(upstream), True
                    if connection is None or attempt == 2:
                        connection, reused = await self._open(upstream), False
                    try:
                        response = await connection.request(head, body)
                    except UpstreamDisconnected:
                        # A pooled connection the server closed just as we reused it.
                        if reused and not connection.started_answer:
                            continue
                        raise
                    self._give_back(connection)
                    connection = None
                    return response
                raise AssertionError("unreachable")  # pragma: no cover
            except asyncio.CancelledError:
                if task is not None and task in self._expired:  # our deadline, not a cancel
                    task.uncancel()
                    raise UpstreamTimeout(f"no complete answer within {self.timeout_s} s") from None
                raise
            finally:
                timer.cancel()
                self._expired.discard(task)
                if connection is not None:
                    connection.abort()  # half-used: its stream state is unknown

    async def probe(self, upstream: Upstream, path: bytes, timeout_s: float) -> bool:
        """Whether ``GET path`` on a fresh connection answers 200 within ``timeout_s``.

        For re-admitting an ejected replica: a fresh connection (never a pooled one, which
        could be a leftover of the dead process) and no slot of the request limit.
        """
        head = b"GET %s HTTP/1.1\r\nhost: %s\r\ncontent-length: 0\r\n\r\n" % (
            path,
            upstream.host_header,
        )
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(timeout_s):
                connection = await self._open(upstream)
                response = await connection.request(head, b"")
        except (UpstreamError, TimeoutError):
            return False
        finally:
            if connection is not None:
                connection.abort()
        return response.status == 200

    def _expire(self, task: asyncio.Task[object] | None) -> None:
        # A flag, not a clock comparison: uvloop's timers have millisecond resolution and
        # may fire a fraction of a millisecond before their deadline.
        if task is not None:
            self._expired.add(task)
            task.cancel()

    def _take_idle(self, upstream: Upstream) -> _Connection | None:
        idle = self._idle.get(upstream)
        if not idle:
            return None
        oldest_ok = time.monotonic() - self.keepalive_s
        while idle:
            connection = idle.pop()  # the most recently used one: warmest, least likely closed
            if not connection.closed and connection.idle_since >= oldest_ok:
                return connection
            connection.abort()
        return None

    def _give_back(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.key, []).append(connection)

    def _forget(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)
            if not idle:
                del self._idle[connection.key]

    async def _open(self, upstream: Upstream) -> _Connection:
        tls: ssl.SSLContext | None = None
        if upstream.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        try:
            _, connection = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: _Connection(self, upstream), upstream.host, upstream.port, ssl=tls
                ),
                timeout=self.connect_timeout_s,
            )
        except TimeoutError:
            raise UpstreamConnectTimeout(
                f"could not connect within {self.connect_timeout_s} s"
            ) from None
        except OSError as exc:
            raise UpstreamConnectError(f"{type(exc).__name__}: {exc}") from None
        self.opened += 1
        return connection

    async def close(self) -> None:
        for idle in list(self._idle.values()):
            for connection in list(idle):
                connection.abort()
        self._idle.clear()
