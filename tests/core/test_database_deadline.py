"""A stalled PostgreSQL holds a web request for DATABASE_REQUEST_WAIT_SECONDS at most, on an
open connection too, and everything converges once it answers again (issue 22).

The stall is real TCP behaviour without stopping the shared server: the test's PostgreSQL is
reached through a proxy that, frozen, stops reading and forwarding (the kernel still ACKs
what clients send, exactly as with a SIGSTOPped server) and stops accepting (new
connections wait in the backlog, as at a stopped postmaster). tests/devstack/
test_postgres_stall.py SIGSTOPs a real embedded server under `make run`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

import httpx
import pytest
from django.db import OperationalError, connection

from accounts.choices import Role
from accounts.services import token_create
from core.infrastructure import infrastructure_error
from core.postgresql.base import DatabaseWrapper, database_wait_budget
from devstack.services import database_url_of
from tests.core.test_infrastructure_errors import (  # noqa: F401 (fixture)
    _assert_unavailable_json,
    web_process,
)
from tests.factories import UserFactory


class FreezableProxy:
    """TCP proxy to PostgreSQL that can stall like a stopped server."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        self.running = threading.Event()  # set: forwarding; clear: frozen
        self.running.set()
        self.closing = False
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            self.running.wait()
            readable, _, _ = select.select([self.listener], [], [], 0.1)
            if not readable or not self.running.is_set():
                continue  # frozen: new connections wait in the backlog
            with contextlib.suppress(OSError):
                client, _ = self.listener.accept()
                server = self._connect_upstream()
                self.sockets += [client, server]
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        host, port = self.upstream
        if host.startswith("/"):  # the embedded server on a fresh machine: its Unix socket
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(f"{host}/.s.PGSQL.{port}")
            return server
        return socket.create_connection(self.upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not self.closing:
                self.running.wait()
                readable, _, _ = select.select([src], [], [], 0.1)
                if not readable or not self.running.is_set():
                    continue  # frozen: what was sent stays in the kernel's buffers
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def freeze(self) -> None:
        self.running.clear()

    def thaw(self) -> None:
        self.running.set()

    def close(self) -> None:
        self.closing = True
        self.running.set()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def proxy():
    settings_dict = connection.settings_dict
    stalling = FreezableProxy(
        (settings_dict["HOST"] or "127.0.0.1", int(settings_dict["PORT"] or 5432))
    )
    yield stalling
    stalling.close()


def _through(proxy: FreezableProxy) -> DatabaseWrapper:
    return DatabaseWrapper(
        {**connection.settings_dict, "HOST": "127.0.0.1", "PORT": proxy.port}, alias="stalled"
    )


def test_a_query_on_an_open_connection_gives_up_within_the_budget_while_the_server_stalls(
    db, proxy
):
    wrapper = _through(proxy)
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT 1")
    proxy.freeze()
    started = time.monotonic()
    with (
        pytest.raises(OperationalError) as raised,
        database_wait_budget(2),
        wrapper.cursor() as cursor,
    ):
        cursor.execute("SELECT 1")
    seconds = time.monotonic() - started
    assert 1.9 <= seconds < 3, seconds
    assert infrastructure_error(raised.value).code == "database_unavailable"
    assert wrapper.connection.closed  # never reused in an unknown protocol state
    # Django's health check (the first thing a request does with a kept connection) and the
    # reconnect after it come out of the same budget.
    wrapper.close()
    started = time.monotonic()
    with pytest.raises(OperationalError), database_wait_budget(2):
        wrapper.ensure_connection()
    assert time.monotonic() - started < 3.5
    proxy.thaw()
    with database_wait_budget(2), wrapper.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    wrapper.close()


def test_outside_a_request_a_stalled_query_waits_the_stall_out_and_completes(db, proxy):
    # Tasks (leases, roll-ups) are not cut short: they carry on once the server answers.
    wrapper = _through(proxy)
    wrapper.ensure_connection()
    proxy.freeze()
    threading.Timer(2.5, proxy.thaw).start()
    started = time.monotonic()
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT 41 + 1")
        assert cursor.fetchone() == (42,)
    assert time.monotonic() - started >= 2.4
    wrapper.close()


def test_the_api_answers_503_within_its_wait_while_postgresql_stalls_and_200_after(
    transactional_db,
    proxy,
    web_process,  # noqa: F811
):
    key = token_create(user=UserFactory(role=Role.VIEWER), name="stall").key
    url = web_process(
        DATABASE_URL=database_url_of(
            {**connection.settings_dict, "HOST": "127.0.0.1", "PORT": proxy.port}
        ),
        DATABASE_REQUEST_WAIT_SECONDS="3",
    )
    headers = {"Authorization": f"Token {key}"}
    api = f"{url}/api/v1/models/"
    assert httpx.get(api, headers=headers, timeout=30).status_code == 200  # a kept connection
    proxy.freeze()
    answers = []
    for _ in range(2):  # the open connection, then a new one
        started = time.monotonic()
        response = httpx.get(api, headers=headers, timeout=30)
        answers.append(time.monotonic() - started)
        _assert_unavailable_json(response, "database_unavailable")
    print(f"API answers while PostgreSQL stalled: {[f'{s:.2f} s' for s in answers]}")
    assert max(answers) < 3 + 1.5, answers
    proxy.thaw()
    deadline = time.monotonic() + 15
    while httpx.get(api, headers=headers, timeout=30).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
