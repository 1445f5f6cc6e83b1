"""Developer machine: `make run` exports DATABASE_URL/REDIS_URL for the embedded services."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "local-development-only-not-secret")
os.environ.setdefault("DJANGO_DEBUG", "true")

from .base import *  # noqa: F403
