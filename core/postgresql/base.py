"""Django's PostgreSQL backend, with a client-side bound on how long a web request waits
for the server.

libpq's connect_timeout bounds connecting, and the server's statement_timeout bounds a query
the server runs; neither helps when the server is stalled (SIGSTOPped, frozen VM, lost
network) while a connection is open: the kernel still ACKs what the client sends, so TCP
keepalives and ``tcp_user_timeout`` never fire either, and psycopg waits for an answer
forever. psycopg 3 already has the bound it needs: ``Connection.wait`` takes a timeout on
every wait for the server (what it uses to give up on a cancelled query). This backend's
connections pass one whenever the caller is inside ``database_wait_budget`` (web requests,
core.middleware.DatabaseDeadlineMiddleware): all the time a request spends waiting for
PostgreSQL -- connecting, the health check, queries, commits -- comes out of one budget, and
when it runs out the connection is closed (its protocol state is unknown mid-query) and
psycopg's OperationalError is raised, which core.infrastructure answers as 503 +
Retry-After. Time spent elsewhere in the request (writing an upload) does not count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import psycopg
from django.db.backends.postgresql import base
from psycopg import errors
from psycopg.connection import _WAIT_INTERVAL

# libpq counts connect_timeout in whole seconds and treats less than 2 as 2.
_LIBPQ_MIN_CONNECT_TIMEOUT = 2


@dataclass
class _WaitBudget:
    seconds: float
    left: float

    def exhausted(self) -> psycopg.OperationalError:
        return psycopg.OperationalError(
            f"PostgreSQL did not answer within the request's {self.seconds:g} s; "
            "the connection was closed"
        )


_budget: ContextVar[_WaitBudget | None] = ContextVar("database_wait_budget", default=None)


@contextmanager
def database_wait_budget(seconds: float) -> Iterator[None]:
    """Bound the total time the block waits for PostgreSQL to ``seconds`` (0: unbounded)."""
    token = _budget.set(_WaitBudget(seconds, seconds) if seconds > 0 else None)
    try:
        yield
    finally:
        _budget.reset(token)


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection whose waits for the server come out of the caller's budget."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> DeadlineConnection:
        budget = _budget.get()
        if budget is None:
            return super().connect(conninfo, **kwargs)
        if budget.left <= 0:
            raise budget.exhausted()
        configured = int(kwargs.get("connect_timeout") or 0) or math.inf
        allowed = max(_LIBPQ_MIN_CONNECT_TIMEOUT, math.ceil(budget.left))
        kwargs["connect_timeout"] = int(min(configured, allowed))
        started = time.monotonic()
        try:
            return super().connect(conninfo, **kwargs)
        finally:
            budget.left -= time.monotonic() - started

    def wait(self, gen: Any, interval: float = _WAIT_INTERVAL, timeout: float | None = None) -> Any:
        budget = _budget.get()
        if budget is None:
            return super().wait(gen, interval=interval, timeout=timeout)
        if budget.left <= 0:
            self.pgconn.finish()
            raise budget.exhausted()
        ours = timeout is None or budget.left < timeout
        started = time.monotonic()
        try:
            return super().wait(gen, interval=interval, timeout=budget.left if ours else timeout)
        except errors._WaitTimeout:  # psycopg's own signal that `timeout` ran out
            if not ours:
                raise
            self.pgconn.finish()
            raise budget.exhausted() from None
        finally:
            budget.left -= time.monotonic() - started


class _PsycopgWithDeadlines:
    """The psycopg module as Django's backend sees it, except that it connects with
    DeadlineConnection (Django calls ``Database.connect`` and reads the exception classes
    and version from the same module)."""

    connect = staticmethod(DeadlineConnection.connect)

    def __getattr__(self, name: str) -> Any:
        return getattr(psycopg, name)


class DatabaseWrapper(base.DatabaseWrapper):
    # Django types this as a module; a stand-in with the same attributes is what it reads.
    Database = _PsycopgWithDeadlines()  # type: ignore[assignment]
