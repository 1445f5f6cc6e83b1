"""A stalled Redis (accepts connections, never answers: what a SIGSTOPped server looks like)
fails an API call that enqueues a task with 503 + Retry-After in seconds, not a hang
(issue 22). The broker and result backend are pointed at a real silent TCP port."""

from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.test import Client

from tests.conftest import _celery_broker
from tests.core.test_infrastructure_errors import _assert_unavailable_json, silent_listener


@pytest.fixture
def redis_stalled():
    with silent_listener() as port:
        previous = _celery_broker(f"redis://127.0.0.1:{port}/0")
        try:
            yield
        finally:
            _celery_broker(previous)


@pytest.mark.urls("tests.core.infra_urls")
def test_an_enqueue_against_a_stalled_broker_answers_503_within_its_socket_timeouts(
    redis_stalled,
):
    from config.celery_app import app

    # The settings took effect (a misspelt CELERY_ key would be ignored silently).
    assert app.conf.broker_transport_options["socket_timeout"] == settings.REDIS_TIMEOUT_SECONDS
    assert app.conf.task_publish_retry_policy["max_retries"] == 1
    assert app.conf.broker_connection_timeout == settings.REDIS_TIMEOUT_SECONDS
    started = time.monotonic()
    response = Client().post("/api/v1/probe/enqueue")
    seconds = time.monotonic() - started
    print(f"enqueue against a stalled Redis answered {response.status_code} in {seconds:.2f} s")
    _assert_unavailable_json(response, "redis_unavailable")
    # The result subscription and its one reconnect, each one socket timeout: without the
    # socket timeouts this never answered; with the old retry policy it took 12.5 s.
    assert seconds < 2 * settings.REDIS_TIMEOUT_SECONDS + 1.5, seconds
