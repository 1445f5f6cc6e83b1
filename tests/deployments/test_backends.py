"""The runtime backend and the route store are built once from settings (functools.cache):
a changed setting they read gives new ones, so nothing keeps talking to an old Redis."""

from __future__ import annotations

from deployments import backends


def test_route_store_follows_a_changed_redis_url(settings):
    before = backends.route_store()
    assert backends.route_store() is before  # built once
    settings.REDIS_URL = "redis://127.0.0.1:1/7"
    after = backends.route_store()
    assert after is not before
    assert (
        after.connection_pool.connection_kwargs["port"],
        after.connection_pool.connection_kwargs["db"],
    ) == (1, 7)


def test_runtime_backend_follows_a_changed_state_dir(settings, tmp_path):
    settings.MODELYARD_RUNTIME_STATE_DIR = str(tmp_path / "one")
    first = backends.runtime_backend()
    settings.MODELYARD_RUNTIME_STATE_DIR = str(tmp_path / "two")
    assert backends.runtime_backend() is not first
    settings.MODELYARD_GATEWAY_URL = "http://127.0.0.1:9"  # not read by either: kept
    second = backends.runtime_backend()
    settings.MODELYARD_GATEWAY_URL = "http://127.0.0.1:10"
    assert backends.runtime_backend() is second
