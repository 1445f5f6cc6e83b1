"""Infrastructure errors: which exceptions mean "a dependency is down, try again later".

One place decides it for the API's exception handler (core.api.exceptions) and for the
middleware that answers pages and failures outside views (core.middleware): PostgreSQL
unreachable or timing out, Redis down (cache, Celery enqueue), artifact storage not
writable. Each becomes :class:`core.errors.ServiceUnavailable` — a 503 with ``Retry-After``
and the one error body — never Django's 500 page.
"""

from __future__ import annotations

import errno

import kombu.exceptions
import redis.exceptions
from django.db import InterfaceError as DatabaseInterfaceError
from django.db import OperationalError as DatabaseOperationalError

from core.errors import ServiceUnavailable

# What a full, read-only or refused volume says; ENOENT and the like are bugs, not outages.
STORAGE_ERRNOS = frozenset(
    {errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO}
)

_REDIS_ERRORS = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError (a restarting Redis)
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,  # Celery's enqueue when the broker is unreachable
)


def _classify(exc: BaseException) -> ServiceUnavailable | None:
    if isinstance(exc, ServiceUnavailable):
        return exc
    if isinstance(exc, DatabaseOperationalError | DatabaseInterfaceError):
        # Also a statement_timeout (psycopg's QueryCanceled is an OperationalError).
        return ServiceUnavailable(
            "The database is unavailable or too slow to answer; try again shortly.",
            code="database_unavailable",
        )
    if isinstance(exc, _REDIS_ERRORS):
        return ServiceUnavailable(
            "Redis (cache and task queue) is unavailable; try again shortly.",
            code="redis_unavailable",
        )
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        return storage_unavailable(exc)
    return None


def storage_unavailable(exc: OSError, *, cleaned_up: bool = False) -> ServiceUnavailable:
    """``cleaned_up``: the writer removed what it had written (the artifact store does)."""
    outcome = " Nothing was stored." if cleaned_up else ""
    return ServiceUnavailable(
        f"Storage cannot be written ({exc.strerror or exc}).{outcome} "
        "Try again once it has room and is writable.",
        code="storage_unavailable",
    )


def infrastructure_error(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 an exception stands for, or None when it is not an infrastructure failure.

    Follows ``raise ... from`` causes, so a library that wraps a connection error in its
    own exception type still answers 503.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _classify(current)
        if found is not None:
            return found
        current = current.__cause__
    return None
