"""The gateway's upstream client against real servers: keep-alive, retries, framing, failures.

The servers are real sockets on 127.0.0.1: the tiny model server (tests/gateway/upstream_app.py,
uvicorn) for the ordinary case, and small asyncio servers written here for the answers uvicorn
never gives (chunked, close-delimited, compressed, a keep-alive connection dropped while idle).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from gateway.upstream import (
    Upstream,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamPool,
    UpstreamTimeout,
)
from tests.gateway.support import Proc, free_port

JSON = b"content-type: application/json\r\n"
BODY = b'{"instances": [[1.0, 2.0]]}'

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def pool(**overrides: float) -> UpstreamPool:
    settings = {"connect_timeout_s": 1.0, "timeout_s": 2.0, "keepalive_s": 4.0, "limit": 64}
    settings.update(overrides)
    return UpstreamPool(**settings)  # type: ignore[arg-type]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


async def keep_alive_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request of a connection with 200 "ok", keeping it open."""
    try:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def serve(handler: Handler) -> tuple[asyncio.Server, Upstream]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, Upstream.parse(f"http://127.0.0.1:{port}")


def test_connections_are_kept_alive_and_reused(upstream_blue: Proc) -> None:
    async def scenario() -> None:
        client = pool()
        upstream = Upstream.parse(upstream_blue.url)
        for _ in range(20):
            response = await client.post(upstream, b"/predict", JSON, BODY)
            assert response.status == 200
            assert response.body == b'{"predictions": [3.0], "version": 1, "slot": "blue"}'
        assert client.opened == 1
        # Concurrent requests each need a connection; afterwards they are all reused.
        await asyncio.gather(*(client.post(upstream, b"/predict", JSON, BODY) for _ in range(5)))
        opened = client.opened
        await asyncio.gather(*(client.post(upstream, b"/predict", JSON, BODY) for _ in range(5)))
        assert client.opened == opened <= 5
        await client.close()

    run(scenario())


def test_request_headers_query_and_body_arrive_as_sent(upstream_blue: Proc) -> None:
    async def scenario() -> None:
        client = pool()
        headers = JSON + b"x-request-id: abc-123\r\n"
        response = await client.post(
            Upstream.parse(upstream_blue.url), b"/echo?a=1&b=2", headers, BODY
        )
        echo = __import__("json").loads(response.body)
        assert echo["headers"]["x-request-id"] == "abc-123"
        assert echo["headers"]["content-type"] == "application/json"
        assert echo["headers"]["host"] == f"127.0.0.1:{upstream_blue.port}"
        assert echo["query_string"] == "a=1&b=2"
        assert echo["body_size"] == len(BODY)
        await client.close()

    run(scenario())


def test_chunked_and_compressed_answers_pass_through_intact() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            writer.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
                b"content-encoding: gzip\r\nX-Custom: Yes\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            await writer.drain()
        writer.close()

    async def scenario() -> None:
        server, upstream = await serve(handler)
        client = pool()
        for _ in range(3):  # chunked framing ends the message: the connection stays usable
            response = await client.post(upstream, b"/predict", JSON, BODY)
            assert response.status == 200
            assert response.body == b"hello world"
            assert (b"content-encoding", b"gzip") in response.headers
            assert (b"x-custom", b"Yes") in response.headers  # names lower-cased, values kept
        assert client.opened == 1
        await client.close()
        server.close()

    run(scenario())


def test_answer_delimited_by_close_is_read_to_the_end() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nall of ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"it")
        writer.close()

    async def scenario() -> None:
        server, upstream = await serve(handler)
        client = pool()
        response = await client.post(upstream, b"/predict", JSON, BODY)
        assert (response.status, response.body) == (200, b"all of it")
        await client.close()
        server.close()

    run(scenario())


def test_idle_connection_closed_by_the_server_is_retried_on_a_fresh_one() -> None:
    answered = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers one request as keep-alive, then drops the connection without a word -- as a
        # server whose keep-alive ran out does just when the client reuses the connection.
        await read_request(reader)
        answered.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        try:
            await asyncio.wait_for(reader.read(1), timeout=5)
        finally:
            writer.transport.abort()

    async def scenario() -> None:
        server, upstream = await serve(handler)
        client = pool()
        for _ in range(4):
            response = await client.post(upstream, b"/predict", JSON, BODY)
            assert response.body == b"ok"
        # Every reuse met a dropped connection and was retried once on a new one.
        assert len(answered) == 4
        assert client.opened == 4
        await client.close()
        server.close()

    run(scenario())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_pooled_connection_whose_transport_just_closed_is_retried_not_an_error(loop: str) -> None:
    """A server killed under load: its connection's transport is closed before the loop has
    run connection_lost. uvloop (the gateway's loop) refuses the write with a RuntimeError;
    that must be the same retried disconnect, not an exception that answers 500."""

    async def scenario() -> None:
        server, upstream = await serve(keep_alive_ok)
        client = pool()
        assert (await client.post(upstream, b"/predict", JSON, BODY)).body == b"ok"
        (idle,) = client._idle[upstream]
        assert idle.transport is not None
        idle.transport.abort()  # closed; its connection_lost is only scheduled
        assert not idle.closed
        assert (await client.post(upstream, b"/predict", JSON, BODY)).body == b"ok"
        assert client.opened == 2
        await client.close()
        server.close()

    if loop == "uvloop":
        import uvloop

        uvloop.run(scenario())
    else:
        run(scenario())


def test_a_write_uvloop_refuses_on_a_closed_handle_is_a_retried_disconnect() -> None:
    """The window the make_run slot-kill test met: uvloop has closed the handle (the server
    reset it) but connection_lost has not run, so the connection still looks alive. The
    transport here is the real closed one; only its is_closing() answers as in that window."""
    import uvloop

    class _LooksOpen:
        def __init__(self, real: asyncio.Transport) -> None:
            self.real = real

        def is_closing(self) -> bool:
            return False

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

    async def scenario() -> None:
        server, upstream = await serve(keep_alive_ok)
        client = pool()
        assert (await client.post(upstream, b"/predict", JSON, BODY)).body == b"ok"
        (idle,) = client._idle[upstream]
        real = idle.transport
        assert real is not None
        real.abort()
        await asyncio.sleep(0)  # the handle is closed now
        with pytest.raises(RuntimeError):
            real.write(b"x")  # what uvloop does with it
        idle.closed = False  # as before connection_lost has run
        idle.transport = _LooksOpen(real)  # type: ignore[assignment]
        client._idle[upstream] = [idle]
        assert (await client.post(upstream, b"/predict", JSON, BODY)).body == b"ok"
        assert client.opened == 2  # retried once on a fresh connection
        await client.close()
        server.close()

    uvloop.run(scenario())


def test_connection_dropped_mid_answer_is_an_error_not_a_retry() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.transport.abort()

    async def scenario() -> None:
        server, upstream = await serve(handler)
        client = pool()
        with pytest.raises(UpstreamDisconnected):
            await client.post(upstream, b"/predict", JSON, BODY)
        assert client.opened == 1
        await client.close()
        server.close()

    run(scenario())


def test_idle_connections_older_than_the_keepalive_are_not_reused(upstream_blue: Proc) -> None:
    async def scenario() -> None:
        client = pool(keepalive_s=0.2)
        upstream = Upstream.parse(upstream_blue.url)
        await client.post(upstream, b"/predict", JSON, BODY)
        await asyncio.sleep(0.3)
        await client.post(upstream, b"/predict", JSON, BODY)
        assert client.opened == 2
        await client.close()

    run(scenario())


def test_refused_connection_and_slow_answer_fail_with_their_own_errors(
    upstream_blue: Proc,
) -> None:
    async def scenario() -> None:
        client = pool(timeout_s=0.3)
        with pytest.raises(UpstreamConnectError, match="ConnectionRefusedError"):
            await client.post(
                Upstream.parse(f"http://127.0.0.1:{free_port()}"), b"/predict", JSON, BODY
            )
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await client.post(Upstream.parse(upstream_blue.url), b"/slow?ms=2000", JSON, BODY)
        assert time.monotonic() - started < 1.5
        # The timed-out connection was dropped, and the pool still works.
        response = await client.post(Upstream.parse(upstream_blue.url), b"/predict", JSON, BODY)
        assert response.status == 200
        await client.close()

    run(scenario())
