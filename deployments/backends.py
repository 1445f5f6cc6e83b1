"""The engines deployments talk to, built once per process from settings."""

from __future__ import annotations

import functools
from pathlib import Path

import redis
from django.conf import settings

from deployments.runtime.base import RuntimeBackend


def bento_home() -> Path:
    """The one BentoML store of this machine (models + bentos)."""
    path = Path(settings.MODELYARD_BENTOML_HOME)
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def runtime_backend() -> RuntimeBackend:
    from deployments.runtime.local import LocalProcessBackend

    return LocalProcessBackend(
        home=bento_home(),
        state_dir=Path(settings.MODELYARD_RUNTIME_STATE_DIR),
        ready_timeout=settings.MODELYARD_SLOT_READY_TIMEOUT_SECONDS,
        workers=settings.MODELYARD_SLOT_WORKERS,
    )


@functools.cache
def route_store() -> redis.Redis:
    """The Redis that holds the gateway's route table (see gateway.routes)."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
