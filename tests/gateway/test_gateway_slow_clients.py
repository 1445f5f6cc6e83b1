"""Slow clients (headers or body trickled) are cut off at a deadline, connections are capped,
and other deployments keep answering meanwhile."""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from collections.abc import Callable

import httpx

from tests.gateway.support import DEFAULT_KEY, Deployments, Proc, auth, wait_until

BODY = {"instances": [[1.0, 2.0]]}
SLOW_ENV = {
    "MODELYARD_GATEWAY_HEADER_TIMEOUT_S": "2",
    "MODELYARD_GATEWAY_BODY_TIMEOUT_S": "2",
}


def _open(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class Trickler:
    """Holds slow connections open, sending one byte per connection every ``every_s``."""

    def __init__(self, socks: list[tuple[socket.socket, bytes]], every_s: float = 0.5) -> None:
        self.socks = socks
        self.every_s = every_s
        self.closed_at: dict[int, float] = {}
        self.answers: dict[int, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Trickler:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        offsets = [0] * len(self.socks)
        selector = selectors.DefaultSelector()
        for index, (sock, _) in enumerate(self.socks):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        next_byte = time.monotonic()
        while not self._stop.is_set() and len(self.closed_at) < len(self.socks):
            for key, _ in selector.select(timeout=0.05):
                index = key.data
                sock = self.socks[index][0]
                data = b""
                try:
                    while chunk := sock.recv(65536):
                        data += chunk
                except (BlockingIOError, ConnectionResetError):
                    pass
                self.answers[index] = self.answers.get(index, b"") + data
                if not data or b"\r\n\r\n" in self.answers[index]:
                    # The gateway answered (408) and closed, or reset the connection.
                    self.closed_at[index] = time.monotonic() - self.started
                    selector.unregister(sock)
            if time.monotonic() >= next_byte:
                next_byte += self.every_s
                for index, (sock, payload) in enumerate(self.socks):
                    if index in self.closed_at or offsets[index] >= len(payload):
                        continue
                    try:
                        sock.send(payload[offsets[index] : offsets[index] + 1])
                        offsets[index] += 1
                    except OSError:
                        pass
        selector.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock, _ in self.socks:
            sock.close()


def test_300_slow_connections_are_cut_off_while_other_deployments_answer(
    start_gateway: Callable[..., Proc],
    redis_url: str,
    deployments: Deployments,
    upstream_blue: Proc,
) -> None:
    gateway = start_gateway(redis_url, env=SLOW_ENV)
    victim, other = deployments.new_name("slowloris"), deployments.new_name("bystander")
    deployments.publish(victim, upstream_blue)
    deployments.publish(other, upstream_blue)
    with httpx.Client(base_url=gateway.url, timeout=10.0) as client:
        wait_until(
            lambda: (
                client.post(f"/d/{other}/predict", json=BODY, headers=auth()).status_code == 200
            ),
            deadline_s=5,
            what="route to reach the gateway",
        )
        body = json.dumps(BODY).encode()
        head = (
            f"POST /d/{victim}/predict HTTP/1.1\r\nHost: gw\r\n"
            f"Authorization: Bearer {DEFAULT_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) + 1000}\r\n\r\n"
        ).encode()
        socks = []
        for index in range(300):
            sock = _open(gateway.port)
            if index % 2:  # headers complete, then the body a byte at a time
                sock.sendall(head)
                socks.append((sock, body + b" " * 1000))
            else:  # the headers themselves a byte at a time
                socks.append((sock, head))
        trickler = Trickler(socks).start()
        try:
            answered = 0
            while len(trickler.closed_at) < len(socks) and time.monotonic() - trickler.started < 30:
                response = client.post(f"/d/{other}/predict", json=BODY, headers=auth())
                assert response.status_code == 200, response.text
                answered += 1
                time.sleep(0.02)
        finally:
            trickler.stop()
    assert len(trickler.closed_at) == 300, f"{300 - len(trickler.closed_at)} still open after 30 s"
    assert answered > 20
    slowest = max(trickler.closed_at.values())
    # Two seconds of deadline plus scheduling slack on a shared 2-core machine; without the
    # deadlines none of them would close at all while they keep trickling.
    assert slowest < 15, slowest
    statuses = {answer.split(b" ", 2)[1] for answer in trickler.answers.values() if answer}
    assert statuses == {b"408"}, statuses
    sample = next(a for a in trickler.answers.values() if a)
    error = json.loads(sample.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "request_timeout" and error["details"]["waiting_for"] in (
        "headers",
        "body",
    )
    waited = {
        json.loads(a.split(b"\r\n\r\n", 1)[1])["error"]["details"]["waiting_for"]
        for a in trickler.answers.values()
        if a
    }
    assert waited == {"headers", "body"}
    print(
        f"\n300 slow connections closed after {min(trickler.closed_at.values()):.1f}-"
        f"{slowest:.1f} s (deadline 2 s); {answered} bystander requests answered 200 meanwhile"
    )


def test_connections_over_the_cap_are_refused_at_once(
    start_gateway: Callable[..., Proc],
    redis_url: str,
    deployments: Deployments,
    upstream_blue: Proc,
) -> None:
    gateway = start_gateway(
        redis_url,
        env={"MODELYARD_GATEWAY_MAX_CONNECTIONS": "20", "MODELYARD_GATEWAY_HEADER_TIMEOUT_S": "60"},
    )
    name = deployments.new_name("capped")
    deployments.publish(name, upstream_blue)
    with httpx.Client(base_url=gateway.url, timeout=10.0) as client:
        wait_until(
            lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200,
            deadline_s=5,
            what="route to reach the gateway",
        )
    idle = [_open(gateway.port) for _ in range(20)]
    try:
        time.sleep(0.3)  # let the gateway accept them all
        over = _open(gateway.port)
        answer = _read_all(over)
        over.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "too_many_connections" and error["details"] == {"limit": 20}
    finally:
        for sock in idle:
            sock.close()
    with httpx.Client(base_url=gateway.url, timeout=10.0) as client:
        wait_until(
            lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200,
            deadline_s=5,
            what="the gateway to accept connections again",
        )


def test_deadlines_bound_reading_not_answering_nor_keep_alive(
    start_gateway: Callable[..., Proc],
    redis_url: str,
    deployments: Deployments,
    upstream_blue: Proc,
) -> None:
    """A model slower than the read deadlines still answers, and a keep-alive connection
    serves request after request: the deadlines cover only the client's sending."""
    gateway = start_gateway(
        redis_url,
        env={
            "MODELYARD_GATEWAY_HEADER_TIMEOUT_S": "0.5",
            "MODELYARD_GATEWAY_BODY_TIMEOUT_S": "0.5",
        },
    )
    name = deployments.new_name("patient")
    deployments.publish(name, upstream_blue)
    with httpx.Client(base_url=gateway.url, timeout=10.0) as client:
        wait_until(
            lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200,
            deadline_s=5,
            what="route to reach the gateway",
        )
        for _ in range(3):  # one connection (httpx keeps it alive), 0.8 s of model each time
            response = client.post(f"/d/{name}/slow?ms=800", json=BODY, headers=auth())
            assert response.status_code == 200, response.text
            time.sleep(0.3)  # idle under uvicorn's keep-alive, then the next request
