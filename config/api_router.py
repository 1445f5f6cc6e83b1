"""The /api/v1/ URL tree: each domain app contributes its own urlpatterns."""

from __future__ import annotations

from django.urls import include, path

app_name = "api"
urlpatterns = [
    path("", include("accounts.api.urls")),
    path("", include("core.api.urls")),
    path("", include("registry.api.urls")),
    # Before deployments: deployments/<name>/metrics/ is monitoring's.
    path("", include("monitoring.api.urls")),
    path("", include("deployments.api.urls")),
    path("", include("batch.api.urls")),
]
