from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from core.views import healthz, metrics, readyz
from frontend.views.public import ApiDocsView, favicon

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("config.api_router")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its script as a file: the CSP allows no inline scripts.
    # Signed out, it answers with a page that links to the login (not the API's bare 401).
    path("api/docs/", ApiDocsView.as_view(url_name="api-schema"), name="api-docs"),
    path("favicon.ico", favicon, name="favicon"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    # Pages last: the UI owns every path the API, admin and probes do not.
    path("", include("frontend.urls")),
]
