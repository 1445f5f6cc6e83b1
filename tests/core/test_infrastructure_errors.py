"""Infrastructure errors answer 503 + Retry-After with the error body (or a plain page),
never Django's 500 or debug page; PostgreSQL connect and statement timeouts hold.

Failures are real: Redis and the Celery broker at a port nothing listens on, PostgreSQL at a
port that accepts connections and never answers (a stalled server, without stopping the
shared one), a statement outliving its timeout in pg_sleep or behind a held table lock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import psycopg
import pytest
from django.conf import settings
from django.db import OperationalError, connection
from django.db.backends.postgresql.base import DatabaseWrapper
from django.test import Client

from accounts.choices import Role
from accounts.models import ApiToken
from accounts.services import TOKEN_PREFIX, token_create
from config.database import database_timeout_options
from core.infrastructure import infrastructure_error
from devstack.services import database_url_of, free_port
from tests.conftest import ROOT, _celery_broker, _wait_http
from tests.factories import UserFactory

DEAD_REDIS = "redis://127.0.0.1:{port}/0"


@contextlib.contextmanager
def silent_listener():
    """A TCP port that accepts connections (the kernel's backlog) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]
    # Closing it resets the connections still waiting in the backlog.


def _assert_unavailable_json(response, code: str) -> None:
    assert response.status_code == 503, response.content[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    assert int(response.headers["Retry-After"]) == settings.MODELYARD_RETRY_AFTER_SECONDS
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error


def _assert_unavailable_page(response) -> None:
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("text/html")
    assert int(response.headers["Retry-After"]) > 0
    body = response.content.decode()
    assert "Temporarily unavailable" in body
    for leak in ("Traceback", "OperationalError", "ConnectionError", "DJANGO_SETTINGS_MODULE"):
        assert leak not in body


# --- in the test process: Redis and the broker down -------------------------------------


@pytest.fixture
def redis_down(settings):
    """The cache and Celery's broker pointed at a port with nothing on it; DEBUG on, as under
    `make run`, so a debug page would show if the error escaped."""
    url = DEAD_REDIS.format(port=free_port())
    settings.DEBUG = True
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": url,
            "OPTIONS": {
                **settings.CACHES["default"]["OPTIONS"],
                "socket_connect_timeout": 1,
            },
        }
    }
    previous = _celery_broker(url)
    yield url
    _celery_broker(previous)


@pytest.mark.urls("tests.core.infra_urls")
def test_api_answers_503_with_the_error_body_when_the_cache_redis_is_down(redis_down):
    response = Client().get("/api/v1/probe/cache")
    _assert_unavailable_json(response, "redis_unavailable")


@pytest.mark.urls("tests.core.infra_urls")
def test_api_answers_503_when_celery_cannot_reach_its_broker(redis_down):
    from config.celery_app import app

    started = time.monotonic()
    response = Client().post("/api/v1/probe/enqueue")
    _assert_unavailable_json(response, "redis_unavailable")
    # Without the short result-backend retry policy this took ~20 s (20 retries, 1 s apart).
    assert time.monotonic() - started < app.conf.broker_connection_timeout


@pytest.mark.urls("tests.core.infra_urls")
def test_page_answers_a_plain_503_not_the_debug_page_when_redis_is_down(redis_down):
    _assert_unavailable_page(Client().get("/probe/page"))


def test_an_error_wrapped_by_a_library_is_still_an_infrastructure_error():
    import redis

    try:
        try:
            raise redis.exceptions.ConnectionError("refused")
        except redis.exceptions.ConnectionError as exc:
            raise RuntimeError("route store failed") from exc
    except RuntimeError as wrapped:
        assert infrastructure_error(wrapped).code == "redis_unavailable"
    assert infrastructure_error(ValueError("a bug")) is None
    assert infrastructure_error(FileNotFoundError(2, "No such file")) is None


# --- PostgreSQL timeouts ---------------------------------------------------------------


def test_the_timeouts_reached_the_database_connection(db):
    options = settings.DATABASES["default"]["OPTIONS"]
    assert options["connect_timeout"] == settings.DATABASE_CONNECT_TIMEOUT_SECONDS
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        shown = cursor.fetchone()[0]
    expected_ms = round(settings.DATABASE_STATEMENT_TIMEOUT_SECONDS * 1000)
    assert shown in {f"{expected_ms}ms", f"{expected_ms // 1000}s", f"{expected_ms // 60000}min"}


def _wrapper(**settings_dict) -> DatabaseWrapper:
    return DatabaseWrapper({**connection.settings_dict, **settings_dict}, alias="timeouts")


def test_connecting_to_a_stalled_server_gives_up_after_the_connect_timeout(db):
    with silent_listener() as port:
        stalled = _wrapper(
            HOST="127.0.0.1",
            PORT=port,
            OPTIONS=database_timeout_options({}, connect_timeout=2, statement_timeout=1),
        )
        outcome: dict = {}

        def connect() -> None:
            started = time.monotonic()
            try:
                stalled.ensure_connection()
            except OperationalError as exc:
                outcome["error"] = exc
            outcome["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=connect, daemon=True)
        thread.start()
        thread.join(8)  # without the timeout it waits until the listener goes away
        assert not thread.is_alive(), "the connection attempt hung past its timeout"
    assert 1.5 < outcome["seconds"] < 4, outcome
    assert infrastructure_error(outcome["error"]).code == "database_unavailable"


def test_a_statement_outliving_the_statement_timeout_is_cancelled(db):
    timed = _wrapper(OPTIONS=database_timeout_options({}, connect_timeout=2, statement_timeout=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError) as raised, timed.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - started < 3
        assert "statement timeout" in str(raised.value)
        assert infrastructure_error(raised.value).code == "database_unavailable"
    finally:
        timed.close()


# --- a real web process (gunicorn, DEBUG on) with PostgreSQL stalled ---------------------


@pytest.fixture
def web_process(tmp_path):
    """Start gunicorn with the given environment overrides; stopped (by its pid) at the end."""
    procs: list[subprocess.Popen] = []

    def start(**overrides: str) -> str:
        port = free_port()
        log = tmp_path / f"web-{port}.log"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DJANGO_DEBUG": "true",
            "REDIS_URL": settings.REDIS_URL,
            "MODELYARD_DATA_DIR": str(settings.DATA_DIR),
            **overrides,
        }
        with log.open("a") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "config.wsgi:application",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    "1",
                    "--timeout",
                    "60",
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/healthz", time.monotonic() + 60, proc, log)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_api_and_pages_answer_503_within_the_connect_timeout_while_postgresql_stalls(
    web_process,
):
    with silent_listener() as port:
        url = web_process(
            DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/modelyard",
            DATABASE_CONNECT_TIMEOUT_SECONDS="2",
        )
        started = time.monotonic()
        api = httpx.get(
            f"{url}/api/v1/models/",
            headers={"Authorization": f"Token {TOKEN_PREFIX}abcdef012345.secret"},
            timeout=30,
        )
        api_seconds = time.monotonic() - started
        # A signed-in browser: the session is read (from the database) by a middleware,
        # before any view runs.
        started = time.monotonic()
        page = httpx.get(f"{url}/models/", cookies={"sessionid": "x" * 32}, timeout=30)
        page_seconds = time.monotonic() - started
    _assert_unavailable_json(api, "database_unavailable")
    assert api_seconds < 2 + 2, api_seconds
    _assert_unavailable_page(page)
    assert page_seconds < 2 + 2, page_seconds


def test_api_answers_503_when_a_statement_waits_past_the_statement_timeout(
    transactional_db, web_process
):
    user = UserFactory(role=Role.VIEWER)
    key = token_create(user=user, name="stall").key
    url = web_process(
        DATABASE_URL=database_url_of(connection.settings_dict),
        DATABASE_STATEMENT_TIMEOUT_SECONDS="1",
    )
    headers = {"Authorization": f"Token {key}"}
    assert httpx.get(f"{url}/api/v1/models/", headers=headers, timeout=30).status_code == 200
    # Another session holds the token table: the API's token lookup waits on it, as it
    # would on a stalled server, until the statement timeout cancels it.
    with psycopg.connect(database_url_of(connection.settings_dict)) as holder:
        holder.execute(f"LOCK TABLE {ApiToken._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        response = httpx.get(f"{url}/api/v1/models/", headers=headers, timeout=30)
        seconds = time.monotonic() - started
        holder.rollback()
    _assert_unavailable_json(response, "database_unavailable")
    assert seconds < 1 + 2, seconds
    assert httpx.get(f"{url}/api/v1/models/", headers=headers, timeout=30).status_code == 200


def test_every_platform_operation_documents_the_503_and_its_retry_after(db):
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operations = [
        operation
        for path, item in schema["paths"].items()
        if path.startswith("/api/v1/")
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert len(operations) > 40
    for operation in operations:
        unavailable = operation["responses"]["503"]
        assert unavailable["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
        assert "Retry-After" in unavailable["headers"]
